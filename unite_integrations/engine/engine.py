"""``UniTEEngine``: load members once, then generate, batch and stream through the union step.

The engine is shared (see ``registry``), so it is called from many threads at once: one worker
thread decodes, and calls waiting together with the same options are batched (``scheduler``);
every batch builds its own KV caches. Members on different devices run their forward passes in a
thread pool, so a step costs the slowest member.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from .config import EnsembleConfig, GenerationOptions, MemberSpec, ensemble_config
from .constraints import Constraint
from .decode import Ensemble, RowState, decode
from .inputs import check_prompts, check_tools
from .loading import default_cache_dir, load_member
from .members import FALLBACK_STOP, LoadedMember, Message
from .results import GenerationResult, Provenance, StreamChunk, TokenProvenance, Usage
from .scheduler import Request, Scheduler
from .union import StepPlan
from .vocab import END, CrossMap, Vocab, build_cross_map

__all__ = ["Prompt", "UniTEEngine"]

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
    ) -> None:
        if isinstance(members, EnsembleConfig):
            config = members
        else:
            config = ensemble_config(
                members,
                top_k=top_k,
                weights=weights,
                retokenize_window=retokenize_window,
                cache_dir=cache_dir,
            )
        self.config: EnsembleConfig = config
        self.cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
        if check_invariants is None:
            check_invariants = os.environ.get("UNITE_CHECK_INVARIANTS", "") not in ("", "0")
        self._ens = self._build(check_invariants)
        self._scheduler = Scheduler(self._run_group)
        #: Calls served and decode batches run (calls waiting together share a batch).
        self.stats = {"requests": 0, "batches": 0}

    # -- set-up ---------------------------------------------------------------------------------

    def _build(self, check_invariants: bool) -> Ensemble:
        members = [self._load(spec, n) for n, spec in enumerate(self.config.members)]
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
        return Ensemble(
            members=members,
            plan=plan,
            strings=strings,
            exact=[[c.exact for c in row] for row in maps],
            col_host=[[c.column for c in row] for row in maps],
            window=self.config.retokenize_window,
            pool=ThreadPoolExecutor(len(members)) if len(devices) > 1 else None,
            check_invariants=check_invariants,
        )

    def _load(self, spec: MemberSpec, n: int) -> LoadedMember:
        model, tok = load_member(spec, self.cache_dir)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        extra = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        logits_size = int(model.get_output_embeddings().weight.shape[0])
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
        encoded, opts = self._prepare(prompts, tools, options)
        request = self._scheduler.submit(
            Request(len(prompts), (opts, constraint), (encoded, opts, constraint))
        )
        _, results = request.wait()
        return list(results)

    def stream(
        self,
        prompt: Prompt,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        constraint: Constraint | None = None,
        **options: Any,
    ) -> Iterator[StreamChunk]:
        """Stream one prompt's text as it becomes safe to show (stop strings held back)."""
        encoded, opts = self._prepare([prompt], tools, options)
        request = self._scheduler.submit(
            Request(1, (opts, constraint), (encoded, opts, constraint), stream=True)
        )
        try:
            while True:
                kind, value = request.wait()
                if kind == "delta":
                    yield StreamChunk(text=value)
                else:
                    delta, result = value
                    yield StreamChunk(text=delta, finish_reason=result.finish_reason, result=result)
                    return
        finally:
            request.cancelled = True  # a consumer that stops reading stops the decoding too

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

    def _run_group(self, group: list[Request]) -> None:
        """Decode a batch of compatible requests as one, handing each its rows' text."""
        opts, constraint = group[0].payload[1], group[0].payload[2]
        self.stats["requests"] += len(group)
        self.stats["batches"] += 1
        encoded = [[p for r in group for p in r.payload[0][i]] for i in range(len(self.members))]
        spans, start = [], 0
        for r in group:
            spans.append(range(start, start + r.n_rows))
            start += r.n_rows
        rows: list[RowState] = []
        for rows in decode(self._ens, encoded, opts, constraint):
            for r, span in zip(group, spans):
                if r.stream and not r.cancelled and (delta := rows[span[0]].text.take_delta()):
                    r.events.put(("delta", delta))
            if all(r.cancelled for r in group):
                return
        for r, span in zip(group, spans):
            results = [self._result(rows[i], [len(e[i]) for e in encoded]) for i in span]
            if r.stream:
                r.events.put(("done", (rows[span[0]].text.take_delta(final=True), results[0])))
            else:
                r.events.put(("done", results))

    def _result(self, row: RowState, n_in: list[int]) -> GenerationResult:
        names = self.member_names
        n = max(len(row.steps), 1)
        tokens = []
        wins = dict.fromkeys(names, 0)
        proposed = dict.fromkeys(names, 0)
        for gid, own, prob, _ in row.steps:
            winner = names[max(range(len(names)), key=lambda i: (prob[i], -i))]
            wins[winner] += 1
            for name, o in zip(names, own):
                proposed[name] += o >= 0
            tokens.append(
                TokenProvenance(
                    text=self._ens.strings[gid].decode("utf-8", errors="replace"),
                    proposers=[nm for nm, o in zip(names, own) if o >= 0],
                    probs=dict(zip(names, prob)),
                    winner=winner,
                )
            )
        provenance = Provenance(
            members=names,
            tokens=tokens,
            agreement_rate=row.agreed / max(row.decisions, 1),
            win_share={k: v / n for k, v in wins.items()},
            proposal_share={k: v / n for k, v in proposed.items()},
        )
        text = row.text.text.encode()
        out_ids = {m.name: len(m.vocab.encode(text)) if text else 0 for m in self._ens.members}
        usage = Usage(
            input_tokens=n_in[0],
            output_tokens=len(row.steps),
            input_tokens_per_member=dict(zip(names, n_in)),
            output_tokens_per_member=out_ids,
        )
        reason = row.finish_reason if row.finish_reason in ("stop", "length") else "length"
        return GenerationResult(
            text=row.text.text,
            finish_reason=reason,  # type: ignore[arg-type]
            usage=usage,
            provenance=provenance,
        )


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
