"""An engine's ``Ensemble``, built once from its configuration: each member loaded (or described,
for a member on Ray), the string table every member's candidates share, the cross maps by which
a member scores another's tokens, the ``StepPlan`` and the prefix stores."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from .backends import MemberBackend
from .batch import Ensemble
from .config import EnsembleConfig, MemberSpec, ensemble_config
from .devices import union_device
from .loading import load_member
from .members import LoadedMember
from .prefix import PrefixStore
from .ray_members import RayMember, connect, describe, start_actor
from .union import StepPlan
from .vocab import END, CrossMap, Vocab, build_cross_map

__all__ = ["build_ensemble", "check_beside_config", "member_config"]

_log = logging.getLogger("unite_integrations")

#: ``UniTEEngine``'s arguments that an ``EnsembleConfig`` sets itself, with their defaults.
CONFIG_ARGUMENTS: dict[str, Any] = {
    "top_k": 10,
    "weights": None,
    "retokenize_window": 32,
    "cache_dir": None,
    "backend": "local",
    "ray_address": None,
    "prefix_cache": "auto",
}


def check_beside_config(config: EnsembleConfig, given: dict[str, Any]) -> None:
    """Refuse an argument the ``EnsembleConfig`` sets itself, given beside it with another
    value than its default (it would be ignored: the config's own value applies)."""
    for name, value in given.items():
        if value != CONFIG_ARGUMENTS[name]:
            raise ConfigError(
                f"{name}={value!r} was given beside an EnsembleConfig, whose own {name} "
                f"({getattr(config, name)!r}) applies: set {name} in the config "
                f"(ensemble_config(..., {name}=...)) or leave the argument out",
                param=name,
            )


def member_config(config: EnsembleConfig, spec: MemberSpec) -> EnsembleConfig:
    """The configuration of one member of ``config`` as an ensemble of its own."""
    return ensemble_config(
        [spec],
        top_k=config.top_k,
        retokenize_window=config.retokenize_window,
        cache_dir=config.cache_dir,
        ray_address=config.ray_address,
        prefix_cache=config.prefix_cache,  # a store of its own: its own thread
    )


def build_ensemble(
    config: EnsembleConfig,
    cache_dir: Path,
    check_invariants: bool,
    loaded: list[LoadedMember] | None,
    wire: dict[str, int],
) -> tuple[Ensemble, dict[int, Any]]:
    """The ensemble of ``config`` (its ``loaded`` members where given, else each loaded now), and
    member index -> its Ray actor for members placed on Ray (their numbers counted in ``wire``)."""
    members = loaded or [_load(config, spec, cache_dir) for spec in config.members]
    names = [m.name for m in members]
    if len(set(names)) != len(names):  # the same model twice: tell members apart
        for n, m in enumerate(members):
            m.name = f"{m.name}#{n}"
    safe = frozenset(range(256))
    if len(members) > 1:
        for m in members:
            m.vocab.require_spellable(m.name)
            safe &= m.vocab.spellable
    home = union_device(config.members[0], members[0].model)
    vocabs = [m.vocab for m in members]
    maps = [[_cross(vj, vi, cache_dir) for vi in vocabs] for vj in vocabs]
    strings, gids = _string_ids(vocabs)
    k = min([config.top_k] + [v.size + 1 for v in vocabs])
    plan = StepPlan(
        end_ids=[torch.tensor(v.end_ids, device=m.model.device) for v, m in zip(vocabs, members)],
        bias=[_candidate_bias(v, safe, m.model.device) for v, m in zip(vocabs, members)],
        gid=[g.to(m.model.device) for g, m in zip(gids, members)],
        col_map=[[c.column.to(mi.model.device) for c, mi in zip(row, members)] for row in maps],
        weights=torch.tensor(config.weights, device=home),
        k=k,
    )
    devices = {str(m.model.device) for m in members}
    ens = Ensemble(
        members=members,
        plan=plan,
        strings=strings,
        exact=[[c.exact for c in row] for row in maps],
        col_host=[[c.column for c in row] for row in maps],
        window=config.retokenize_window,
        pool=ThreadPoolExecutor(len(members)) if len(devices) > 1 else None,
        check_invariants=check_invariants,
        usable=[b[:-1].isfinite().tolist() for b in plan.bias],
        stores=_stores(config.prefix_cache, members),
    )
    return ens, _place_on_ray(config, ens, cache_dir, wire)


def _place_on_ray(
    config: EnsembleConfig, ens: Ensemble, cache_dir: Path, wire: dict[str, int]
) -> dict[int, Any]:
    """Start an actor for each member placed on Ray and open those members through it; the
    actors, by member index ({} where no member is on Ray)."""
    specs, members = config.members, ens.members
    if not any(_remote(spec) for spec in specs):
        return {}
    connect(config.ray_address)
    actors = {
        i: start_actor(spec, cache_dir, m.vocab.end_ids, ens.plan.bias[i], config.prefix_cache)
        for i, (spec, m) in enumerate(zip(specs, members))
        if _remote(spec)
    }
    local = ens.backend

    def open_member(i: int) -> MemberBackend:
        if i in actors:
            return RayMember(members[i].name, actors[i], wire)
        return local(i)

    ens.open_member = open_member
    return actors


def _remote(spec: MemberSpec) -> bool:
    return spec.placement == "ray"  # the one switch (``backend="ray"`` sets every member's)


def _load(config: EnsembleConfig, spec: MemberSpec, cache_dir: Path) -> LoadedMember:
    if _remote(spec):  # the driver reads tokenizer and config; the actor loads weights
        model, tok, logits_size = describe(spec, cache_dir)
    else:
        model, tok = load_member(spec, cache_dir)
        logits_size = int(model.get_output_embeddings().weight.shape[0])
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
    vocab = Vocab.from_tokenizer(tok, logits_size, extra)
    window = spec.context_window or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    pad = tok.pad_token_id if tok.pad_token_id is not None else vocab.end_ids[0]
    return LoadedMember(spec, spec.display_name, model, tok, vocab, window, int(pad))


def _cross(src: Vocab, dst: Vocab, cache_dir: Path) -> CrossMap:
    if src is dst or src.fingerprint == dst.fingerprint:  # same tokenizer: no tokenizing
        ids = [dst.exact.get(c, t) if c is not None else t for t, c in enumerate(src.canon)]
        column = torch.tensor([*ids, dst.size])
        exact = torch.tensor([c is not None for c in src.canon] + [True])
    else:
        m = build_cross_map(src, dst, cache_dir)
        column = torch.cat([m.column, torch.tensor([dst.size])])
        exact = torch.cat([m.exact, torch.tensor([True])])
    column[src.end_ids] = dst.size  # every end token reads the member's END column
    return CrossMap(column, exact)


def _stores(size: int | str, members: list[LoadedMember]) -> list[PrefixStore]:
    """Each in-process member's prefix store of ``size`` on its device ([] for a size of 0),
    its size logged at load."""
    sized = [PrefixStore.sized(size, m.model.device) for m in members]
    kept = [s for s in sized if s is not None]
    if len(kept) < len(members):
        return []
    for m, s in zip(members, kept):
        limit = f"{s.max_bytes / 2**20:.0f} MiB" if s.max_bytes else f"{s.capacity} ids"
        _log.info("prefix cache of %s: %s (prefix_cache=%r)", m.name, limit, size)
    return kept


def _string_ids(vocabs: list[Vocab]) -> tuple[list[bytes], list[torch.Tensor]]:
    """Give every distinct candidate string across members one id; END is 0, -1 never wins."""
    table: dict[bytes, int] = {}
    strings: list[bytes] = [b""]
    gids = []
    for v in vocabs:
        g = [-1] * (v.size + 1)
        for t, b in enumerate(v.canon):
            if b is not None:
                if b not in table:
                    table[b] = len(strings)
                    strings.append(b)
                g[t] = table[b]
        g[v.size] = END
        gids.append(torch.tensor(g))
    return strings, gids


def _candidate_bias(vocab: Vocab, safe: frozenset[int], device: Any) -> torch.Tensor:
    """0 for candidate tokens, -inf for tokens that can never win: specials, end tokens (END
    stands for them) and strings with a byte some member cannot spell."""
    unsafe = set(range(256)) - safe
    bias = [0.0 if c is not None and unsafe.isdisjoint(c) else float("-inf") for c in vocab.canon]
    return torch.tensor([*bias, 0.0], device=device)
