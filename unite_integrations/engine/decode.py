"""One decode step over the rows in flight: a union decision per row, then one forward per member.

Gated ensembling (``GenerationOptions.gate``): a row whose primary member is confident takes the
primary's token alone; the other members run no forward for it and the text they have not seen
waits in ``Batch.updates`` (composed feed-back updates), to be consumed in one multi-token forward
(``Batch.catch_up``) at the row's next vote. A row without a gate votes every step and its
members take each string at the end of the step, as in full UniTE.

Rows join and leave between steps (continuous batching, driven by the engine's worker): ``Batch``
holds every member's backend and each row's own state and options (budget, temperature,
top-p, its own random generator, stop strings, grammar), index r everywhere. ``step`` is host-side
bookkeeping around ``gather_union``/``decide`` (each member's top-k and its logits at the union's
columns through its ``MemberBackend``, then pure tensors) and ``MemberBackend.advance`` (one
forward pass per member). The only device->host transfer per step is the small ``StepResult``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .backends import LocalMember, MemberBackend
from .config import GenerationOptions
from .constraints import ByteMatcher
from .members import LoadedMember
from .prefix import PrefixStore
from .results import FinishReason
from .sequences import MemberBatch, Update
from .text import RowText
from .union import (
    StepPlan,
    StepResult,
    Union,
    candidates,
    decide,
    merge_scores,
    mix,
    scoring_cols,
)
from .vocab import END, Vocab

__all__ = [
    "PREFILL_CHUNK",
    "Batch",
    "Ensemble",
    "Picks",
    "RowState",
    "closing_need",
    "gather_union",
    "prefill_chunk",
    "retokenize_tail",
    "step",
]


@dataclass
class Ensemble:
    """Loaded members plus the precomputed step plan; built once per engine."""

    members: list[LoadedMember]
    plan: StepPlan
    strings: list[bytes]  # gid -> bytes (gid 0, END, is b"")
    exact: list[list[torch.Tensor]]  # [j][i] bool [V_j + 1] on the CPU
    col_host: list[list[torch.Tensor]]  # [j][i] int64 [V_j + 1] on the CPU
    window: int
    pool: ThreadPoolExecutor | None = None  # set when members live on different devices
    check_invariants: bool = False
    usable: list[list[bool]] = field(default_factory=list)  # [i][t]: token t may be chosen
    #: Member i's stored prompt prefixes (``prefix_cache``), kept across batches; [] keeps none.
    stores: list[PrefixStore] = field(default_factory=list)
    #: Opens member i's backend for a new batch (default: in process, ``LocalMember``).
    open_member: Callable[[int], MemberBackend] | None = None
    alone: StepPlan = field(init=False)  # the primary member as a one-member ensemble
    longest: int = field(init=False)  # bytes of the longest token of any member

    def __post_init__(self) -> None:
        self.longest = max((len(b) for m in self.members for b in m.vocab.exact), default=1)
        p = self.plan
        self.alone = StepPlan(
            end_ids=p.end_ids[:1],
            bias=p.bias[:1],
            gid=p.gid[:1],
            col_map=[p.col_map[0][:1]],
            weights=torch.ones(1, device=p.weights.device),
            k=p.k,
        )

    def backend(self, i: int) -> MemberBackend:
        """A fresh, empty backend for member i."""
        if self.open_member is not None:
            return self.open_member(i)
        m = self.members[i]
        store = self.stores[i] if self.stores else None
        return LocalMember(
            MemberBatch(m.model, [], m.pad_id, store), self.plan.end_ids[i], self.plan.bias[i]
        )


@dataclass
class RowState:
    """One row in flight: its options, text, grammar state and random generator."""

    text: RowText
    opts: GenerationOptions = field(default_factory=GenerationOptions)
    matcher: ByteMatcher | None = None
    generator: torch.Generator | None = None  # a sampled row's own: same seed, same text
    n_in: list[int] = field(default_factory=list)  # prompt tokens per member
    finish_reason: FinishReason | None = None  # set once, when the row is done
    # One entry per chosen string: (gid, own_col per member, prob per member, agree, gated).
    steps: list[tuple[int, list[int], list[float], bool, bool]] = field(default_factory=list)
    decisions: int = 0  # decisions taken, the final END included
    voted: int = 0  # of which the members voted on (not gated)
    agreed: int = 0  # of which every member's own top-1 was the same string
    # Per chosen string (as ``steps``), when ``opts.top_logprobs``: the most likely strings of
    # the mixed distribution it was chosen from, (gid, probability), most likely first.
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    owner: Any = None  # what the worker reports this row to (a scheduler request)


#: Prompt ids each member runs per step for rows still being prefilled (chunked prefill): a long
#: prompt joins the batch with one id and runs the rest this many ids a step, the oldest row
#: first, beside the rows already decoding, so they and short newcomers never wait for it whole.
#: On a CPU a forward costs about its tokens past a few dozen, so a small chunk keeps a step
#: close to a decoding step at the same prefill throughput; a GPU needs large ones to be busy.
PREFILL_CHUNK = {"cpu": 64, "cuda": 512}


#: Chunks a step runs when every row is still being prefilled (nobody decodes, so nobody waits).
IDLE_CHUNKS = 4


def prefill_chunk(device: torch.device | str) -> int:
    """The default chunk for members whose first is on ``device`` (a GPU's for any but CPU)."""
    return PREFILL_CHUNK["cpu" if torch.device(device).type == "cpu" else "cuda"]


class Batch:
    """The rows in flight: each member's backend and each row's state, index r in all."""

    def __init__(self, ens: Ensemble, chunk: int = PREFILL_CHUNK["cpu"]) -> None:
        self.ens = ens
        self.chunk = chunk
        self.members = [ens.backend(i) for i in range(len(ens.members))]
        self.rows: list[RowState] = []
        # [i][r]: the ids member i has still to take for row r (the text it has not seen), set
        # by ``step``; the primary's and ungated rows' are taken by ``forward``, the others' by
        # ``catch_up`` when the row next votes.
        self.updates: list[list[Update]] = [[] for _ in ens.members]

    def add(self, prompts: list[list[list[int]]], rows: list[RowState]) -> None:
        """Prefill newcomers (``prompts[i][r]``: member i's ids for new row r) and join them.

        A prompt longer than ``chunk`` joins with its first id; the rest is pending, and
        ``forward`` runs it ``chunk`` ids a step (chunked prefill): the row decides nothing
        until every member that votes for it holds its whole prompt (``ready``).

        The members other than the primary prefill a row that may gate lazily: its first id now,
        the rest as pending ids of its first catch-up, so a row that never votes costs them one
        id instead of its prompt (a prefill-bound request at gate 0 costs the primary alone)."""
        if not rows:
            return
        lazy = [_may_gate(row) for row in rows]
        calls = []
        for i, (b, ps) in enumerate(zip(self.members, prompts)):
            now = [1 if (g and i) or len(p) > self.chunk else len(p) for g, p in zip(lazy, ps)]
            calls.append(partial(b.add_rows, ps, now))
        _run(self.ens, calls)
        for us, b, ps in zip(self.updates, self.members, prompts):  # a store may give more
            held = [len(ids) for ids in b.ids[len(b.ids) - len(ps) :]]
            us += [(n, p[n:]) if n < len(p) else None for n, p in zip(held, ps)]
        self.rows += rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (finished and cancelled rows leave)."""
        for b in self.members:
            b.keep_rows(keep)
        self.rows = [self.rows[r] for r in keep]
        self.updates = [[u[r] for r in keep] for u in self.updates]

    def cache_bytes(self) -> int:
        """Bytes of the in-process members' KV caches for the rows in flight (a remote
        member's live in its own process)."""
        return sum(b.batch.cache_bytes for b in self.members if isinstance(b, LocalMember))

    def ready(self) -> list[bool]:
        """[B] whether row r may decide: every member that votes for it holds its whole prompt
        (a row being prefilled in chunks waits; a gated row's other members may lag)."""
        return [
            self.updates[0][r] is None
            and (_may_gate(row) or all(us[r] is None for us in self.updates[1:]))
            for r, row in enumerate(self.rows)
        ]

    def forward(self) -> None:
        """One forward pass per member over the ids each row takes this step: the primary takes
        every row's, the others only those of rows without a gate (gated rows' wait). Rows
        being prefilled take their next chunk, at most ``chunk`` ids a member, oldest first."""
        if self.rows:
            eager = [not _may_gate(row) for row in self.rows]
            prompt = self.members[0].n_prompt
            waiting = [u is not None and u[0] < n for u, n in zip(self.updates[0], prompt)]
            # While no row decodes, no one waits on a step: a larger share goes at once.
            budget = self.chunk if not all(waiting) else IDLE_CHUNKS * self.chunk
            self._advance([[True] * len(eager)] + [eager] * (len(self.members) - 1), budget)

    def catch_up(self, vote: list[bool]) -> None:
        """The members other than the primary consume the pending text of the rows that vote
        (one multi-token forward each; a no-op where nothing is pending)."""
        if any(u is not None for us in self.updates[1:] for u in us):
            self._advance([[False] * len(vote)] + [vote] * (len(self.members) - 1))

    def _advance(self, take: list[list[bool]], budget: int | None = None) -> None:
        """Member i feeds row r its pending ids where ``take[i][r]``; they are then no longer
        pending. With a ``budget``, a member feeds at most that many ids of pending prompts
        (the ones the chunked prefill still owes) a step, in row order: the rest stays pending."""
        todo = [[u if t else None for u, t in zip(us, ts)] for us, ts in zip(self.updates, take)]
        rest = [[None if t else u for u, t in zip(us, ts)] for us, ts in zip(self.updates, take)]
        if budget is not None:
            for i, us in enumerate(todo):
                left = budget
                for r, u in enumerate(us):
                    if u is not None and len(u[1]) > 1 and u[0] < self.members[i].n_prompt[r]:
                        n = max(min(len(u[1]), left), 0)
                        left -= n
                        us[r] = (u[0], u[1][:n]) if n else None
                        if n < len(u[1]):
                            rest[i][r] = (u[0] + n, u[1][n:])
        _run(self.ens, [partial(b.advance, u) for b, u in zip(self.members, todo)])
        # Only now no longer pending: a forward that raised leaves them so, and ``held`` still
        # tells what each member should hold (an update is absolute: applying it twice is once).
        self.updates = rest
        if self.ens.check_invariants:
            _check(self.ens, self, self.rows)

    def held(self, i: int, r: int) -> list[int]:
        """Member i's ids for row r once its pending ids are taken (they spell the text)."""
        return _apply(self.members[i].ids[r], self.updates[i][r])

    def state(self, rows: Sequence[int]) -> tuple[list[list[list[int]]], list[list[int]]]:
        """What ``restore`` takes to rebuild ``rows`` elsewhere: ``held[i][r]`` and
        ``n_prompt[i][r]``, member by member."""
        held = [[self.held(i, r) for r in rows] for i in range(len(self.members))]
        return held, [[b.n_prompt[r] for r in rows] for b in self.members]

    def restore(
        self, rows: list[RowState], held: list[list[list[int]]], n_prompt: list[list[int]]
    ) -> None:
        """Rows of another batch join this one whole: member i prefills ``held[i][r]`` (what
        it held for row r there, its pending ids taken), of which ``n_prompt[i][r]`` are the
        prompt. The engine rebuilds a batch so after a step failed."""
        _run(self.ens, [partial(b.add_rows, hs) for b, hs in zip(self.members, held)])
        for b, ns in zip(self.members, n_prompt):
            b.n_prompt[len(b.n_prompt) - len(ns) :] = ns
        for us in self.updates:
            us += [None] * len(rows)
        self.rows += rows

    def consistent(self, r: int) -> bool:
        """Whether every member's ids for row r, its pending ids taken, spell the row's text
        (a step that raised half-way through a row leaves it otherwise)."""
        text = bytes(self.rows[r].text.raw)
        return all(
            m.vocab.bytes_of(self.held(i, r)[b.n_prompt[r] :]) == text
            for i, (m, b) in enumerate(zip(self.ens.members, self.members))
        )


def _apply(ids: list[int], u: Update) -> list[int]:
    return ids if u is None else ids[: u[0]] + u[1]


def _then(u: Update, v: Update) -> Update:
    """The update doing ``u`` then ``v`` (``v`` is relative to the ids after ``u``)."""
    if u is None or v is None:
        return v if u is None else u
    (keep, new), (keep2, new2) = u, v
    return (keep, new[: keep2 - keep] + new2) if keep2 >= keep else v


def retokenize_tail(
    vocab: Vocab, ids: list[int], n_prompt: int, piece: bytes, window: int
) -> tuple[int, list[int]]:
    """Case (b): the member cannot append ``piece`` as one token.

    Re-tokenize the text of the last ``window`` generated ids plus ``piece`` and keep the ids that
    did not change; return (ids kept, ids to append). The window starts on a character boundary.
    """
    start = max(n_prompt, len(ids) - window)
    while start > n_prompt and (vocab.canon[ids[start]] or b"\x00")[0] & 0xC0 == 0x80:
        start -= 1
    tail = vocab.encode(vocab.bytes_of(ids[start:]) + piece)
    same = 0
    for old, new in zip(ids[start:], tail):
        if old != new:
            break
        same += 1
    return start + same, tail[same:]


def _feed_back(
    ens: Ensemble, i: int, ids: list[int], n_prompt: int, src: int, col: int, own: int, piece: bytes
) -> Update:
    if own >= 0:  # (a) the member proposed this string itself: append its own id
        return len(ids), [own]
    if ens.exact[src][i][col]:  # (a) the string is one token of this member
        return len(ids), [int(ens.col_host[src][i][col])]
    return retokenize_tail(ens.members[i].vocab, ids, n_prompt, piece, ens.window)


def _run(ens: Ensemble, calls: Sequence[Callable[[], None]]) -> None:
    if ens.pool is None or len(calls) == 1:
        for c in calls:
            c()
    else:  # members on different devices: forward passes overlap, a step costs the slowest
        for f in [ens.pool.submit(c) for c in calls]:
            f.result()


def step(ens: Ensemble, batch: Batch) -> bool:
    """Steps 1-8 for every row in flight that is ``ready`` (not still being prefilled):
    candidates -> one choice per row (the union's, or the primary's alone where it is
    confident) -> each row takes its string and every member learns which ids to feed back
    (``batch.updates``). False when no row could decide."""
    rows, home = batch.rows, ens.plan.weights.device
    ready = batch.ready()  # [B], host
    if not any(ready):
        return False
    early = [row.decisions < row.opts.min_new_tokens for row in rows]
    ban = torch.tensor(early) if any(early) else None  # [B]: END may not win yet
    gates = _gates(rows)  # [B], None where no row may gate
    first = batch.members[0].top(ens.plan.k, ban) if gates else None  # the primary's, once
    alone = gather_union(batch.members[:1], ens.alone, ban, None, first) if first else None
    vote = _votes(ens, alone, gates) if alone and gates else [True] * len(rows)  # [B], host
    vote = [v and ok for v, ok in zip(vote, ready)]
    batch.catch_up(vote)  # the other members only: the primary's top-k stays valid
    draws = _draws(rows, home, ready)  # [B]: one per ready row and step, whoever decides
    top_n = max(row.opts.top_logprobs for row in rows)  # 0: nothing more leaves the device
    sel = [r for r, v in enumerate(vote) if v]  # the voting rows, B' of them
    picks, none_fit = _voted(ens, batch, ban, sel, draws, top_n, first)
    if len(sel) < len(rows):  # gated rows take the primary's own choice
        if alone:
            res = decide(alone, ens.alone, *_sampling(rows, home, draws), top_n=top_n)
            mine = Picks.alone(res, len(ens.members))
        else:  # only rows being prefilled are left out: they take nothing
            mine = Picks.none(len(rows), len(ens.members))
        fit = [False] * len(rows)
        for n, r in enumerate(sel):
            mine.put(r, picks, n)
            fit[r] = none_fit[n]
        picks, none_fit = mine, fit
    if any(row.matcher for row in rows):  # only voting rows have one
        _grammar_fallbacks(ens, batch.members, rows, none_fit, picks, ready)
    for r, row in enumerate(rows):
        if ready[r]:
            for i, u in enumerate(_take(ens, batch, row, r, picks)):
                batch.updates[i][r] = _then(batch.updates[i][r], u)
    return True


Top = tuple[torch.Tensor, torch.Tensor]  # a member's (values, columns), [B, k] each


def gather_union(
    members: Sequence[MemberBackend],
    plan: StepPlan,
    ban_end: torch.Tensor | None,
    rows: list[int] | None = None,
    first: Top | None = None,
) -> Union:
    """Steps 1-4 through the backends: each member's top-k, the union, each member's logits at
    the union's columns. Only [B, k] and [B, C] numbers leave a member; ``ban_end`` [B] bool
    rows may not choose END (``min_new_tokens``). With ``rows`` (B' indices), only those rows:
    the members compute nothing for the others. ``first``: the first member's top-k of every
    row, already taken this step (its ``rows`` are picked from it, not computed again)."""
    idx = None if rows is None else torch.tensor(rows)
    ban = ban_end if ban_end is None or idx is None else ban_end.index_select(0, idx)
    tops: list[Top] = []
    for i, b in enumerate(members):
        if i == 0 and first is not None:
            tops.append(first if idx is None else _rows(first, idx))
        else:
            tops.append(b.top(plan.k, ban, rows))  # [B', k] each
    top_val, top_col = [v for v, _ in tops], [c for _, c in tops]
    gid, valid = candidates(top_val, top_col, plan)  # [B', C]
    cols = scoring_cols(top_col, plan)  # [N] [B', C]
    scored = [  # [N] [B', C]; the first member's last top-k was of every row
        b.gather(c, rows if i == 0 and first is not None else None)
        for i, (b, c) in enumerate(zip(members, cols))
    ]
    return Union(gid, valid, merge_scores(scored, gid, plan), top_col)


def _rows(top: Top, idx: torch.Tensor) -> Top:
    val, col = top
    return val.index_select(0, idx.to(val.device)), col.index_select(0, idx.to(col.device))


def _voted(
    ens: Ensemble,
    batch: Batch,
    ban: torch.Tensor | None,
    sel: list[int],
    draws: torch.Tensor,
    top_n: int = 0,
    first: Top | None = None,
) -> tuple[Picks, list[bool]]:
    """The union's choice for rows ``sel`` (B' of them) and, per such row, whether no union
    string fits its grammar. Only those rows' top-k, union and scores are computed (a gated
    row's are not); ``first``: the primary's top-k of every row, when already taken."""
    if not sel:
        return Picks([], [], [], [], [], []), []
    rows, home = [batch.rows[r] for r in sel], ens.plan.weights.device
    subset = sel if len(sel) < len(batch.rows) else None
    union = gather_union(batch.members, ens.plan, ban, subset, first)  # [N, B', C]
    allowed = _grammar_mask(ens, union, rows) if any(r.matcher for r in rows) else None
    idx = torch.tensor(sel, device=draws.device)
    res = decide(
        union, ens.plan, *_sampling(rows, home, draws.index_select(0, idx)), allowed, top_n
    )
    return Picks.of(res), [False] * len(sel) if allowed is None else (~allowed).all(1).tolist()


def _sampling(
    rows: list[RowState], home: torch.device, draws: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(temperature, top_p, draws), [B] each, for ``decide``."""
    temperature = torch.tensor([r.opts.temperature for r in rows], device=home)
    return temperature, torch.tensor([r.opts.top_p for r in rows], device=home), draws


def _gates(rows: list[RowState]) -> list[float] | None:
    """[B] each row's gate (2.0: never gates: no gate, gate 1, or a grammar); None if no row
    may gate, so that full UniTE costs no extra work or host transfer."""
    gates = [r.opts.gate if _may_gate(r) and r.opts.gate is not None else 2.0 for r in rows]
    return None if all(g > 1 for g in gates) else gates


def _may_gate(row: RowState) -> bool:
    """Whether the row can ever take the primary's token alone (a gate below 1, no grammar)."""
    return row.opts.gate is not None and row.opts.gate < 1 and row.matcher is None


def _votes(ens: Ensemble, alone: Union, gates: list[float]) -> list[bool]:
    """[B]: False where the row gates: the primary's top-1 probability over its own candidates
    (softmax at temperature 1 over its top-k, after the candidate rules) is >= its gate."""
    ones = torch.ones(len(gates), device=alone.gid.device)
    p, _ = mix(alone.scores, alone.valid, ens.alone.weights, ones)  # [B, k]
    return (p.amax(-1) < torch.tensor(gates, device=p.device)).tolist()  # type: ignore[no-any-return]


def _draws(rows: list[RowState], device: torch.device, ready: list[bool]) -> torch.Tensor:
    """[B] one uniform draw per sampled ready row from its own generator (0 for greedy rows
    and rows still being prefilled: a row's draws do not depend on how its prompt ran)."""
    drawn = [r.generator if ok else None for r, ok in zip(rows, ready)]
    if all(g is None for g in drawn):
        return torch.zeros(len(rows), device=device)
    zero = torch.zeros((), device=device)
    return torch.stack(
        [torch.rand((), generator=g, device=device) if g is not None else zero for g in drawn]
    )


#: Steps kept in hand beyond what the closing rule needs when deciding to close. The look-ahead of
#: ``closing_need`` follows the very tokens the rule will pick, so no step is needed in hand; a
#: larger margin closes earlier (and takes steps from the model's own arguments).
CLOSING_MARGIN = 0
_CLOSERS = b'"}],0'


@dataclass
class Picks:
    """One step's choices on the host, per row (``own``/``prob``: per row, per member)."""

    src: list[int]
    col: list[int]
    gid: list[int]
    agree: list[bool]
    own: list[list[int]]
    prob: list[list[float]]
    gated: list[bool] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # [] unless asked

    @classmethod
    def of(cls, res: StepResult) -> Picks:
        """The one device-to-host transfer of a step."""
        top = []
        if res.top_gid is not None and res.top_prob is not None:
            pairs = zip(res.top_gid.tolist(), res.top_prob.tolist())
            top = [[(g, q) for g, q in zip(gs, qs) if g >= 0] for gs, qs in pairs]
        return cls(
            res.src.tolist(),
            res.col.tolist(),
            res.gid.tolist(),
            res.agree.tolist(),
            res.own_col.T.tolist(),
            res.prob.T.tolist(),
            [False] * len(res.src),
            top,
        )

    @classmethod
    def alone(cls, res: StepResult, n: int) -> Picks:
        """The primary's own decisions (a one-member ``StepResult``) as gated picks of an
        n-member ensemble: the others proposed nothing and gave no probability."""
        p = cls.of(res)
        rest = n - 1
        own = [o + [-1] * rest for o in p.own]
        prob = [q + [0.0] * rest for q in p.prob]
        gated = [True] * len(p.src)
        return cls(p.src, p.col, p.gid, [False] * len(p.src), own, prob, gated, p.top)

    @classmethod
    def none(cls, b: int, n: int) -> Picks:
        """Placeholder picks for ``b`` rows of an n-member ensemble (rows that decide nothing
        this step; the deciding ones are ``put`` in)."""
        return cls(
            [0] * b, [0] * b, [END] * b, [False] * b, [[-1] * n] * b, [[0.0] * n] * b, [False] * b
        )

    def put(self, r: int, other: Picks, n: int) -> None:
        """Row r takes row n of ``other``'s picks (its top strings too, where ``other`` has
        them: placeholder picks have none of their own)."""
        if other.top and not self.top:
            self.top = [[] for _ in self.src]
        for f in ("src", "col", "gid", "agree", "own", "prob", "gated", "top"):
            if f != "top" or other.top:  # top: only when asked
                getattr(self, f)[r] = getattr(other, f)[n]


def _take(ens: Ensemble, batch: Batch, row: RowState, r: int, picks: Picks) -> list[Update]:
    """Row r takes its chosen string; returns each member's update after the ids it has still
    to take, [] once the row is done."""
    last = row.decisions == row.opts.max_new_tokens - 1
    row.decisions += 1
    row.voted += not picks.gated[r]
    row.agreed += picks.agree[r]
    if picks.gid[r] == END:
        row.finish_reason = "stop"
        return []
    piece = ens.strings[picks.gid[r]]
    row.steps.append((picks.gid[r], picks.own[r], picks.prob[r], picks.agree[r], picks.gated[r]))
    if row.opts.top_logprobs:
        row.top.append(picks.top[r][: row.opts.top_logprobs])
    if row.matcher is not None:
        row.matcher.consume(piece)
    if row.text.append(piece):
        row.finish_reason = "stop"
        return []
    if last:
        row.finish_reason = "length"
        return []
    held = [batch.held(i, r) for i in range(len(ens.members))]
    n_prompt = [b.n_prompt[r] for b in batch.members]
    updates = [
        _feed_back(ens, i, held[i], n_prompt[i], picks.src[r], picks.col[r], picks.own[r][i], piece)
        for i in range(len(ens.members))
    ]
    if any(
        u is not None and u[0] + len(u[1]) >= m.context_window for u, m in zip(updates, ens.members)
    ):
        row.finish_reason = "length"  # a member would pass its context window
        return []
    return updates


def _grammar_mask(ens: Ensemble, union: Union, rows: list[RowState]) -> torch.Tensor:
    """[B, C] True where the slot's string keeps the row's text completable by its grammar
    (every slot of a row without a grammar)."""
    gids, valid = union.gid.tolist(), union.valid.tolist()
    mask = [
        [
            row.matcher is None or (ok and row.matcher.allows(ens.strings[g]))
            for g, ok in zip(row_gids, row_valid)
        ]
        for row_gids, row_valid, row in zip(gids, valid, rows)
    ]
    return torch.tensor(mask, device=union.gid.device)


def _grammar_fallbacks(
    ens: Ensemble,
    batches: list[MemberBackend],
    rows: list[RowState],
    none_fit: list[bool],
    picks: Picks,
    ready: list[bool],
) -> None:
    """Rows where no union string fits the grammar take a member's best allowed token; a row
    whose pick would leave too few steps to complete its text closes instead (``closing_need``).
    Rows not ``ready`` (being prefilled) decide nothing and are left alone."""
    for r, row in enumerate(rows):
        if row.matcher is None or not ready[r]:
            continue
        if none_fit[r]:
            _override(ens, picks, r, *_best_allowed(ens, batches, r, row.matcher))
        # Steps left, this one included: the budget's, or fewer where a member's context
        # window comes first (a step takes at least one id; grammar rows never gate, so no
        # member has ids pending).
        room = min(m.context_window - len(b.ids[r]) for m, b in zip(ens.members, batches))
        left = min(row.opts.max_new_tokens - row.decisions, room)
        piece = ens.strings[picks.gid[r]]
        if (
            picks.gid[r] != END
            and closing_need(ens, row.matcher, piece, left) + CLOSING_MARGIN >= left
        ):
            i, t = _closing_token(ens, row.matcher)
            if i < 0:
                i, t = _best_allowed(ens, batches, r, row.matcher)
            _override(ens, picks, r, i, t)


def _override(ens: Ensemble, picks: Picks, r: int, i: int, t: int) -> None:
    """Row r takes member i's token t instead of the union's choice."""
    n = len(ens.members)
    picks.src[r], picks.col[r] = i, t
    picks.gid[r] = int(ens.plan.gid[i][t])
    picks.own[r] = [t if j == i else -1 for j in range(n)]
    picks.prob[r] = [0.0] * n
    picks.agree[r] = False


def closing_need(ens: Ensemble, matcher: ByteMatcher, piece: bytes, limit: int) -> int:
    """Steps the closing rule takes to end the text (END included) after ``piece``, at most
    ``limit``.

    The closing rule (``_closing_token``) is deterministic in the grammar state, so following it
    on a copy of the matcher counts exactly the steps a row needs to finish well-formed; a row may
    write freely while its budget holds that many steps (plus ``CLOSING_MARGIN``).
    """
    m = matcher.copy()
    m.consume(piece)
    n = 0
    while n < limit:
        # Along a forced run longer than any token, the rule takes the run's longest token
        # prefix (``_forced_token``): walked on the bytes, consumed in one call. The same
        # steps as one rule call each, at a cost linear in the run (a 3,000-byte property
        # name cost 3 s a step before).
        forced, pos = m.forced_bytes(), 0
        while n < limit and len(forced) - pos >= ens.longest:
            _, _, k = _forced_token(ens, forced[pos : pos + ens.longest])
            if not k:
                break
            pos, n = pos + k, n + 1
        if pos:
            m.consume(forced[:pos])
            continue
        i, t = _closing_token(ens, m)
        if i < 0:
            return limit  # no deterministic way to close from here: close now
        if t == ens.members[i].vocab.size:  # END
            return n + 1
        m.consume(ens.members[i].vocab.canon[t] or b"")
        n += 1
    return limit


def _closing_token(ens: Ensemble, matcher: ByteMatcher) -> tuple[int, int]:
    """The closing rule, a function of the grammar state only: END where the grammar accepts;
    else the longest token of bytes the grammar forces; else the first allowed closing byte
    (quote, bracket, brace, a digit, a comma) as the primary's byte token; else
    ``ByteMatcher.finishing_byte``; (-1, -1) if the grammar allows nothing."""
    vocab = ens.members[0].vocab
    if matcher.allows(b""):
        return 0, vocab.size
    i, t, n = _forced_token(ens, matcher.forced_bytes()[: ens.longest])
    if n:
        return i, t
    for c in _CLOSERS:
        if vocab.byte_ids[c] >= 0 and matcher.allows(bytes([c])):
            return 0, vocab.byte_ids[c]
    last = matcher.finishing_byte([t >= 0 and ens.usable[0][t] for t in vocab.byte_ids])
    return (0, vocab.byte_ids[last]) if last is not None else (-1, -1)


def _forced_token(ens: Ensemble, forced: bytes) -> tuple[int, int, int]:
    """(member, token, bytes) of the longest prefix of ``forced`` that some member has as a
    usable token, the first such member; (-1, -1, 0) if none."""
    for n in range(len(forced), 0, -1):
        for i, m in enumerate(ens.members):
            t = m.vocab.exact.get(forced[:n])
            if t is not None and ens.usable[i][t]:
                return i, t, n
    return -1, -1, 0


def _best_allowed(
    ens: Ensemble, batches: list[MemberBackend], r: int, matcher: ByteMatcher
) -> tuple[int, int]:
    """(member, column): END where the grammar accepts; else the primary's (then the next
    member's) most likely allowed token among its top 256; else its most likely allowed byte."""
    if matcher.allows(b""):
        return 0, ens.members[0].vocab.size
    for i, b in enumerate(batches):
        for t in b.candidates(r, 256):
            piece = ens.members[i].vocab.canon[t]
            if piece and matcher.allows(piece):
                return i, t
    vocab = ens.members[0].vocab
    options = [vocab.byte_ids[c] for c in matcher.allowed_bytes() if vocab.byte_ids[c] >= 0]
    if not options:
        raise AssertionError("the grammar allows no byte the primary member can spell")
    z = dict(zip(options, batches[0].logits_at(r, options)))
    return 0, max(options, key=lambda t: z[t])


def _check(ens: Ensemble, batch: Batch, rows: list[RowState]) -> None:
    """Every member's ids, once its pending ids are taken, spell the row's text."""
    for i, (m, b) in enumerate(zip(ens.members, batch.members)):
        for r, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            held = m.vocab.bytes_of(batch.held(i, r)[b.n_prompt[r] :])
            if held != bytes(row.text.raw):
                raise AssertionError(
                    f"member {m.name!r} row {r}: ids spell {held!r}, text is {bytes(row.text.raw)!r}"
                )
