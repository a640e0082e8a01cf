"""``UniTEEngine``: load members once, then generate, batch and stream through the union step.

The engine is shared (see ``registry``), so it is called from many threads at once: one worker
thread runs a continuous batch (``scheduler``): each step it admits waiting requests (their
prefill), takes one union step for every row in flight, reports each request's text, and retires
the rows that finished. Any mix of options shares the batch; every row keeps its own options,
grammar state and random generator. Members on different devices run their forward passes in a
thread pool, so a step costs the slowest member.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch

from ..errors import ConfigError, EngineClosedError
from .backends import MemberBackend
from .config import EnsembleConfig, GenerationOptions, MemberSpec, check_seeds, ensemble_config
from .constraints import ByteMatcher, Constraint
from .decode import Batch, Ensemble, RowState, closing_need, prefill_chunk, step
from .inputs import check_prompts, check_tools
from .loading import default_cache_dir, load_member
from .members import FALLBACK_STOP, LoadedMember, Message
from .memory import give_back_memory, tune_malloc
from .prefix import PrefixStore
from .ray_members import RayMember, connect, describe, release, start_actor
from .results import (
    Candidate,
    GenerationResult,
    Provenance,
    StreamChunk,
    TokenProvenance,
    Usage,
)
from .scheduler import MAX_BATCH_ROWS, MAX_QUEUE, Delta, Done, Failed, Job, Request, Scheduler
from .text import RowText
from .union import StepPlan
from .vocab import END, CrossMap, Vocab, build_cross_map

__all__ = ["EngineMetrics", "Prompt", "UniTEEngine", "stream_chunk"]

_log = logging.getLogger("unite_integrations")

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
    ) -> None:
        """``max_batch_rows``: rows decoded together at most; ``max_queue``: requests waiting
        at most, beyond which a call fails at once with ``OverloadedError``; ``prefix_cache``:
        how much each member keeps of earlier prompts' and answers' KV columns, for prompts
        that begin alike: ``"auto"`` (10% of the memory free on its device, at most 2 GiB), a
        size (``"512MiB"``, ``"5%"``), an int of ids, or 0 for none; ``prefill_chunk``: prompt
        ids a member runs per step for a longer prompt (chunked prefill: rows decoding and short
        newcomers never wait for a long prompt's whole prefill; None: 64 when the primary member is on
        a CPU, 512 on a GPU)."""
        if isinstance(members, EnsembleConfig):
            config = members
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
        self._setup(check_invariants, max_batch_rows, max_queue, None, prefill_chunk)

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
        self.ray_actors: dict[int, Any] = {}
        self._ens = self._build(check_invariants, loaded)
        #: Prompt ids a member runs per step for a longer prompt (chunked prefill).
        self.prefill_chunk = chunk or prefill_chunk(self.members[0].model.device)
        self._scheduler = Scheduler(self._serve, max_batch_rows, max_queue)
        self._views: dict[int, UniTEEngine] = {}
        #: Requests admitted, admissions (requests joining at the same step share one prefill),
        #: union steps decoded, and rows in flight now.
        self.stats = {"requests": 0, "batches": 0, "steps": 0, "rows": 0, "kv_bytes": 0}

    def _build(self, check_invariants: bool, loaded: list[LoadedMember] | None) -> Ensemble:
        members = loaded or [self._load(spec, n) for n, spec in enumerate(self.config.members)]
        names = [m.name for m in members]
        if len(set(names)) != len(names):  # the same model twice: tell members apart
            for n, m in enumerate(members):
                m.name = f"{m.name}#{n}"
        safe = frozenset(range(256))
        if len(members) > 1:
            for m in members:
                m.vocab.require_spellable(m.name)
                safe &= m.vocab.spellable
        home = torch.device(self.config.members[0].device)
        vocabs = [m.vocab for m in members]
        maps = [[self._cross(vj, vi) for vi in vocabs] for vj in vocabs]
        strings, gids = _string_ids(vocabs)
        k = min([self.config.top_k] + [v.size + 1 for v in vocabs])
        plan = StepPlan(
            end_ids=[
                torch.tensor(v.end_ids, device=m.model.device) for v, m in zip(vocabs, members)
            ],
            bias=[_candidate_bias(v, safe, m.model.device) for v, m in zip(vocabs, members)],
            gid=[g.to(m.model.device) for g, m in zip(gids, members)],
            col_map=[[c.column.to(mi.model.device) for c, mi in zip(row, members)] for row in maps],
            weights=torch.tensor(self.config.weights, device=home),
            k=k,
        )
        devices = {str(m.model.device) for m in members}
        ens = Ensemble(
            members=members,
            plan=plan,
            strings=strings,
            exact=[[c.exact for c in row] for row in maps],
            col_host=[[c.column for c in row] for row in maps],
            window=self.config.retokenize_window,
            pool=ThreadPoolExecutor(len(members)) if len(devices) > 1 else None,
            check_invariants=check_invariants,
            usable=[b[:-1].isfinite().tolist() for b in plan.bias],
            stores=_stores(self.config.prefix_cache, members),
        )
        specs = self.config.members
        if any(self._remote(spec) for spec in specs):
            connect(self.config.ray_address)
            actors = {
                i: start_actor(
                    spec, self.cache_dir, m.vocab.end_ids, plan.bias[i], self.config.prefix_cache
                )
                for i, (spec, m) in enumerate(zip(specs, members))
                if self._remote(spec)
            }
            local = ens.backend

            def open_member(i: int) -> MemberBackend:
                if i in actors:
                    return RayMember(members[i].name, actors[i], self.wire)
                return local(i)

            ens.open_member = open_member
            self.ray_actors = actors
        return ens

    def _remote(self, spec: MemberSpec) -> bool:
        return spec.placement == "ray" or self.config.backend == "ray"

    def _load(self, spec: MemberSpec, n: int) -> LoadedMember:
        if self._remote(spec):  # the driver reads tokenizer and config; the actor loads weights
            model, tok, logits_size = describe(spec, self.cache_dir)
        else:
            model, tok = load_member(spec, self.cache_dir)
            logits_size = int(model.get_output_embeddings().weight.shape[0])
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        vocab = Vocab.from_tokenizer(tok, logits_size, extra)
        window = spec.context_window or int(
            getattr(model.config, "max_position_embeddings", 0) or 2048
        )
        pad = tok.pad_token_id if tok.pad_token_id is not None else vocab.end_ids[0]
        return LoadedMember(spec, spec.display_name, model, tok, vocab, window, int(pad))

    def _cross(self, src: Vocab, dst: Vocab) -> CrossMap:
        if src is dst or src.fingerprint == dst.fingerprint:  # same tokenizer: no tokenizing
            ids = [dst.exact.get(c, t) if c is not None else t for t, c in enumerate(src.canon)]
            column = torch.tensor([*ids, dst.size])
            exact = torch.tensor([c is not None for c in src.canon] + [True])
        else:
            m = build_cross_map(src, dst, self.cache_dir)
            column = torch.cat([m.column, torch.tensor([dst.size])])
            exact = torch.cat([m.exact, torch.tensor([True])])
        column[src.end_ids] = dst.size  # every end token reads the member's END column
        return CrossMap(column, exact)

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
        **options: Any,
    ) -> list[GenerationResult]:
        """Generate for a batch of prompts (strings or chat conversations); one result each.

        ``tools`` (OpenAI-style function schemas) go into each member's chat template;
        ``constraint`` makes the text follow a grammar (tool calls, a JSON schema).
        """
        requests = self.submit(prompts, tools=tools, constraint=constraint, **options)
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
        **options: Any,
    ) -> Iterator[StreamChunk]:
        """Stream one prompt's text as it becomes safe to show (stop strings held back).

        Closing the iterator (or dropping it) frees the row at the next step.
        """
        [request] = self.submit(
            [prompt], tools=tools, constraint=constraint, stream=True, **options
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
        seeds: Sequence[int | None] | None = None,
        **options: Any,
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
        encoded, opts = self._prepare(prompts, tools, options)
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
        queued, rows = self._scheduler.load()
        return EngineMetrics(
            queued=queued,
            rows_in_flight=rows,
            requests=self.stats["requests"],
            steps=self.stats["steps"],
            max_batch_rows=self._scheduler.max_rows,
            max_queue=self._scheduler.max_queue,
            prefix_ids_reused=sum(s.reused for s in self._ens.stores),
            prefix_ids_stored=sum(s.stored for s in self._ens.stores),
            prefix_bytes_held=sum(s.bytes for s in self._ens.stores),
            prefix_bytes_max=sum(s.max_bytes or 0 for s in self._ens.stores),
            kv_bytes=self.stats["kv_bytes"],
        )

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
            loaded = self.members[member]
            view = object.__new__(UniTEEngine)
            view.config = ensemble_config(
                [loaded.spec],
                top_k=self.config.top_k,
                retokenize_window=self.config.retokenize_window,
                cache_dir=self.config.cache_dir,
                backend=self.config.backend,  # a member on Ray: the view gets an actor of its own
                ray_address=self.config.ray_address,
                prefix_cache=self.config.prefix_cache,  # a store of its own: its own thread
            )
            view.cache_dir = self.cache_dir
            view._setup(
                self._ens.check_invariants,
                self._scheduler.max_rows,
                self._scheduler.max_queue,
                [loaded],
                self.prefill_chunk,
            )
            self._views[member] = view
        return view

    # -- internals --------------------------------------------------------------------------------

    def _prepare(
        self, prompts: Sequence[Prompt], tools: Any, options: dict[str, Any]
    ) -> tuple[list[list[list[int]]], GenerationOptions]:
        """Validate a call and encode every prompt for every member (in the caller's thread)."""
        checked = check_prompts(prompts)  # the rules: engine/inputs.py, docs/guarantees.md
        tool_list = check_tools(tools)
        opts = GenerationOptions(**options)
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
                "raise max_new_tokens"
            )

    def _serve(self, scheduler: Scheduler) -> None:
        """The worker's decode loop: admit newcomers, one union step for every row in flight,
        report to each request, retire the rows that finished (or whose caller went away)."""
        batch: Batch | None = None  # opened with the first arrivals, again after a failure
        live = _Live()
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

    def _step(self, batch: Batch | None, live: _Live, arrivals: list[Request]) -> Batch | None:
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
            batch = self._recover(batch, live, e)
        self.stats["rows"] = len(batch.rows) if batch else 0
        self.stats["kv_bytes"] = batch.cache_bytes() if batch else 0
        self._scheduler.running(self.stats["rows"])
        return batch

    def _recover(self, batch: Batch | None, live: _Live, error: Exception) -> Batch | None:
        """After a step (or an admission) raised: find the requests at fault and fail them
        alone. Each request in flight is rebuilt in a batch of its own from what its rows held
        (``Batch.held``, every member) and takes one step there: one that raises again, or
        whose rows the failure left half-changed, fails with its error; the others go on in
        one batch rebuilt from their rows. One request alone is at fault by itself. Costs a
        prefill of each row's text so far, twice, only when something failed."""
        requests = list(live.rows)
        if batch is None or len(requests) <= 1:
            live.fail(error)
            return None
        index = {id(row): r for r, row in enumerate(batch.rows)}
        going: list[tuple[list[RowState], list[list[list[int]]], list[list[int]]]] = []
        for req in requests:
            rows = live.rows[req]
            try:
                if all(id(row) in index for row in rows):  # rows of the batch: what they held
                    at = [index[id(row)] for row in rows]
                    if not all(batch.consistent(r) for r in at):
                        raise error  # the failure struck inside one of these rows
                    held, n_prompt = batch.state(at)
                else:  # admitted this step: its prompts
                    held = [list(map(list, p)) for p in req.job.prompts]
                    n_prompt = [[len(p) for p in ps] for ps in held]
                solo = Batch(self._ens, self.prefill_chunk)
                solo.restore(rows, held, n_prompt)
                step(self._ens, solo)
                solo.keep([r for r, row in enumerate(solo.rows) if row.finish_reason is None])
                solo.forward()
                going.append((solo.rows, *solo.state(range(len(solo.rows)))))
            except Exception as e:  # this request is at fault: it fails alone
                req.events.put(Failed(e))
                del live.rows[req]
        live.report(self._result)
        rebuilt = Batch(self._ens, self.prefill_chunk)
        try:
            for rows, held, n_prompt in going:
                if rows and not rows[0].owner.cancelled:
                    rebuilt.restore(rows, held, n_prompt)
        except Exception as e:  # the rebuild itself failed: no request can go on
            live.fail(e)
            return None
        return rebuilt

    def _result(self, row: RowState) -> GenerationResult:
        n_in = row.n_in
        names = self.member_names
        n = max(len(row.steps), 1)
        tokens = []
        wins = dict.fromkeys(names, 0)
        proposed = dict.fromkeys(names, 0)
        weights = self.config.weights
        for n_step, (gid, own, prob, _, gated) in enumerate(row.steps):
            winner = names[max(range(len(names)), key=lambda i: (prob[i], -i))]
            wins[winner] += 1
            for name, o in zip(names, own):
                proposed[name] += o >= 0
            # The mixed probability it was chosen from (a gated row's: the primary's alone; 0
            # where a grammar overrode the union); where it is among the top strings, the
            # device's own figure, so that the two agree exactly.
            top = row.top[n_step] if row.top else []
            p = prob[0] if gated else sum(w * q for w, q in zip(weights, prob))
            if p > 0:
                p = next((q for g, q in top if g == gid), p)
            data = self._ens.strings[gid]
            tokens.append(
                TokenProvenance(
                    text=data.decode("utf-8", errors="replace"),
                    bytes=list(data),
                    logprob=math.log(p) if p > 0 else None,
                    top=[self._candidate(g, q) for g, q in top] if row.top else None,
                    proposers=[nm for nm, o in zip(names, own) if o >= 0],
                    probs=dict(zip(names[:1] if gated else names, prob)),
                    winner=winner,
                    gated=gated,
                )
            )
        provenance = Provenance(
            members=names,
            tokens=tokens,
            agreement_rate=row.agreed / max(row.voted, 1),
            gated_share=(row.decisions - row.voted) / max(row.decisions, 1),
            win_share={k: v / n for k, v in wins.items()},
            proposal_share={k: v / n for k, v in proposed.items()},
        )
        # Each member's tokens for the returned text; a member alone whose tokenizer cannot
        # spell every byte (WordPiece: its decoder's spaces do not tokenize back) counts the
        # tokens it generated instead.
        text = row.text.text.encode()
        n_steps = len(row.steps)
        out_ids = {
            m.name: (len(m.vocab.encode(text)) if m.vocab.byte_complete else n_steps) if text else 0
            for m in self._ens.members
        }
        usage = Usage(
            input_tokens=n_in[0],
            output_tokens=len(row.steps),
            input_tokens_per_member=dict(zip(names, n_in)),
            output_tokens_per_member=out_ids,
        )
        assert row.finish_reason is not None, "a result is built for finished rows only"
        return GenerationResult(
            text=row.text.text,
            finish_reason=row.finish_reason,
            usage=usage,
            provenance=provenance,
        )

    def _candidate(self, gid: int, p: float) -> Candidate:
        """A string of a step's mixed distribution (``top_logprobs``) as the results show it."""
        logprob = math.log(p) if p > 0 else -math.inf
        if gid == END:
            return Candidate(text=self._end_text, logprob=logprob, end=True)
        data = self._ens.strings[gid]
        return Candidate(
            text=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(data)
        )

    @functools.cached_property
    def _end_text(self) -> str:
        """How END shows among top log-probabilities: the primary's end-of-sequence token."""
        primary = self._ens.members[0]
        eos = getattr(primary.tokenizer, "eos_token", None)
        if isinstance(eos, str) and eos:
            return eos
        return str(primary.tokenizer.convert_ids_to_tokens(primary.vocab.end_ids[0]))


@dataclass(frozen=True)
class EngineMetrics:
    """The engine's load now and its totals so far."""

    queued: int  # requests waiting to join the batch
    rows_in_flight: int  # rows decoding now
    requests: int  # requests admitted so far
    steps: int  # union steps decoded so far
    max_batch_rows: int
    max_queue: int
    # ``prefix_cache``, all in-process members together: prompt ids taken from the stores
    # instead of a forward pass, and ids written into them (0 without a prefix cache)
    prefix_ids_reused: int = 0
    prefix_ids_stored: int = 0
    # bytes of KV columns the stores hold now, and at most (0 where a store counts ids)
    prefix_bytes_held: int = 0
    prefix_bytes_max: int = 0
    # bytes of the KV caches of the rows in flight (in-process members, room to grow included):
    # with the weights and the stores, what the process holds; bounded by ``max_batch_rows``
    kv_bytes: int = 0


class _Live:
    """The worker's view of the requests in flight and their rows (in the order of the call)."""

    def __init__(self) -> None:
        self.rows: dict[Request, list[RowState]] = {}

    def admit(
        self, ens: Ensemble, arrivals: list[Request]
    ) -> tuple[list[list[list[int]]], list[RowState]]:
        """Rows for the arrivals, and each member's prompts for them (``[i][r]``)."""
        home = ens.plan.weights.device
        prompts: list[list[list[int]]] = [[] for _ in ens.members]
        new: list[RowState] = []
        for req in arrivals:
            job, opts = req.job, req.job.options
            try:  # a request that cannot start fails alone, before it touches the batch
                # Rows with seeds of their own (``submit(seeds=...)``): options of their own.
                row_opts = [opts] * job.n_rows
                if job.seeds is not None:
                    row_opts = [opts.model_copy(update={"seed": s}) for s in job.seeds]
                rows = [
                    RowState(
                        RowText(opts.stop),
                        o,
                        matcher=job.matcher.copy() if job.matcher else None,
                        generator=_generator(o, home),
                        n_in=[len(p[r]) for p in job.prompts],
                        owner=req,
                    )
                    for r, o in enumerate(row_opts)
                ]
            except Exception as e:
                req.events.put(Failed(e))
                continue
            self.rows[req] = rows
            new += rows
            for i, p in enumerate(job.prompts):
                prompts[i] += p
        return prompts, new

    def report(self, result: Any) -> None:
        """Stream each row's deltas (tagged with the row); hand finished requests their
        results, with each row's last delta; forget cancelled ones. A request whose report
        raises fails alone (its rows leave at the next step); the others and the loop go on."""
        for req, rows in list(self.rows.items()):
            try:
                if req.cancelled:
                    del self.rows[req]
                elif all(row.finish_reason is not None for row in rows):
                    finals = [row.text.take_delta(final=True) for row in rows] if req.stream else []
                    req.events.put(Done([result(row) for row in rows], tuple(finals)))
                    del self.rows[req]
                elif req.stream:
                    for r, row in enumerate(rows):
                        if delta := row.text.take_delta():
                            req.events.put(Delta(delta, row=r))
            except Exception as e:
                req.cancel()  # its rows, if any are still decoding, leave at the next step
                req.events.put(Failed(e))
                self.rows.pop(req, None)

    def fail(self, error: BaseException) -> None:
        for req in self.rows:
            req.events.put(Failed(error))
        self.rows.clear()


def stream_chunk(event: Delta | Done, row: int = 0) -> StreamChunk:
    """A streamed request's event as a chunk of its row: its text, and with the last one the
    result (a ``Done`` event ends every row: ``row`` picks whose last chunk)."""
    if isinstance(event, Delta):
        return StreamChunk(text=event.text, row=event.row)
    result = event.results[row]
    text = event.texts[row] if event.texts else ""
    return StreamChunk(text=text, finish_reason=result.finish_reason, result=result, row=row)


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


def _generator(opts: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """A sampled row's own generator: the same seed gives the same text in any batch."""
    if opts.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if opts.seed is None:
        gen.seed()  # a fresh random seed, leaving torch's global generator alone
    else:
        gen.manual_seed(opts.seed)
    return gen


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
