"""Members in Ray actors: another ``MemberBackend``, not a second engine.

Each member with ``placement="ray"`` (``backend="ray"`` sets it on every member) loads its weights
once in a Ray actor that holds its KV caches (a ``MemberBatch``) for the rows in flight. The driver
keeps the tokenizers, the cross-vocabulary maps, the union, the choice, stop strings, grammars
and provenance. Per step a member receives the feed-back updates and sends back its top-k
(values and columns, [B, k]) and then its logits at the union's columns ([B, C]): O(rows x k)
numbers, whatever the vocabulary size (the engine's ``wire["bytes"]`` counts them).

``advance`` only *issues* the remote forward pass; ``top`` waits for it. Every member's forward
is issued before any is awaited, so a step costs the slowest member. Ray is imported lazily:
``import unite_integrations`` stays Ray-free.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import MemberUnavailableError, ModelLoadError
from .backends import LocalMember
from .config import MemberSpec
from .memory import tune_malloc
from .prefix import PrefixStore
from .sequences import MemberBatch, Update

__all__ = ["RayMember", "connect", "describe", "release", "start_actor"]

#: Seconds a driver waits for one remote answer before the member counts as unavailable.
TIMEOUT_S = 120.0
#: Restarts Ray makes of a member's actor that died (its rows in flight fail; later ones work).
MAX_RESTARTS = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ModelLoadError(
            "a member placed on Ray needs the 'ray' package: pip install 'unite-integrations[ray]'"
        ) from e
    return ray


def connect(address: str | None) -> None:
    """Join (or start) Ray once: ``address`` as ``ray.init`` takes it; None starts a local one."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address)


class _RemoteModel:
    """What the driver knows of a remote member's model without its weights."""

    device = torch.device("cpu")

    def __init__(self, config: Any, generation_config: Any) -> None:
        self.config, self.generation_config = config, generation_config


def describe(spec: MemberSpec, cache_dir: Path | None) -> tuple[Any, Any, int]:
    """(model stand-in, tokenizer, logits size) for the driver: tokenizer and config, no weights."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from .loading import _no_length_warning
    from .sources import convert_gguf, resolve_source

    resolved = resolve_source(spec.source, cache_dir)
    path = (
        convert_gguf(resolved, cache_dir)
        if isinstance(resolved, Path) and resolved.is_file()
        else resolved
    )
    kwargs: dict[str, Any] = {"local_files_only": True} if isinstance(resolved, Path) else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
        config = AutoConfig.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise ModelLoadError(f"member {spec.display_name!r}: could not read {path}: {e}") from e
    _no_length_warning(tok)
    try:
        gen = GenerationConfig.from_pretrained(str(path), **kwargs)
    except Exception:
        gen = None
    if spec.chat_template is not None:
        tok.chat_template = spec.chat_template
    size = getattr(config, "vocab_size", None) or config.get_text_config().vocab_size
    return _RemoteModel(config, gen), tok, int(size)


class _MemberActor:
    """The remote side: one member's weights and its ``LocalMember`` for the rows in flight."""

    def __init__(
        self,
        spec: MemberSpec,
        cache_dir: str | None,
        end_ids: list[int],
        bias: Any,
        prefix_cache: int | str = 0,
    ) -> None:
        from .loading import load_member

        tune_malloc()  # the actor's process decodes too
        self.model, tok = load_member(spec, Path(cache_dir) if cache_dir else None)
        device = next(self.model.parameters()).device
        self.store = PrefixStore.sized(prefix_cache, device)  # outlives batches
        pad = tok.pad_token_id if tok.pad_token_id is not None else end_ids[0]
        self.pad, self.end_ids, self.bias = int(pad), torch.tensor(end_ids), torch.as_tensor(bias)
        self.reset()

    def reset(self) -> None:
        device = next(self.model.parameters()).device
        batch = MemberBatch(self.model, [], self.pad, self.store)
        self.local = LocalMember(batch, self.end_ids.to(device), self.bias.to(device))

    def add_rows(self, prompts: list[list[int]], fresh: bool, now: list[int] | None) -> list[int]:
        """Returns how many ids each new row holds (its store may give more than ``now``)."""
        if fresh:
            self.reset()
        self.local.add_rows(prompts, now)
        return [len(ids) for ids in self.local.ids[len(self.local.ids) - len(prompts) :]]

    def keep_rows(self, rows: list[int]) -> None:
        self.local.keep_rows(rows)

    def advance(self, updates: list[Update]) -> None:
        self.local.advance(updates)

    def top(self, k: int, ban_end: Any, rows: list[int] | None = None) -> tuple[Any, Any]:
        val, col = self.local.top(k, ban_end, rows)
        return val.cpu(), col.cpu()

    def gather(self, cols: Any, rows: list[int] | None = None) -> Any:
        return self.local.gather(cols, rows).cpu()

    def candidates(self, r: int, n: int) -> list[int]:
        return self.local.candidates(r, n)

    def logits_at(self, r: int, cols: list[int]) -> list[float]:
        return self.local.logits_at(r, cols)


def start_actor(
    spec: MemberSpec,
    cache_dir: Path | None,
    end_ids: list[int],
    bias: torch.Tensor,
    prefix_cache: int | str = 0,
) -> Any:
    """One member's actor (loads the weights once; Ray restarts it after a crash)."""
    ray = _ray()
    # Ray's actor default holds no CPU once placed; naming any resource makes it hold one CPU too.
    options: dict[str, Any] = {"max_restarts": MAX_RESTARTS, "max_task_retries": 0}
    if spec.gpus:  # num_gpus, or what its device (map) uses: Ray hides GPUs not reserved
        options["num_gpus"] = spec.gpus
    if spec.resources:
        options["resources"] = dict(spec.resources)
    cls = ray.remote(_MemberActor).options(**options)
    return cls.remote(
        spec, str(cache_dir) if cache_dir else None, end_ids, bias.cpu(), prefix_cache
    )


def release(actors: Iterable[Any]) -> None:
    """End these actors for good (the engine was closed); nothing if there are none."""
    actors = list(actors)
    if actors:
        ray = _ray()
        if not ray.is_initialized():
            return
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.numel() * x.element_size())
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    return 8 if isinstance(x, (int, float, bool)) else 0


class RayMember:
    """The driver's side of one member's actor for one batch: a ``MemberBackend``.

    It mirrors each row's ids (the driver needs them to re-tokenize) and counts the bytes of
    numbers it sends and receives into ``counter["bytes"]`` (the engine's ``wire``, shared by
    all its Ray members and kept across batches).
    """

    def __init__(self, name: str, actor: Any, counter: dict[str, int]) -> None:
        self.name, self.actor, self.counter = name, actor, counter
        self.ids: list[list[int]] = []
        self.n_prompt: list[int] = []
        self._fresh = True  # the actor may hold a failed batch's rows: drop them first
        self._pending: Any = None  # the issued forward pass

    def _get(self, ref: Any) -> Any:
        ray = _ray()
        try:
            out = ray.get(ref, timeout=TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
            raise MemberUnavailableError(
                f"member {self.name!r}: its Ray actor died or did not answer within "
                f"{TIMEOUT_S:.0f} s ({type(e).__name__}); the requests in flight fail, Ray "
                "restarts the actor and the next request is served"
            ) from e
        self.counter["bytes"] += _nbytes(out)
        return out

    def _send(self, *args: Any) -> None:
        self.counter["bytes"] += _nbytes(list(args))

    def add_rows(self, prompts: list[list[int]], now: list[int] | None = None) -> None:
        self._send(prompts)
        self._fresh = self._fresh or not self.ids  # an empty batch may meet a restarted actor
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # a fresh batch may wait for a restarting actor: (re)starting is idempotent
            try:
                held = self._get(self.actor.add_rows.remote(prompts, self._fresh, now))
                break
            except MemberUnavailableError as e:
                restarting = isinstance(e.__cause__, _ray().exceptions.ActorUnavailableError)
                if not (self._fresh and restarting) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._fresh = False
        self.ids += [list(p[:n]) for p, n in zip(prompts, held)]
        self.n_prompt += [len(p) for p in prompts]

    def keep_rows(self, rows: list[int]) -> None:
        if rows == list(range(len(self.ids))):
            return
        self._send(rows)
        self.actor.keep_rows.remote(rows)  # ordered before the next call on the same actor
        self.ids = [self.ids[r] for r in rows]
        self.n_prompt = [self.n_prompt[r] for r in rows]

    def advance(self, updates: list[Update]) -> None:
        self._send([u[1] for u in updates if u is not None])
        self._pending = self.actor.advance.remote(updates)  # issued, not awaited
        for r, u in enumerate(updates):
            if u is not None:
                self.ids[r] = self.ids[r][: u[0]] + u[1]

    def top(
        self, k: int, ban_end: torch.Tensor | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._get(pending)
        val, col = self._get(self.actor.top.remote(k, ban_end, rows))
        return val, col

    def gather(self, cols: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        self._send(cols)
        out: torch.Tensor = self._get(self.actor.gather.remote(cols.cpu(), rows))
        return out

    def candidates(self, r: int, n: int) -> list[int]:
        out: list[int] = self._get(self.actor.candidates.remote(r, n))
        return out

    def logits_at(self, r: int, cols: list[int]) -> list[float]:
        out: list[float] = self._get(self.actor.logits_at.remote(r, cols))
        return out
