"""A finished row as the caller sees it: its ``GenerationResult``, with each token's provenance,
its top log-probabilities and every member's token counts, read from the row's ``StepRecord``s."""

from __future__ import annotations

import functools
import math

from .batch import Ensemble, RowState
from .picks import StepRecord
from .results import Candidate, GenerationResult, Provenance, TokenProvenance, Usage
from .vocab import END

__all__ = ["RowResults"]


class RowResults:
    """Builds the results of an ensemble's finished rows (one per engine)."""

    def __init__(self, ens: Ensemble, weights: list[float]) -> None:
        self.ens, self.weights = ens, weights
        self.names = [m.name for m in ens.members]

    def build(self, row: RowState) -> GenerationResult:
        """The result of a finished row."""
        assert row.finish_reason is not None, "a result is built for finished rows only"
        return GenerationResult(
            text=row.text.text,
            finish_reason=row.finish_reason,
            usage=self._usage(row),
            provenance=self._provenance(row),
        )

    def _provenance(self, row: RowState) -> Provenance:
        names = self.names
        n = max(len(row.steps), 1)
        wins = dict.fromkeys(names, 0)
        proposed = dict.fromkeys(names, 0)
        tokens = []
        for n_step, record in enumerate(row.steps):
            likeliest = row.likeliest[n_step] if row.likeliest else None
            token = self._token(record, likeliest)
            wins[token.winner] += 1
            for name in token.proposers:
                proposed[name] += 1
            tokens.append(token)
        return Provenance(
            members=names,
            tokens=tokens,
            agreement_rate=row.agreed / max(row.voted, 1),
            gated_share=(row.decisions - row.voted) / max(row.decisions, 1),
            win_share={k: v / n for k, v in wins.items()},
            proposal_share={k: v / n for k, v in proposed.items()},
        )

    def _token(
        self, record: StepRecord, likeliest: list[tuple[int, float]] | None
    ) -> TokenProvenance:
        """One chosen string's provenance; ``likeliest``: the step's most likely strings
        (``top_logprobs``; None when not asked)."""
        names, prob, gated = self.names, record.prob, record.gated
        winner = names[max(range(len(names)), key=lambda i: (prob[i], -i))]
        # The mixed probability it was chosen from (a gated row's: the primary's alone; 0
        # where a grammar overrode the union); where it is among the likeliest strings, the
        # device's own figure, so that the two agree exactly.
        p = prob[0] if gated else sum(w * q for w, q in zip(self.weights, prob))
        if p > 0:
            p = next((q for g, q in likeliest or [] if g == record.gid), p)
        data = self.ens.strings[record.gid]
        return TokenProvenance(
            text=data.decode("utf-8", errors="replace"),
            bytes=list(data),
            logprob=math.log(p) if p > 0 else None,
            top=[self._candidate(g, q) for g, q in likeliest] if likeliest is not None else None,
            proposers=[nm for nm, o in zip(names, record.own) if o >= 0],
            probs=dict(zip(names[:1] if gated else names, prob)),
            winner=winner,
            gated=gated,
        )

    def _usage(self, row: RowState) -> Usage:
        # Each member's tokens for the returned text; a member alone whose tokenizer cannot
        # spell every byte (WordPiece: its decoder's spaces do not tokenize back) counts the
        # tokens it generated instead.
        text = row.text.text.encode()
        n_steps = len(row.steps)
        out_ids = {
            m.name: (len(m.vocab.encode(text)) if m.vocab.byte_complete else n_steps) if text else 0
            for m in self.ens.members
        }
        return Usage(
            input_tokens=row.n_in[0],
            output_tokens=n_steps,
            input_tokens_per_member=dict(zip(self.names, row.n_in)),
            output_tokens_per_member=out_ids,
        )

    def _candidate(self, gid: int, p: float) -> Candidate:
        """A string of a step's mixed distribution (``top_logprobs``) as the results show it."""
        logprob = math.log(p) if p > 0 else -math.inf
        if gid == END:
            return Candidate(text=self._end_text, logprob=logprob, end=True)
        data = self.ens.strings[gid]
        return Candidate(
            text=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(data)
        )

    @functools.cached_property
    def _end_text(self) -> str:
        """How END shows among top log-probabilities: the primary's end-of-sequence token."""
        primary = self.ens.members[0]
        eos = getattr(primary.tokenizer, "eos_token", None)
        if isinstance(eos, str) and eos:
            return eos
        return str(primary.tokenizer.convert_ids_to_tokens(primary.vocab.end_ids[0]))
