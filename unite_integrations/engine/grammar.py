"""The grammar rules of a constrained row (``constraint``): which union strings it may choose,
what it takes when none fits, and when it must close.

A row with a grammar (``RowState.matcher``) chooses among the union's strings that keep its text
completable (``grammar_mask``); where none does, a member's best allowed token
(``best_allowed``); and once its budget holds no more than the steps the closing rule needs,
the closing rule's token (``closing_token``, counted by ``closing_need``), so that it ends
well-formed within ``max_new_tokens`` and every member's context window.
"""

from __future__ import annotations

import torch

from .backends import MemberBackend
from .batch import Ensemble, RowState
from .constraints import ByteMatcher
from .picks import Picks
from .union import CandidateUnion
from .vocab import END

__all__ = [
    "CLOSING_MARGIN",
    "best_allowed",
    "closing_need",
    "closing_token",
    "grammar_fallbacks",
    "grammar_mask",
]

#: Steps kept in hand beyond what the closing rule needs when deciding to close. The look-ahead of
#: ``closing_need`` follows the very tokens the rule will pick, so no step is needed in hand; a
#: larger margin closes earlier (and takes steps from the model's own arguments).
CLOSING_MARGIN = 0
_CLOSERS = b'"}],0'


def grammar_mask(ens: Ensemble, union: CandidateUnion, rows: list[RowState]) -> torch.Tensor:
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


def grammar_fallbacks(
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
            _override(ens, picks, r, *best_allowed(ens, batches, r, row.matcher))
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
            i, t = closing_token(ens, row.matcher)
            if i < 0:
                i, t = best_allowed(ens, batches, r, row.matcher)
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

    The closing rule (``closing_token``) is deterministic in the grammar state, so following it
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
        i, t = closing_token(ens, m)
        if i < 0:
            return limit  # no deterministic way to close from here: close now
        if t == ens.members[i].vocab.size:  # END
            return n + 1
        m.consume(ens.members[i].vocab.canon[t] or b"")
        n += 1
    return limit


def closing_token(ens: Ensemble, matcher: ByteMatcher) -> tuple[int, int]:
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


def best_allowed(
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
