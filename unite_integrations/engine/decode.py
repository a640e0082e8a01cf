"""One decode step over the rows in flight: a union decision per row, then one forward per member.

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
from .sequences import MemberBatch, Update
from .text import RowText
from .union import (
    StepPlan,
    StepResult,
    Union,
    candidates,
    decide,
    merge_scores,
    scoring_cols,
)
from .vocab import END, Vocab

__all__ = [
    "Batch",
    "Ensemble",
    "Picks",
    "RowState",
    "closing_need",
    "gather_union",
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
    #: Opens member i's backend for a new batch (default: in process, ``LocalMember``).
    open_member: Callable[[int], MemberBackend] | None = None

    def backend(self, i: int) -> MemberBackend:
        """A fresh, empty backend for member i."""
        if self.open_member is not None:
            return self.open_member(i)
        m = self.members[i]
        return LocalMember(
            MemberBatch(m.model, [], m.pad_id), self.plan.end_ids[i], self.plan.bias[i]
        )


@dataclass
class RowState:
    """One row in flight: its options, text, grammar state and random generator."""

    text: RowText
    opts: GenerationOptions = field(default_factory=GenerationOptions)
    matcher: ByteMatcher | None = None
    generator: torch.Generator | None = None  # a sampled row's own: same seed, same text
    n_in: list[int] = field(default_factory=list)  # prompt tokens per member
    finish_reason: str | None = None
    # One entry per chosen string: (gid, own_col per member, prob per member, agree).
    steps: list[tuple[int, list[int], list[float], bool]] = field(default_factory=list)
    decisions: int = 0  # union decisions taken, the final END included
    agreed: int = 0  # of which every member's own top-1 was the same string
    owner: Any = None  # what the worker reports this row to (a scheduler request)


class Batch:
    """The rows in flight: each member's backend and each row's state, index r in all."""

    def __init__(self, ens: Ensemble) -> None:
        self.ens = ens
        self.members = [ens.backend(i) for i in range(len(ens.members))]
        self.rows: list[RowState] = []
        self.updates: list[list[Update]] = [[] for _ in ens.members]  # [i][r], set by ``step``

    def add(self, prompts: list[list[list[int]]], rows: list[RowState]) -> None:
        """Prefill newcomers (``prompts[i][r]``: member i's ids for new row r) and join them."""
        if not rows:
            return
        _run(self.ens, [partial(b.add_rows, p) for b, p in zip(self.members, prompts)])
        self.rows += rows
        for u in self.updates:
            u += [None] * len(rows)

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (finished and cancelled rows leave)."""
        for b in self.members:
            b.keep_rows(keep)
        self.rows = [self.rows[r] for r in keep]
        self.updates = [[u[r] for r in keep] for u in self.updates]

    def forward(self) -> None:
        """One forward pass per member over the ids each row takes this step."""
        if self.rows:
            _run(self.ens, [partial(b.advance, u) for b, u in zip(self.members, self.updates)])
            if self.ens.check_invariants:
                _check(self.ens, self.members, self.rows)


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
    ens: Ensemble, i: int, batch: MemberBackend, r: int, src: int, col: int, own: int, piece: bytes
) -> Update:
    ids = batch.ids[r]
    if own >= 0:  # (a) the member proposed this string itself: append its own id
        return len(ids), [own]
    if ens.exact[src][i][col]:  # (a) the string is one token of this member
        return len(ids), [int(ens.col_host[src][i][col])]
    return retokenize_tail(ens.members[i].vocab, ids, batch.n_prompt[r], piece, ens.window)


def _run(ens: Ensemble, calls: Sequence[Callable[[], None]]) -> None:
    if ens.pool is None or len(calls) == 1:
        for c in calls:
            c()
    else:  # members on different devices: forward passes overlap, a step costs the slowest
        for f in [ens.pool.submit(c) for c in calls]:
            f.result()


def step(ens: Ensemble, batch: Batch) -> None:
    """Steps 1-8 for every row in flight: logits -> one union choice per row -> each row takes its
    string and every member learns which ids to feed back (``batch.updates``)."""
    rows, home = batch.rows, ens.plan.weights.device
    early = [row.decisions < row.opts.min_new_tokens for row in rows]
    union = gather_union(batch.members, ens.plan, torch.tensor(early) if any(early) else None)
    allowed = _grammar_mask(ens, union, rows) if any(r.matcher for r in rows) else None
    temperature = torch.tensor([r.opts.temperature for r in rows], device=home)
    top_p = torch.tensor([r.opts.top_p for r in rows], device=home)
    picks = Picks.of(decide(union, ens.plan, temperature, top_p, _draws(rows, home), allowed))
    if allowed is not None:
        _grammar_fallbacks(ens, batch.members, rows, allowed, picks)
    batch.updates = [[None] * len(rows) for _ in batch.members]
    for r, row in enumerate(rows):
        for i, u in enumerate(_take(ens, batch.members, row, r, picks)):
            batch.updates[i][r] = u


def gather_union(
    members: Sequence[MemberBackend], plan: StepPlan, ban_end: torch.Tensor | None
) -> Union:
    """Steps 1-4 through the backends: each member's top-k, the union, each member's logits at
    the union's columns. Only [B, k] and [B, C] numbers leave a member; ``ban_end`` [B] bool
    rows may not choose END (``min_new_tokens``)."""
    top_val, top_col = zip(*(b.top(plan.k, ban_end) for b in members))  # [N] [B, k] each
    gid, valid = candidates(list(top_val), list(top_col), plan)  # [B, C]
    cols = scoring_cols(list(top_col), plan)  # [N] [B, C]
    scored = [b.gather(c) for b, c in zip(members, cols)]  # [N] [B, C]
    return Union(gid, valid, merge_scores(scored, gid, plan), list(top_col))


def _draws(rows: list[RowState], device: torch.device) -> torch.Tensor:
    """[B] one uniform draw per sampled row from its own generator (0 for greedy rows)."""
    if all(r.generator is None for r in rows):
        return torch.zeros(len(rows), device=device)
    zero = torch.zeros((), device=device)
    return torch.stack(
        [
            torch.rand((), generator=r.generator, device=device) if r.generator else zero
            for r in rows
        ]
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

    @classmethod
    def of(cls, res: StepResult) -> Picks:
        """The one device-to-host transfer of a step."""
        return cls(
            res.src.tolist(),
            res.col.tolist(),
            res.gid.tolist(),
            res.agree.tolist(),
            res.own_col.T.tolist(),
            res.prob.T.tolist(),
        )


def _take(
    ens: Ensemble, batches: list[MemberBackend], row: RowState, r: int, picks: Picks
) -> list[Update]:
    """Row r takes its chosen string; returns each member's update, [] once the row is done."""
    last = row.decisions == row.opts.max_new_tokens - 1
    row.decisions += 1
    row.agreed += picks.agree[r]
    if picks.gid[r] == END:
        row.finish_reason = "stop"
        return []
    piece = ens.strings[picks.gid[r]]
    row.steps.append((picks.gid[r], picks.own[r], picks.prob[r], picks.agree[r]))
    if row.matcher is not None:
        row.matcher.consume(piece)
    if row.text.append(piece):
        row.finish_reason = "stop"
        return []
    if last:
        row.finish_reason = "length"
        return []
    updates = [
        _feed_back(ens, i, b, r, picks.src[r], picks.col[r], picks.own[r][i], piece)
        for i, b in enumerate(batches)
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
    allowed: torch.Tensor,
    picks: Picks,
) -> None:
    """Rows where no union string fits the grammar take a member's best allowed token; a row
    whose pick would leave too few steps to complete its text closes instead (``closing_need``)."""
    none_fit = (~allowed).all(1).tolist()
    for r, row in enumerate(rows):
        if row.matcher is None:
            continue
        if none_fit[r]:
            _override(ens, picks, r, *_best_allowed(ens, batches, r, row.matcher))
        left = row.opts.max_new_tokens - row.decisions  # steps left, this one included
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
    for n in range(limit):
        i, t = _closing_token(ens, m)
        if i < 0:
            return limit  # no deterministic way to close from here: close now
        if t == ens.members[i].vocab.size:  # END
            return n + 1
        m.consume(ens.members[i].vocab.canon[t] or b"")
    return limit


def _closing_token(ens: Ensemble, matcher: ByteMatcher) -> tuple[int, int]:
    """The closing rule, a function of the grammar state only: END where the grammar accepts;
    else the longest token of bytes the grammar forces; else the first allowed closing byte
    (quote, bracket, brace, a digit, a comma) as the primary's byte token; else
    ``ByteMatcher.finishing_byte``; (-1, -1) if the grammar allows nothing."""
    vocab = ens.members[0].vocab
    if matcher.allows(b""):
        return 0, vocab.size
    forced = matcher.forced_bytes()
    for n in range(len(forced), 0, -1):  # the longest forced prefix some member has as a token
        for i, m in enumerate(ens.members):
            t = m.vocab.exact.get(forced[:n])
            if t is not None and ens.usable[i][t]:
                return i, t
    for c in _CLOSERS:
        if vocab.byte_ids[c] >= 0 and matcher.allows(bytes([c])):
            return 0, vocab.byte_ids[c]
    last = matcher.finishing_byte([t >= 0 and ens.usable[0][t] for t in vocab.byte_ids])
    return (0, vocab.byte_ids[last]) if last is not None else (-1, -1)


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


def _check(ens: Ensemble, batches: list[MemberBackend], rows: list[RowState]) -> None:
    for m, b in zip(ens.members, batches):
        for r, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            held = m.vocab.bytes_of(b.ids[r][b.n_prompt[r] :])
            if held != bytes(row.text.raw):
                raise AssertionError(
                    f"member {m.name!r} row {r}: ids spell {held!r}, text is {bytes(row.text.raw)!r}"
                )
