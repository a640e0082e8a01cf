"""One member's rows during a call: the ids it holds, their KV-cache columns, its next logits.

Rows of a batch change by different amounts each step: most append one id, some roll back a few
ids and append several (re-tokenization), finished rows append nothing. ``advance`` does all of it
in one forward pass: rolled-back ids are masked out of the attention (their cache columns stay, as
holes), each row's new ids are left-padded to a common length, and position ids count each row's
real tokens, so a row's numbers depend neither on its neighbours nor on the holes. Rows that take
nothing stay out of that forward (only the others' cache rows go through the model), so a gated
row costs nothing while its voting neighbours catch up.

Rows also join and leave between steps (continuous batching): ``add_rows`` prefills newcomers as a
batch of their own and merges the two caches, left-padding the narrower one's time dimension with
hole columns; ``keep_rows`` drops finished rows from the batch dimension of every cache layer and
trims the leading columns that no remaining row uses. Long prompt pieces run apart, in a batch of
their own, and join the shared cache whole (``_apart``), so they widen no other row's cache; the
prefix store's columns come and go through ``stored_columns``.

Sliding-window layers (Gemma-2/3, Mistral, Qwen's windowed layers) count their window in columns,
so hole columns inside it would hide real tokens, and their caches would drop real tokens to keep
only the last columns. A member with such layers therefore keeps every column in every layer and
gets its attention masks from ``kv_cache``, built from each column's position id: a key is visible when it
is live and at most ``window - 1`` real tokens behind the query, as the model alone would see it.

The cache itself (``kv_cache``) is gpt-fast's layout, not transformers' ``DynamicLayer``: each layer's columns
live in a buffer with room to spare (``ColumnLayer``), so a step writes its new columns in place
instead of concatenating them to a copy of the whole cache (at batch 16 and 600 columns that copy
was about a quarter of a decode step on a CPU), and a forward over some rows writes and reads
those rows only.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .kv_cache import (
    SUPPORTED_LAYERS,
    attention_layout,
    cache_layers,
    keep_layer_rows,
    new_cache,
    pad_left,
    pad_time,
    row_run,
    stack_layers,
    subsettable,
    unsupported_layers,
)
from .prefix import PrefixStore
from .stored_columns import give_to_store, shared_beginnings, stored, take_from_store

__all__ = [
    "SUPPORTED_LAYERS",
    "MemberBatch",
    "Update",
    "apply_update",
    "compose_updates",
    "unsupported_layers",
]

#: (ids to keep, ids to append) for one row; None leaves the row as it is.
Update = tuple[int, list[int]] | None


def apply_update(ids: list[int], u: Update) -> list[int]:
    """The ids a row holds once it takes ``u``."""
    return ids if u is None else ids[: u[0]] + u[1]


def compose_updates(u: Update, v: Update) -> Update:
    """The update doing ``u`` then ``v`` (``v`` is relative to the ids after ``u``)."""
    if u is None or v is None:
        return v if u is None else u
    (keep, new), (keep2, new2) = u, v
    return (keep, new[: keep2 - keep] + new2) if keep2 >= keep else v


class MemberBatch:
    """One member's KV cache, attention mask and ids for the rows in flight (row r is index r)."""

    def __init__(
        self, model: Any, prompts: list[list[int]], pad_id: int, store: PrefixStore | None = None
    ) -> None:
        self.model = model
        self.store = store  # the member's stored prompt prefixes (None: none kept)
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.ids: list[list[int]] = [[] for _ in prompts]
        self.cols: list[list[int]] = [[] for _ in prompts]
        self.n_prompt = [len(p) for p in prompts]
        self.cache: Any = None
        self.mask = torch.zeros(len(prompts), 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(len(prompts), 0, dtype=torch.long, device=self.device)  # [B, T]
        self.attention = attention_layout(model)
        self.logits: torch.Tensor | None = None  # [B, V] at each row's last id
        self.forwards = 0
        #: Rows whose prompt runs apart (``_apart``): row r's batch of its own while it prefills.
        self.apart: dict[int, MemberBatch] = {}
        self.is_apart = False  # this batch is one of those: nothing in it runs apart again
        self._prompts = prompts
        # transformers 5.x renamed ``past_key_values`` to ``cache``; accept both generations.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def next_logits(self) -> torch.Tensor:
        """[B, V] float32 logits after each row's last id."""
        assert self.logits is not None, "prefill() first"
        return self.logits.float()

    def prefill(self, logits: bool = True) -> None:
        """Run the prompts; without ``logits`` the output layer is skipped and the rows' logits
        are zeros (rows whose next ids are pending: they take those before anyone reads them)."""
        self.advance([(0, list(p)) for p in self._prompts], logits)

    @property
    def cache_bytes(self) -> int:
        """Bytes of this batch's KV cache, room to grow and hole columns included: what its rows
        cost in memory now (rows x columns x per-column bytes of every layer)."""
        total = sum(side.cache_bytes for side in self.apart.values())
        for la in getattr(self.cache, "layers", None) or []:
            own = hasattr(la, "_k")  # a ColumnLayer: its buffers, not the live views
            for t in (la._k, la._v) if own else (la.keys, la.values):
                total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        return total

    @property
    def n_rows(self) -> int:
        return len(self.ids)

    def add_rows(self, prompts: list[list[int]], now: list[int] | None = None) -> None:
        """Prefill ``prompts`` and append their rows to this batch.

        ``now[r]`` (default: all) is how many of prompt r's ids go through the model now; the
        rest wait for the row's first ``advance``, which keeps those ``now[r]`` and appends the
        others (a gated row whose other members may never vote costs them one id; a long
        prompt is prefilled in chunks). A row takes more than ``now[r]`` where the store holds
        them (they cost no forward): ``ids`` tells how many each row holds.

        No prompt is padded to a much longer one: prompts of very different lengths prefill
        in groups of their own (``_groups``), merged after. With a store, the beginnings that
        several prompts share and the store lacks run once first (``shared_beginnings``), so
        every prompt takes them from the store."""
        if now is not None and self.store is not None:  # stored columns cost no forward
            now = [max(n, min(stored(self.store, p) + 1, len(p))) for p, n in zip(prompts, now)]
        heads = prompts if now is None else [p[:n] for p, n in zip(prompts, now)]
        if self.store is not None and (leads := shared_beginnings(self.store, heads)):
            # through add_rows: leads of different lengths group, and share their own
            runner = type(self)(self.model, [], self.pad_id, self.store)
            runner.add_rows([[*lead, self.pad_id] for lead in leads], [len(x) for x in leads])
            self.forwards += runner.forwards
        first, order = self.n_rows, []
        for group in _groups([len(h) for h in heads]):
            new = type(self)(self.model, [heads[r] for r in group], self.pad_id, self.store)
            new.prefill(logits=any(len(heads[r]) == len(prompts[r]) for r in group))
            new.n_prompt = [len(prompts[r]) for r in group]
            self._merge(new)
            order += group
        if order != sorted(order):  # the groups' rows back in the call's order
            self.keep_rows([*range(first), *(first + order.index(r) for r in range(len(order)))])

    def _merge(self, new: MemberBatch) -> None:
        """Append ``new``'s prefilled rows, left-padding the narrower cache's columns."""
        self.forwards += new.forwards
        if self.n_rows == 0 or self.cache is None:
            self.ids, self.cols, self.n_prompt = new.ids, new.cols, new.n_prompt
            self.cache, self.mask, self.logits = new.cache, new.mask, new.logits
            self.pos = new.pos
            return
        width = max(self.mask.shape[1], new.mask.shape[1])
        pad = self._widened(width), new._widened(width)
        for la, lb in zip(cache_layers(self.cache), cache_layers(new.cache)):
            stack_layers(la, lb, width, pad)
        shift_a, shift_b = width - self.mask.shape[1], width - new.mask.shape[1]
        self.mask = torch.cat([pad_left(self.mask, width), pad_left(new.mask, width)])
        self.pos = torch.cat([pad_left(self.pos, width), pad_left(new.pos, width)])
        self.cols = [[c + shift_a for c in cs] for cs in self.cols]
        self.cols += [[c + shift_b for c in cs] for cs in new.cols]
        self.ids += new.ids
        self.n_prompt += new.n_prompt
        assert self.logits is not None and new.logits is not None
        self.logits = torch.cat([self.logits, new.logits])

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows (in this order); leading columns no kept row uses are dropped.

        A row that leaves gives the store every id it holds, its answer included: the next
        turn of a conversation re-sends that answer and runs only what is new."""
        if len(rows) == self.n_rows and rows == list(range(self.n_rows)):
            return
        leaving = sorted(set(range(self.n_rows)) - set(rows))
        if self.store is not None:
            give_to_store(self, [r for r in leaving if r not in self.apart], answers=True)
            for r in leaving:
                if r in self.apart:
                    give_to_store(self.apart[r], [0], answers=True)
        self.apart = {n: self.apart[r] for n, r in enumerate(rows) if r in self.apart}
        self.ids = [self.ids[r] for r in rows]
        self.cols = [self.cols[r] for r in rows]
        self.n_prompt = [self.n_prompt[r] for r in rows]
        if not rows:
            self.cache, self.logits = None, None
            self.mask, self.pos = self.mask[:0, :0], self.pos[:0, :0]
            return
        index = torch.tensor(rows, device=self.device)
        self.mask = self.mask.index_select(0, index)
        self.pos = self.pos.index_select(0, index)
        assert self.logits is not None
        self.logits = self.logits.index_select(0, index)
        used = self.mask.any(0).nonzero()
        trim = int(used[0]) if len(used) else 0  # one host read per retirement, not per step
        width = self.mask.shape[1] - trim
        for layer in cache_layers(self.cache):
            keep_layer_rows(layer, rows, index, width)
        self.mask, self.pos = self.mask[:, trim:], self.pos[:, trim:]
        self.cols = [[c - trim for c in cs] for cs in self.cols]

    def _widened(self, width: int) -> Any:
        """A function padding one of this batch's cache tensors on the left to ``width``
        columns (a sliding layer's to as many of them as it holds)."""
        shift = width - self.mask.shape[1]

        def pad(t: torch.Tensor, layer: Any) -> torch.Tensor:
            window = getattr(layer, "sliding_window", None)
            target = t.shape[-2] + shift
            if window is not None:
                target = min(target, width, window - 1)
            return pad_time(t, target)

        return pad

    def advance(self, updates: list[Update], logits: bool = True) -> None:
        """Row r keeps ``updates[r][0]`` ids and appends ``updates[r][1]`` (None: unchanged), in
        one forward pass, or in one per group of rows (``_groups``) where rows take very
        different numbers of ids (a catch-up of a whole prompt beside one-token steps) and the
        cache lets some rows run alone: padding every row to the longest would cost more. Rows
        whose update is a long piece of their prompt run it apart (``_apart``)."""
        chunks, wholes = self._apart(updates)
        if wholes:  # together, in a batch of their own, and back at once
            side = self._side(wholes, updates)
            for n, r in enumerate(wholes):
                self._join(side, n, r)
        for r in chunks:  # each in its own batch, until its prompt is whole
            if r in self.apart:
                self._run(self.apart[r], [updates[r]], logits)
            else:
                self.apart[r] = self._side([r], updates)
        # 1. Rolled-back ids leave holes: their columns are masked out, never cropped, so no row
        #    re-feeds anything because of another, and sliding-window caches need no rollback.
        segs: list[list[int]] = []
        for r, u in enumerate(updates):
            if r in wholes or r in chunks:  # their ids came with them (``_join``) or come here
                if r in self.apart:
                    self.ids[r] = list(self.apart[r].ids[0])
                segs.append([])
                continue
            keep, new = u if u is not None else (len(self.ids[r]), [])
            dropped = self.cols[r][keep:]
            if dropped:
                self.mask[r, dropped] = 0
            self.ids[r] = self.ids[r][:keep] + new
            self.cols[r] = self.cols[r][:keep]
            segs.append(new)
        groups = _groups([len(s) for s in segs]) if subsettable(self.cache) else [range(len(segs))]
        for group in groups:
            mine = set(group)
            # 2. A group whose rows all stop inside their prompts (chunks of a chunked prefill)
            #    skips the output layer: nobody reads their logits before the last chunk, and
            #    a member's output layer can cost as much as its decoder (Gemma-3's, 262k wide).
            wanted = logits and any(len(self.ids[r]) >= self.n_prompt[r] for r in group)
            self._append([s if r in mine else [] for r, s in enumerate(segs)], wanted)
        for r in [r for r, side in self.apart.items() if len(side.ids[0]) >= self.n_prompt[r]]:
            self._join(self.apart.pop(r), 0, r)
        self._compact()

    def _apart(self, updates: list[Update]) -> tuple[list[int], list[int]]:
        """The rows whose update runs apart, over their own columns only, in a batch of their
        own: a forward here appends its columns to every row (holes for the others), and every
        later forward of every row attends over that width (a burst of RAG prompts prefilled in
        chunks here: chunk forwards twice as slow as the prompts alone). (chunks, wholes):
        rows whose update is a piece of their prompt longer than ``SPLIT_TOKENS`` that leaves
        more to come, each kept in its own batch until its prompt is whole (rows already so
        included), and rows whose update completes such a piece at once (lazily prefilled rows'
        catch-ups, prompts the step's budget takes whole), run together and joined at once."""
        chunks = [r for r in self.apart if updates[r] is not None]
        wholes: list[int] = []
        if self.is_apart or self.n_rows < 2 or not subsettable(self.cache):
            return chunks, wholes
        for r, u in enumerate(updates):
            if r in self.apart or u is None or len(u[1]) <= SPLIT_TOKENS:
                continue
            if u[0] < self.n_prompt[r]:
                (chunks if u[0] + len(u[1]) < self.n_prompt[r] else wholes).append(r)
        return sorted(chunks), wholes

    def _run(self, side: MemberBatch, updates: list[Update], logits: bool) -> None:
        """``side.advance(updates)``, its forward passes counted here."""
        before = side.forwards
        side.advance(updates, logits)
        self.forwards += side.forwards - before

    def _side(self, rows: list[int], updates: list[Update]) -> MemberBatch:
        """A batch of its own for ``rows``, prefilled with the ids each holds once it takes its
        update, as newcomers are (``add_rows``: in groups of similar length, the beginnings they
        share run once, the store's columns taken: the catch-ups of rows prefilled lazily share
        their few-shot examples as their prompts would have at admission)."""
        side = type(self)(self.model, [], self.pad_id, self.store)
        side.is_apart = True
        side.add_rows([apply_update(self.ids[r], updates[r]) for r in rows])
        side.n_prompt = [self.n_prompt[r] for r in rows]
        self.forwards += side.forwards
        return side

    def _join(self, side: MemberBatch, n: int, r: int) -> None:
        """Row n of a batch of its own joins the shared cache as row r: its columns go into row
        r's last ones (the cache widens, on the left, where it is narrower than them); the
        columns the row held here before become holes."""
        w = side.mask.shape[1]
        if w > self.mask.shape[1]:
            self._widen(w)
        width = self.mask.shape[1]
        self.mask[r] = 0
        self.mask[r, width - w :] = side.mask[n]
        self.pos[r, width - w :] = side.pos[n]
        with torch.inference_mode():
            for la, ls in zip(cache_layers(self.cache), cache_layers(side.cache)):
                la.keys[r, :, width - w :] = ls.keys[n]
                la.values[r, :, width - w :] = ls.values[n]
            assert self.logits is not None and side.logits is not None
            self.logits[r] = side.logits[n].to(self.logits.dtype)
        self.cols[r] = [width - w + c for c in side.cols[n]]
        self.ids[r] = list(side.ids[n])

    def _widen(self, width: int) -> None:
        """Pad every row's cache, mask and position ids on the left to ``width`` columns."""
        pad, shift = self._widened(width), width - self.mask.shape[1]
        for la in cache_layers(self.cache):
            la.keys, la.values = pad(la.keys, la), pad(la.values, la)
            if hasattr(la, "cumulative_length"):
                la.cumulative_length = width
        self.mask, self.pos = pad_left(self.mask, width), pad_left(self.pos, width)
        self.cols = [[c + shift for c in cs] for cs in self.cols]

    def _compact(self) -> None:
        """Move every row's live columns to the right end of a cache as wide as the longest
        row's, when holes are most of the width. A forward appends columns to every row (holes
        for those that took fewer ids): a long prompt's chunks, a catch-up, a rollback widen
        the others' caches, and every later step attends over that width (a burst of 16
        chunked RAG prompts grew it to thousands of columns of holes and ran 2x slower)."""
        if not self.cols or not subsettable(self.cache):
            return
        live, width = max(len(c) for c in self.cols), self.mask.shape[1]
        if width <= 2 * live + COMPACT_SLACK:
            return
        src = torch.zeros(len(self.cols), live, dtype=torch.long)  # [B, live]: old columns
        mask = torch.zeros(len(self.cols), live, dtype=torch.long)
        for r, cols in enumerate(self.cols):
            src[r, live - len(cols) :] = torch.tensor(cols, dtype=torch.long)
            mask[r, live - len(cols) :] = 1
            self.cols[r] = list(range(live - len(cols), live))
        src = src.to(self.device)
        for layer in cache_layers(self.cache):
            k, v = layer.keys, layer.values  # [B, H, T, D]
            index = src[:, None, :, None].expand(k.shape[0], k.shape[1], live, k.shape[-1])
            layer.keys, layer.values = k.gather(2, index), v.gather(2, index)
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = live
        self.pos = self.pos.gather(1, src) * mask.to(self.device)
        self.mask = mask.to(self.device)

    def _append(self, segs: list[list[int]], logits: bool = True) -> None:
        """One forward pass taking ``segs[r]``, the ids row r appends (already in ``ids``);
        without ``logits`` it skips the output layer (see ``prefill``)."""
        # Rows whose new ids begin inside their prompt (prefills, a gated row's catch-up): only
        # those can take columns from the store or give it some.
        prompt_rows = [
            r for r, s in enumerate(segs) if s and len(self.ids[r]) - len(s) < self.n_prompt[r]
        ]
        if self.store is not None and prompt_rows:
            segs = take_from_store(self, segs, prompt_rows)
        width, m = self.mask.shape[1], max(len(s) for s in segs)
        if m == 0:
            return
        # 2. Left-pad the new ids to m; row r's take columns width+m-len .. width+m-1, and its
        #    position ids continue from its own count of real tokens.
        inp = torch.full((len(segs), m), self.pad_id, dtype=torch.long)
        seg_mask = torch.zeros(len(segs), m, dtype=torch.long)
        pos = torch.zeros(len(segs), m, dtype=torch.long)
        for r, seg in enumerate(segs):
            if seg:
                start = len(self.ids[r]) - len(seg)
                inp[r, m - len(seg) :] = torch.tensor(seg)
                seg_mask[r, m - len(seg) :] = 1
                pos[r, m - len(seg) :] = torch.arange(start, start + len(seg))
                self.cols[r] += range(width + m - len(seg), width + m)
        pos = pos.to(self.device)
        self.mask = torch.cat([self.mask, seg_mask.to(self.device)], dim=1)
        self.pos = torch.cat([self.pos, pos], dim=1)
        active = [r for r, seg in enumerate(segs) if seg]
        rows = active if len(active) < len(segs) and subsettable(self.cache) else None
        out = self._forward(inp.to(self.device), pos, rows, logits)  # [B or B', V]
        if rows is not None:  # only the rows that took ids ran: the others keep their logits
            assert self.logits is not None
            index = torch.tensor(rows, device=out.device)
            out = self.logits.to(out.dtype).index_copy(0, index, out)
        elif len(active) < len(segs) and self.logits is not None:
            keep_old = torch.tensor([not seg for seg in segs], device=out.device)[:, None]
            out = torch.where(keep_old, self.logits.to(out.dtype), out)
        self.logits = out
        self.forwards += 1
        if self.store is not None and prompt_rows:
            give_to_store(self, prompt_rows)

    def _forward(
        self, inp: torch.Tensor, pos: torch.Tensor, rows: list[int] | None, logits: bool = True
    ) -> torch.Tensor:
        """One forward pass of ``inp``/``pos`` [B, m] over the cache; returns [B, V] logits at each
        row's last column. With ``rows``, only those rows run (the others took no ids): the cache
        layers write those rows' new columns in place and the other rows' stay holes, so a
        catch-up of a few rows costs those rows, not the batch. Without ``logits`` only the
        decoder runs (a member's output layer can be most of its work: Gemma-3's is 262k wide)
        and the logits are zeros."""
        mask, keys = self.mask, self.pos  # [B, T + m] each, the new columns included
        cache = self.cache if self.cache is not None else new_cache(self.model, self.attention)
        index = None
        if rows is not None:
            index = torch.tensor(rows, device=self.device)
            inp, pos = inp.index_select(0, index), pos.index_select(0, index)
            mask, keys = mask.index_select(0, index), keys.index_select(0, index)
        attention_mask: Any = mask
        if self.attention is not None:  # sliding layers: own masks over caches keeping every column
            attention_mask = self.attention.masks(mask, keys, pos, self.model.dtype)
        layers = cache_layers(cache) if index is not None else []
        chosen = row_run(rows) or index  # consecutive rows: a view of the cache, not a copy
        for la in layers:
            la.rows = chosen
        decoder = None if logits else _decoder(self.model)
        run, extra = (self.model, {"logits_to_keep": 1}) if decoder is None else (decoder, {})
        try:
            with torch.inference_mode():
                out = run(
                    input_ids=inp,
                    attention_mask=attention_mask,
                    position_ids=pos,
                    use_cache=True,
                    **extra,
                    **{self._cache_arg: cache},
                )
        finally:  # a forward that raises leaves no layer writing some rows only
            for la in layers:
                la.rows = None
        self.cache = getattr(out, self._cache_arg)
        if decoder is not None:
            head = self.model.get_output_embeddings().weight  # [V, hidden]
            return head.new_zeros(inp.shape[0], head.shape[0])
        result: torch.Tensor = out.logits[:, -1, :]
        return result


#: Hole columns a cache may hold beyond its live ones before ``_compact`` (besides half its width).
COMPACT_SLACK = 64

#: What one more forward pass costs, in padded tokens: ``advance`` runs the rows with the most
#: ids apart from the others when that pads more than this many fewer tokens (e.g. a gated row
#: catching up on its whole prompt beside rows taking one id). On a CPU a forward costs about
#: its tokens, padded ones included, plus a fixed part of a few dozen tokens of a small member.
SPLIT_TOKENS = 64


def _decoder(model: Any) -> Any:
    """The model without its output layer (transformers' ``get_decoder``), or None where it has
    none that takes the same arguments (the caller then runs the whole model)."""
    get = getattr(model, "get_decoder", None)
    decoder = get() if callable(get) else None
    if decoder is None or decoder is model or model.get_output_embeddings() is None:
        return None
    return decoder


def _groups(lengths: list[int]) -> list[list[int]]:
    """Rows with ids to take (``lengths[r] > 0``), in groups of one forward pass each: longest
    first, the longest cut off from the rest wherever that saves more than ``SPLIT_TOKENS``
    padded tokens (the rest padded to its own longest)."""
    order = sorted((r for r, n in enumerate(lengths) if n), key=lambda r: -lengths[r])
    groups: list[list[int]] = []
    while order:
        cut, best = len(order), SPLIT_TOKENS
        for k in range(1, len(order)):
            saved = (len(order) - k) * (lengths[order[0]] - lengths[order[k]])
            if saved > best:
                cut, best = k, saved
        groups.append(order[:cut])
        order = order[cut:]
    return groups
