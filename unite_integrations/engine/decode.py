"""The decode loop: prefill, then one union step and one feed-back per generated string.

Everything here is host-side bookkeeping around two calls: ``union_step`` (pure tensors) and
``MemberBatch.advance`` (one forward pass per member). The only device->host transfer per step is
the small ``StepResult``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import torch

from .config import GenerationOptions
from .constraints import ByteMatcher, Constraint
from .members import LoadedMember
from .sequences import MemberBatch, Update
from .text import RowText
from .union import StepPlan, StepResult, Union, decide, extend_logits, propose
from .vocab import END, Vocab

__all__ = ["Ensemble", "Picks", "RowState", "decode", "retokenize_tail"]


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


@dataclass
class RowState:
    text: RowText
    finish_reason: str | None = None
    # One entry per chosen string: (gid, own_col per member, prob per member, agree).
    steps: list[tuple[int, list[int], list[float], bool]] = field(default_factory=list)
    decisions: int = 0  # union decisions taken, the final END included
    agreed: int = 0  # of which every member's own top-1 was the same string


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
    ens: Ensemble, i: int, batch: MemberBatch, r: int, src: int, col: int, own: int, piece: bytes
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


def decode(
    ens: Ensemble,
    prompts: list[list[list[int]]],
    opts: GenerationOptions,
    constraint: Constraint | None = None,
) -> Iterator[list[RowState]]:
    """Yield the rows after every step; ``prompts[i][r]`` is member i's ids for row r."""
    batches = [MemberBatch(m.model, p, m.pad_id) for m, p in zip(ens.members, prompts)]
    _run(ens, [b.prefill for b in batches])
    rows = [RowState(RowText(opts.stop)) for _ in prompts[0]]
    matchers = [ByteMatcher(constraint) for _ in rows] if constraint else None
    gen = None
    if opts.temperature > 0:
        gen = torch.Generator(device=ens.plan.weights.device)
        gen.manual_seed(opts.seed if opts.seed is not None else torch.seed())
    for step in range(opts.max_new_tokens):
        # 1-7. Every member's logits -> one choice per row (pure tensor code).
        ext = [extend_logits(b.next_logits(), e) for b, e in zip(batches, ens.plan.end_ids)]
        if step < opts.min_new_tokens:
            for z in ext:
                z[:, -1] = float("-inf")  # END may not win yet
        union = propose(ext, ens.plan)
        allowed = _grammar_mask(ens, union, matchers, rows) if matchers else None
        picks = Picks.of(decide(union, ens.plan, opts.temperature, opts.top_p, gen, allowed))
        if matchers and allowed is not None:
            closing = opts.max_new_tokens - step <= CLOSING_STEPS
            _grammar_fallbacks(ens, batches, matchers, rows, allowed, picks, closing)
        # 8. Each row takes its string; every member learns which ids to feed back.
        last = step == opts.max_new_tokens - 1
        updates: list[list[Update]] = [[None] * len(rows) for _ in batches]
        for r, row in enumerate(rows):
            if row.finish_reason is None:
                matcher = matchers[r] if matchers else None
                for i, u in enumerate(_take(ens, batches, row, r, picks, matcher, last)):
                    updates[i][r] = u
        yield rows
        # 9. Stop when every row is done; otherwise one forward per member over the new ids.
        if all(row.finish_reason is not None for row in rows):
            return
        _run(ens, [partial(b.advance, u) for b, u in zip(batches, updates)])
        if ens.check_invariants:
            _check(ens, batches, rows)


#: Steps before the budget ends from which a constrained row closes its structure.
CLOSING_STEPS = 32
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
    ens: Ensemble,
    batches: list[MemberBatch],
    row: RowState,
    r: int,
    picks: Picks,
    matcher: ByteMatcher | None,
    last: bool,
) -> list[Update]:
    """Row r takes its chosen string; returns each member's update, [] once the row is done."""
    row.decisions += 1
    row.agreed += picks.agree[r]
    if picks.gid[r] == END:
        row.finish_reason = "stop"
        return []
    piece = ens.strings[picks.gid[r]]
    row.steps.append((picks.gid[r], picks.own[r], picks.prob[r], picks.agree[r]))
    if matcher is not None:
        matcher.consume(piece)
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


def _grammar_mask(
    ens: Ensemble, union: Union, matchers: list[ByteMatcher], rows: list[RowState]
) -> torch.Tensor:
    """[B, C] True where the slot's string keeps the row's text completable by its grammar."""
    gids, valid = union.gid.tolist(), union.valid.tolist()
    mask = [
        [
            row.finish_reason is not None or (ok and m.allows(ens.strings[g]))
            for g, ok in zip(row_gids, row_valid)
        ]
        for row_gids, row_valid, m, row in zip(gids, valid, matchers, rows)
    ]
    return torch.tensor(mask, device=union.gid.device)


def _grammar_fallbacks(
    ens: Ensemble,
    batches: list[MemberBatch],
    matchers: list[ByteMatcher],
    rows: list[RowState],
    allowed: torch.Tensor,
    picks: Picks,
    closing: bool,
) -> None:
    """Rows where no union string fits the grammar take a member's best allowed token; near
    the end of the budget (``closing``), every row takes the shortest way to a complete text."""
    none_fit = (~allowed).all(1).tolist()
    for r, row in enumerate(rows):
        if row.finish_reason is not None or not (none_fit[r] or closing):
            continue
        i, t = _closing_token(ens, matchers[r]) if closing else (-1, -1)
        if i < 0:
            i, t = _best_allowed(ens, batches, r, matchers[r])
        picks.src[r], picks.col[r] = i, t
        picks.gid[r] = int(ens.plan.gid[i][t])
        picks.own[r] = [t if j == i else -1 for j in range(len(batches))]
        picks.prob[r] = [0.0] * len(batches)
        picks.agree[r] = False


def _closing_token(ens: Ensemble, matcher: ByteMatcher) -> tuple[int, int]:
    """END where the grammar accepts; else the longest token of bytes the grammar forces; else
    the first allowed closing byte (quote, bracket, brace, a digit, a comma) as the primary's
    byte token; (-1, -1) if none is allowed."""
    vocab = ens.members[0].vocab
    if matcher.allows(b""):
        return 0, vocab.size
    forced = matcher.forced_bytes()
    for n in range(len(forced), 0, -1):  # the longest forced prefix some member has as a token
        for i, m in enumerate(ens.members):
            t = m.vocab.exact.get(forced[:n])
            if t is not None and float(ens.plan.bias[i][t]) == 0.0:
                return i, t
    allowed = set(matcher.allowed_bytes())
    for c in _CLOSERS:
        if c in allowed and vocab.byte_ids[c] >= 0:
            return 0, vocab.byte_ids[c]
    return -1, -1


def _best_allowed(
    ens: Ensemble, batches: list[MemberBatch], r: int, matcher: ByteMatcher
) -> tuple[int, int]:
    """(member, column): END where the grammar accepts; else the primary's (then the next
    member's) most likely allowed token among its top 256; else its most likely allowed byte."""
    if matcher.allows(b""):
        return 0, ens.members[0].vocab.size
    for i, b in enumerate(batches):
        z = b.next_logits()[r] + ens.plan.bias[i][:-1]
        for t in z.topk(min(256, z.numel())).indices.tolist():
            piece = ens.members[i].vocab.canon[t]
            if piece and matcher.allows(piece):
                return i, t
    vocab, z = ens.members[0].vocab, batches[0].next_logits()[r]
    options = [vocab.byte_ids[c] for c in matcher.allowed_bytes() if vocab.byte_ids[c] >= 0]
    if not options:
        raise AssertionError("the grammar allows no byte the primary member can spell")
    return 0, max(options, key=lambda t: float(z[t]))


def _check(ens: Ensemble, batches: list[MemberBatch], rows: list[RowState]) -> None:
    for m, b in zip(ens.members, batches):
        for r, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            held = m.vocab.bytes_of(b.ids[r][b.n_prompt[r] :])
            if held != bytes(row.text.raw):
                raise AssertionError(
                    f"member {m.name!r} row {r}: ids spell {held!r}, text is {bytes(row.text.raw)!r}"
                )
