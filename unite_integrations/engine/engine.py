"""``UniTEEngine``: load members once, then generate, batch and stream through the union step.

The engine is shared (see ``registry``), so it is called from many threads at once: one worker
thread runs a continuous batch (``scheduler``): each step it admits waiting requests (their
prefill), takes one union step for every row in flight, reports each request's text, and retires
the rows that finished. Any mix of options shares the batch; every row keeps its own options,
grammar state and random generator. Members on different devices run their forward passes in a
thread pool, so a step costs the slowest member.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..errors import ConfigError, EngineClosedError
from .assembly import build_ensemble, check_beside_config, member_config
from .batch import Batch, RowState, prefill_chunk
from .config import EnsembleConfig, GenerationOptions, MemberSpec, check_seeds, ensemble_config
from .constraints import ByteMatcher, Constraint
from .decode import step
from .grammar import closing_need
from .inputs import check_prompts, check_tools
from .live import LiveRequests, stream_chunk
from .loading import default_cache_dir
from .members import FALLBACK_STOP, LoadedMember, Message
from .memory import give_back_memory, tune_malloc
from .metrics import EngineMetrics, engine_metrics
from .ray_members import release
from .recovery import recover
from .results import GenerationResult, StreamChunk
from .row_results import RowResults
from .scheduler import MAX_BATCH_ROWS, MAX_QUEUE, Done, Job, Request, Scheduler

__all__ = ["EngineMetrics", "Prompt", "UniTEEngine", "stream_chunk"]

Prompt = str | Sequence[Message]


class UniTEEngine:
    """An ensemble of causal LMs that decodes as one model with the UniTE rule.

    >>> engine = UniTEEngine(["smollm2-135m-instruct", "gemma-3-270m"], top_k=10)
    >>> engine.generate(["The capital of France is"], max_new_tokens=8)[0].text
    """

    def __init__(
        self,
        members: Sequence[str | MemberSpec] | str | MemberSpec | EnsembleConfig,
        *,
        top_k: int = 10,
        weights: Sequence[float] | None = None,
        retokenize_window: int = 32,
        cache_dir: str | Path | None = None,
        check_invariants: bool | None = None,
        max_batch_rows: int = MAX_BATCH_ROWS,
        max_queue: int = MAX_QUEUE,
        backend: Literal["local", "ray"] = "local",
        ray_address: str | None = None,
        prefix_cache: int | str = "auto",
        prefill_chunk: int | None = None,
        loaded: Sequence[LoadedMember] | None = None,
    ) -> None:
        """``members``: sources, specs, or an ``EnsembleConfig``, which sets ``top_k``,
        ``weights``, ``retokenize_window``, ``cache_dir``, ``backend``, ``ray_address`` and
        ``prefix_cache`` itself (giving one of them beside it raises ``ConfigError``).

        ``max_batch_rows``: rows decoded together at most; ``max_queue``: requests waiting
        at most, beyond which a call fails at once with ``OverloadedError``; ``prefix_cache``:
        how much each member keeps of earlier prompts' and answers' KV columns, for prompts
        that begin alike: ``"auto"`` (10% of the memory free on its device, at most 2 GiB), a
        size (``"512MiB"``, ``"5%"``), an int of ids, or 0 for none; ``prefill_chunk``: prompt
        ids a member runs per step for a longer prompt (chunked prefill: rows decoding and short
        newcomers never wait for a long prompt's whole prefill; None: 64 when the primary member is on
        a CPU, 512 on a GPU); ``loaded``: the members of an ``EnsembleConfig`` already loaded
        (``member_engine``'s views share their model so)."""
        if isinstance(members, EnsembleConfig):
            config = members
            check_beside_config(
                config,
                {
                    "top_k": top_k,
                    "weights": weights,
                    "retokenize_window": retokenize_window,
                    "cache_dir": cache_dir,
                    "backend": backend,
                    "ray_address": ray_address,
                    "prefix_cache": prefix_cache,
                },
            )
        elif loaded is not None:
            raise ConfigError("loaded members come with their EnsembleConfig", param="loaded")
        else:
            config = ensemble_config(
                members,
                top_k=top_k,
                weights=weights,
                retokenize_window=retokenize_window,
                cache_dir=cache_dir,
                backend=backend,
                ray_address=ray_address,
                prefix_cache=prefix_cache,
            )
        self.config: EnsembleConfig = config
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        if check_invariants is None:
            check_invariants = os.environ.get("UNITE_CHECK_INVARIANTS", "") not in ("", "0")
        self._setup(
            check_invariants,
            max_batch_rows,
            max_queue,
            list(loaded) if loaded is not None else None,
            prefill_chunk,
        )

    # -- set-up ---------------------------------------------------------------------------------

    def _setup(
        self,
        check_invariants: bool,
        max_batch_rows: int,
        max_queue: int,
        loaded: list[LoadedMember] | None,
        chunk: int | None = None,
    ) -> None:
        if max_batch_rows < 1 or max_queue < 1 or (chunk is not None and chunk < 1):
            raise ConfigError(
                "max_batch_rows, max_queue and prefill_chunk must be >= 1, got "
                f"{max_batch_rows}, {max_queue}, {chunk}"
            )
        #: Bytes of numbers sent to and received from remote (Ray) members, all steps together.
        self.wire = {"bytes": 0}
        #: Member index -> its Ray actor, for members placed on Ray.
        self.ray_actors: dict[int, Any]
        self._ens, self.ray_actors = build_ensemble(
            self.config, self.cache_dir, check_invariants, loaded, self.wire
        )
        self._results = RowResults(self._ens, self.config.weights)
        #: Prompt ids a member runs per step for a longer prompt (chunked prefill).
        self.prefill_chunk = chunk or prefill_chunk(self.members[0].model.device)
        self._scheduler = Scheduler(self._serve, max_batch_rows, max_queue)
        self._views: dict[int, UniTEEngine] = {}
        #: Requests admitted, admissions (requests joining at the same step share one prefill),
        #: union steps decoded, and rows in flight now.
        self.stats = {"requests": 0, "batches": 0, "steps": 0, "rows": 0, "kv_bytes": 0}

    # -- public API -------------------------------------------------------------------------------

    @property
    def members(self) -> list[LoadedMember]:
        return self._ens.members

    @property
    def member_names(self) -> list[str]:
        return [m.name for m in self._ens.members]

    @property
    def context_window(self) -> int:
        """The smallest member context window: what a prompt plus its answer must fit."""
        return min(m.context_window for m in self._ens.members)

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        options: GenerationOptions | None = None,
        **kwargs: Any,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts (strings or chat conversations); one result each.

        ``tools`` (OpenAI-style function schemas) go into each member's chat template;
        ``constraint`` makes the text follow a grammar (tool calls, a JSON schema). The call's
        options are ``options`` (a ``GenerationOptions``, taken as it is) or its fields as
        keyword arguments (``max_new_tokens=64``), not both.
        """
        requests = self.submit(
            prompts, tools=tools, constraint=constraint, options=options, **kwargs
        )
        try:
            results: list[GenerationResult] = []
            for request in requests:
                event = request.next_event()
                assert isinstance(event, Done)
                results += event.results
            return results
        finally:
            for request in requests:  # a caller interrupted while waiting frees its rows
                request.cancel()

    def stream(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        options: GenerationOptions | None = None,
        **kwargs: Any,
    ) -> Iterator[StreamChunk]:
        """Stream one prompt's text as it becomes safe to show (stop strings held back).

        Closing the iterator (or dropping it) frees the row at the next step.
        """
        [request] = self.submit(
            [prompt], tools=tools, constraint=constraint, stream=True, options=options, **kwargs
        )
        try:
            while True:
                event = request.next_event()
                yield stream_chunk(event)
                if isinstance(event, Done):
                    return
        finally:
            request.cancel()  # a consumer that stops reading stops the decoding too

    def submit(
        self,
        prompts: Sequence[Prompt],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        stream: bool = False,
        options: GenerationOptions | None = None,
        seeds: Sequence[int | None] | None = None,
        **kwargs: Any,
    ) -> list[Request]:
        """Queue a call without waiting: the requests (one per ``max_batch_rows`` prompts) whose
        ``next_event()`` gives ``Delta`` (streams: each tagged with its row) then ``Done``, and
        whose ``cancel()`` frees their rows at the next step. For front ends that manage waiting
        themselves (async, a server); ``generate`` and ``stream`` are built on it.

        ``seeds``: one per prompt, row i's sampling seed in place of ``seed`` (None: a fresh
        random one), so that several samples of one prompt are rows of one request, each with
        a random stream of its own (OpenAI's ``n``); greedy rows ignore it.

        Raises ``OverloadedError`` at once when the queue is full, ``EngineClosedError`` after
        ``close()``, and every validation error before anything is queued.
        """
        if self._scheduler.closed:
            raise EngineClosedError("the engine is closed: build a new UniTEEngine")
        encoded, opts = self._prepare(prompts, tools, _options(options, kwargs))
        row_seeds = check_seeds(seeds, len(encoded[0]))
        matcher = None
        if constraint is not None:  # compiled once, here: each row takes a copy
            matcher = ByteMatcher(constraint)
            room = min(
                m.context_window - len(p) for m, ps in zip(self.members, encoded) for p in ps
            )
            self._check_budget(opts, constraint, matcher, room)
        n = self._scheduler.max_rows
        requests = [
            Request(
                Job(
                    [e[s : s + n] for e in encoded],
                    opts,
                    constraint,
                    matcher,
                    row_seeds[s : s + n] if row_seeds is not None else None,
                ),
                stream=stream,
            )
            for s in range(0, len(encoded[0]), n)
        ]
        self._scheduler.submit(requests)
        return requests

    # -- lifetime and load ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop decoding: calls in flight and waiting fail with ``EngineClosedError``, later
        calls too. The loaded models stay usable by one-member views until they are closed."""
        for view in self._views.values():
            view.close()
        self._scheduler.close()
        release(self.ray_actors.values())

    @property
    def closed(self) -> bool:
        return self._scheduler.closed

    def __enter__(self) -> UniTEEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def metrics(self) -> EngineMetrics:
        """Load now (queue depth, rows in flight) and totals so far, for a server's /metrics."""
        return engine_metrics(self._scheduler, self.stats, self._ens.stores)

    def reset_prefix_cache(self) -> None:
        """Empty the members' prefix caches (``prefix_cache``; in-process members): later prompts
        run whole until they fill again. Calls in flight are unaffected (a lookup under way keeps
        the blocks it found)."""
        for store in self._ens.stores:
            store.clear()

    def member_engine(self, member: int | str) -> UniTEEngine:
        """One member of this ensemble as an engine of its own, sharing the loaded model (no
        reload). A one-member engine decodes exactly like the model's own greedy ``generate``,
        which is what per-member baselines need. Views are cached and closed with this engine."""
        names = self.member_names
        if isinstance(member, str):
            if member not in names:
                raise ConfigError(f"no member named {member!r}; the members are {names}")
            member = names.index(member)
        if not 0 <= member < len(names):
            raise ConfigError(f"member index {member} is out of range for {len(names)} members")
        if len(names) == 1:
            return self
        view = self._views.get(member)
        if view is None:
            view = UniTEEngine(
                member_config(self.config, self.members[member].spec),
                check_invariants=self._ens.check_invariants,
                max_batch_rows=self._scheduler.max_rows,
                max_queue=self._scheduler.max_queue,
                prefill_chunk=self.prefill_chunk,
                loaded=[self.members[member]],
            )
            self._views[member] = view
        return view

    # -- internals --------------------------------------------------------------------------------

    def _prepare(
        self, prompts: Sequence[Prompt], tools: Any, opts: GenerationOptions
    ) -> tuple[list[list[list[int]]], GenerationOptions]:
        """Validate a call and encode every prompt for every member (in the caller's thread)."""
        checked = check_prompts(prompts)  # the rules: engine/inputs.py, docs/guarantees.md
        tool_list = check_tools(tools)
        chat = [not isinstance(p, str) for p in checked]
        if any(chat) and any(not m.has_template for m in self._ens.members):
            opts = opts.model_copy(update={"stop": tuple(opts.stop) + FALLBACK_STOP})
        encoded = [[m.encode_prompt(p, tool_list) for p in checked] for m in self._ens.members]
        return encoded, opts

    def _check_budget(
        self, opts: GenerationOptions, constraint: Constraint, matcher: ByteMatcher, room: int
    ) -> None:
        """Refuse a budget that cannot hold even the shortest text the grammar accepts: neither
        ``max_new_tokens`` nor the ``room`` the prompt leaves in the context window (ids of the
        member with the least; a step takes at least one)."""
        budget = min(opts.max_new_tokens, room - 1)
        limit = budget + 1
        need = closing_need(self._ens, matcher, b"", limit)
        if need > budget:
            shortest = f"{need} steps" if need < limit else f"more than {budget}"
            if budget < opts.max_new_tokens:
                raise ConfigError(
                    f"the prompt leaves room for {budget} tokens in the context window "
                    f"({self.context_window}), too few for the shortest text this "
                    f"{constraint.kind} constraint accepts ({shortest}, the end included): "
                    "shorten the prompt or the schema"
                )
            raise ConfigError(
                f"max_new_tokens={opts.max_new_tokens} cannot hold the shortest text this "
                f"{constraint.kind} constraint accepts ({shortest}, the end included): "
                "raise max_new_tokens",
                param="max_new_tokens",
            )

    def _serve(self, scheduler: Scheduler) -> None:
        """The worker's decode loop: admit newcomers, one union step for every row in flight,
        report to each request, retire the rows that finished (or whose caller went away)."""
        batch: Batch | None = None  # opened with the first arrivals, again after a failure
        live = LiveRequests()
        tune_malloc()
        try:
            while (arrivals := scheduler.admit(len(batch.rows) if batch else 0)) is not None:
                busy = bool(batch and batch.rows)
                batch = self._step(batch, live, arrivals)
                if busy and not (batch and batch.rows):
                    give_back_memory()  # the batch emptied: its caches' memory leaves too
        except BaseException as e:  # the loop itself broke: no caller may wait forever
            live.fail(EngineClosedError(f"the engine's worker stopped ({type(e).__name__}: {e})"))
            raise  # the scheduler closes itself: later calls are refused, not left waiting
        else:
            live.fail(EngineClosedError("the engine was closed while this call was decoding"))
        finally:
            self.stats["rows"] = self.stats["kv_bytes"] = 0
            self._scheduler.running(0)

    def _step(
        self, batch: Batch | None, live: LiveRequests, arrivals: list[Request]
    ) -> Batch | None:
        """Admit ``arrivals`` and decode one step; the batch to go on with (None after a failure:
        the requests in flight fail, the engine goes on with a new batch)."""
        try:
            if arrivals:
                prompts, rows = live.admit(self._ens, arrivals)  # failures now reach them
                batch = batch or Batch(self._ens, self.prefill_chunk)
                batch.add(prompts, rows)
                self.stats["requests"] += len(arrivals)
                self.stats["batches"] += 1
            if batch is not None and batch.rows:
                self.stats["steps"] += step(self._ens, batch)  # not while every row prefills
                # Finished rows leave before their callers hear: their ids are in the prefix
                # stores and off the count of rows in flight by then (a next turn reuses them).
                batch.keep(
                    [
                        r
                        for r, row in enumerate(batch.rows)
                        if row.finish_reason is None and not row.owner.cancelled
                    ]
                )
                self._scheduler.running(len(batch.rows))
                live.report(self._result)
                # A forward that only prefills (no row decodes, so nobody waits on it) yields to
                # arrivals: they join first, and a short one's first token does not wait for a
                # long prompt's chunks (a burst whose first request is long admits in two).
                if any(batch.ready()) or not self._scheduler.arrivals_fit(len(batch.rows)):
                    batch.forward()
        except Exception as e:  # the requests at fault fail; the others and the engine go on
            batch = recover(self._ens, self.prefill_chunk, batch, live, e, self._result)
        self.stats["rows"] = len(batch.rows) if batch else 0
        self.stats["kv_bytes"] = batch.cache_bytes() if batch else 0
        self._scheduler.running(self.stats["rows"])
        return batch

    def _result(self, row: RowState) -> GenerationResult:
        """A finished row's result (``row_results``)."""
        return self._results.build(row)


def _options(options: GenerationOptions | None, kwargs: dict[str, Any]) -> GenerationOptions:
    """A call's options, built (and validated) once: the ``GenerationOptions`` given, as it is,
    or one from the keyword arguments of a direct engine user."""
    if options is None:
        return GenerationOptions(**kwargs)
    if not isinstance(options, GenerationOptions):
        raise ConfigError(
            f"options={type(options).__name__}: give a GenerationOptions (or its fields as "
            "keyword arguments)",
            param="options",
        )
    if kwargs:
        raise ConfigError(
            f"got options= and {', '.join(sorted(kwargs))}: give a GenerationOptions or its "
            "fields as keyword arguments, not both",
            param=sorted(kwargs)[0],
        )
    return options
