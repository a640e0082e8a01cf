"""A member batch's side of its prefix store: stored columns in, finished columns out.

``MemberBatch`` (``sequences``) calls these: before a forward, rows whose new ids begin with a
stored prefix take those columns from the store instead of running them (``take_from_store``);
after it, and when rows leave, the whole blocks of what they hold enter the store
(``give_to_store``); prompts admitted together that share a beginning the store lacks run it
once first (``shared_beginnings`` finds those beginnings).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import torch

from .kv_cache import cache_layers, new_cache, subsettable
from .prefix import BLOCK, PrefixStore

if TYPE_CHECKING:
    from .sequences import MemberBatch

__all__ = ["give_to_store", "shared_beginnings", "stored", "take_from_store"]


def stored(store: PrefixStore, ids: list[int]) -> int:
    """How many of ``ids`` (its last excepted) the store holds, in whole blocks."""
    return len(store.match(ids, len(ids) - 1)) * BLOCK


def shared_beginnings(store: PrefixStore, prompts: list[list[int]]) -> list[list[int]]:
    """Each longest beginning (whole blocks, a prompt's last id excepted) that two or more of
    ``prompts`` share and the store does not hold yet: run once, every prompt takes it."""
    nodes: dict[tuple[int, tuple[int, ...]], int] = {}
    paths = []
    for p in prompts:  # a trie of the prompts' blocks: path[d] is block d's node
        parent, path = 0, []
        for start in range(0, len(p) - BLOCK, BLOCK):
            parent = nodes.setdefault((parent, tuple(p[start : start + BLOCK])), len(nodes) + 1)
            path.append(parent)
        paths.append(path)
    seen = collections.Counter(n for path in paths for n in path)
    shared = {
        tuple(p[: BLOCK * sum(1 for n in path if seen[n] > 1)]) for p, path in zip(prompts, paths)
    }
    leads: list[list[int]] = []
    for lead in sorted(shared, key=len, reverse=True):  # the longest of each chain only
        inside = any(tuple(k[: len(lead)]) == lead for k in leads)
        if lead and not inside and len(store.match(lead, len(lead))) * BLOCK < len(lead):
            leads.append(list(lead))
    return leads


def take_from_store(batch: MemberBatch, segs: list[list[int]], rows: list[int]) -> list[list[int]]:
    """Those of ``rows`` whose new ids begin with a stored prompt prefix (in whole blocks, the
    row's last id excepted) write those columns into the cache from the store, left-padded
    to a common count as ``MemberBatch._append`` pads ids; returns the ids each row still has
    to run."""
    store = batch.store
    assert store is not None
    cache = batch.cache if batch.cache is not None else new_cache(batch.model, batch.attention)
    fresh = cache is not None and not cache.layers
    if cache is None or not (fresh or subsettable(cache)):
        return segs  # layers of the model's own kind: the store's columns cannot go in
    hits: dict[int, tuple[int, list[torch.Tensor], list[torch.Tensor]]] = {}
    for r in rows:
        start = len(batch.ids[r]) - len(segs[r])
        blocks = store.match(batch.ids[r], len(batch.ids[r]) - 1)
        if len(blocks) * BLOCK > start:
            hits[r] = (start, *store.columns(blocks, start))
    if not hits:
        return segs
    width, n = batch.mask.shape[1], {r: h[1][0].shape[1] for r, h in hits.items()}
    q = max(n.values())
    seg_mask = torch.zeros(len(segs), q, dtype=torch.long, device=batch.device)
    pos = torch.zeros(len(segs), q, dtype=torch.long, device=batch.device)
    for r, (start, _, _) in hits.items():
        seg_mask[r, q - n[r] :] = 1
        pos[r, q - n[r] :] = torch.arange(start, start + n[r])
        batch.cols[r] += range(width + q - n[r], width + q)
    _, k0, v0 = next(iter(hits.values()))
    for layer in range(len(k0)):  # [B, H, q, D] per layer: hole columns where a row has none
        keys = k0[layer].new_zeros(len(segs), k0[layer].shape[0], q, k0[layer].shape[-1])
        values = v0[layer].new_zeros(len(segs), v0[layer].shape[0], q, v0[layer].shape[-1])
        for r, (_, ks, vs) in hits.items():
            keys[r, :, q - n[r] :] = ks[layer]
            values[r, :, q - n[r] :] = vs[layer]
        with torch.inference_mode():  # the forward passes' tensors are inference tensors
            cache.update(keys, values, layer)
    batch.cache = cache
    batch.mask = torch.cat([batch.mask, seg_mask], dim=1)
    batch.pos = torch.cat([batch.pos, pos], dim=1)
    return [seg[n[r] :] if r in hits else seg for r, seg in enumerate(segs)]


def give_to_store(batch: MemberBatch, rows: list[int], answers: bool = False) -> None:
    """Keep the whole blocks of these rows' prompt ids (with ``answers``, of all the ids they
    hold, generated ones included) that the store does not hold yet."""
    store = batch.store
    assert store is not None
    if not subsettable(batch.cache):
        return
    layers = cache_layers(batch.cache)
    for r in rows:
        n = len(batch.ids[r]) if answers else min(len(batch.ids[r]), batch.n_prompt[r])
        n = n // BLOCK * BLOCK
        blocks = store.match(batch.ids[r], n)
        known = len(blocks) * BLOCK
        if known >= n:
            continue
        index = torch.tensor(batch.cols[r][known:n], device=batch.device)
        keys = [la.keys[r].index_select(1, index) for la in layers]  # [H, n - known, D]
        values = [la.values[r].index_select(1, index) for la in layers]
        store.extend(blocks, batch.ids[r][:n], keys, values)
