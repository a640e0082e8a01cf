"""One decode step over the rows in flight: a union decision per row, then one forward per member.

Gated ensembling (``GenerationOptions.gate``): a row whose primary member is confident takes the
primary's token alone; the other members run no forward for it and the text they have not seen
waits in ``Batch.updates`` (composed feed-back updates), to be consumed in one multi-token forward
(``Batch.catch_up``) at the row's next vote. A row without a gate votes every step and its
members take each string at the end of the step, as in full UniTE.

Rows join and leave between steps (continuous batching, driven by the engine's worker): ``Batch``
(``batch``) holds every member's backend and each row's own state and options (budget,
temperature, top-p, its own random generator, stop strings, grammar), index r everywhere; a
grammar's rules live in ``grammar``. ``step`` is host-side
bookkeeping around ``gather_union``/``decide`` (each member's top-k and its logits at the union's
columns through its ``MemberBackend``, then pure tensors) and ``MemberBackend.advance`` (one
forward pass per member). The only device->host transfer per step is the small ``StepResult``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .backends import MemberBackend
from .batch import Batch, Ensemble, RowState, gate_of
from .grammar import grammar_fallbacks, grammar_mask
from .picks import Picks
from .sequences import Update, compose_updates
from .union import CandidateUnion, StepPlan, candidates, decide, merge_scores, mix, scoring_cols
from .vocab import END, Vocab

__all__ = ["gather_union", "retokenize_tail", "step"]


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
    vote = _needs_vote(ens, alone, gates) if alone and gates else [True] * len(rows)  # [B], host
    vote = [v and ok for v, ok in zip(vote, ready)]
    batch.catch_up(vote)  # the other members only: the primary's top-k stays valid
    draws = _draws(rows, home, ready)  # [B]: one per ready row and step, whoever decides
    top_n = max(row.opts.top_logprobs for row in rows)  # 0: nothing more leaves the device
    sel = [r for r, v in enumerate(vote) if v]  # the voting rows, B' of them
    picks, none_fit = _union_picks(ens, batch, ban, sel, draws, top_n, first)
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
        grammar_fallbacks(ens, batch.members, rows, none_fit, picks, ready)
    for r, row in enumerate(rows):
        if ready[r]:
            for i, u in enumerate(_take_choice(ens, batch, row, r, picks)):
                batch.updates[i][r] = compose_updates(batch.updates[i][r], u)
    return True


TopK = tuple[torch.Tensor, torch.Tensor]  # a member's (values, columns), [B, k] each


def gather_union(
    members: Sequence[MemberBackend],
    plan: StepPlan,
    ban_end: torch.Tensor | None,
    rows: list[int] | None = None,
    first: TopK | None = None,
) -> CandidateUnion:
    """Steps 1-4 through the backends: each member's top-k, the union, each member's logits at
    the union's columns. Only [B, k] and [B, C] numbers leave a member; ``ban_end`` [B] bool
    rows may not choose END (``min_new_tokens``). With ``rows`` (B' indices), only those rows:
    the members compute nothing for the others. ``first``: the first member's top-k of every
    row, already taken this step (its ``rows`` are picked from it, not computed again)."""
    idx = None if rows is None else torch.tensor(rows)
    ban = ban_end if ban_end is None or idx is None else ban_end.index_select(0, idx)
    tops: list[TopK] = []
    for i, b in enumerate(members):
        if i == 0 and first is not None:
            tops.append(first if idx is None else _top_of_rows(first, idx))
        else:
            tops.append(b.top(plan.k, ban, rows))  # [B', k] each
    top_val, top_col = [v for v, _ in tops], [c for _, c in tops]
    gid, valid = candidates(top_val, top_col, plan)  # [B', C]
    cols = scoring_cols(top_col, plan)  # [N] [B', C]
    scored = [  # [N] [B', C]; the first member's last top-k was of every row
        b.gather(c, rows if i == 0 and first is not None else None)
        for i, (b, c) in enumerate(zip(members, cols))
    ]
    return CandidateUnion(gid, valid, merge_scores(scored, gid, plan), top_col)


def _top_of_rows(top: TopK, idx: torch.Tensor) -> TopK:
    """[B, k] each -> [B', k] each: rows ``idx`` of a member's top-k."""
    val, col = top
    return val.index_select(0, idx.to(val.device)), col.index_select(0, idx.to(col.device))


def _union_picks(
    ens: Ensemble,
    batch: Batch,
    ban: torch.Tensor | None,
    sel: list[int],
    draws: torch.Tensor,
    top_n: int = 0,
    first: TopK | None = None,
) -> tuple[Picks, list[bool]]:
    """The union's choice for rows ``sel`` (B' of them) and, per such row, whether no union
    string fits its grammar. Only those rows' top-k, union and scores are computed (a gated
    row's are not); ``first``: the primary's top-k of every row, when already taken."""
    if not sel:
        return Picks([], [], [], [], [], []), []
    rows, home = [batch.rows[r] for r in sel], ens.plan.weights.device
    subset = sel if len(sel) < len(batch.rows) else None
    union = gather_union(batch.members, ens.plan, ban, subset, first)  # [N, B', C]
    allowed = grammar_mask(ens, union, rows) if any(r.matcher for r in rows) else None
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
    gates = [g if (g := gate_of(r)) is not None else 2.0 for r in rows]
    return None if all(g > 1 for g in gates) else gates


def _needs_vote(ens: Ensemble, alone: CandidateUnion, gates: list[float]) -> list[bool]:
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


def _take_choice(ens: Ensemble, batch: Batch, row: RowState, r: int, picks: Picks) -> list[Update]:
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
    row.steps.append(picks.record(r))
    if row.opts.top_logprobs:
        row.likeliest.append(picks.likeliest[r][: row.opts.top_logprobs])
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
    """Member i's update for the chosen ``piece`` (step 8): its own id where it proposed the
    string or has it as one token, else its re-tokenized tail (``retokenize_tail``)."""
    if own >= 0:  # (a) the member proposed this string itself: append its own id
        return len(ids), [own]
    if ens.exact[src][i][col]:  # (a) the string is one token of this member
        return len(ids), [int(ens.col_host[src][i][col])]
    return retokenize_tail(ens.members[i].vocab, ids, n_prompt, piece, ens.window)
