"""The compatibility report: what ``check_compatibility`` returns (pydantic models).

The verdict rules are in :mod:`.rules`, the assembly of a report from numbers in
:mod:`.assemble`, the terminal rendering in :mod:`.render`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..engine.config import EnsembleConfig, MemberSpec, ensemble_config
from .rules import Thresholds, Verdict
from .stats import Interval, PairedComparison

__all__ = [
    "CompatibilityReport",
    "EnsembleScore",
    "MemberReport",
    "PairReport",
    "Recommendation",
    "Thresholds",
    "Verdict",
    "VocabularyFacts",
]


# -- report models ---------------------------------------------------------------------------------


class VocabularyFacts(BaseModel):
    """How two members' vocabularies relate (informative only: the paper finds size barely
    matters)."""

    members: tuple[str, str]
    vocab_sizes: tuple[int, int]
    same_tokenizer: bool
    words_compared: int = 0
    identical_word_share: float | None = Field(
        default=None,
        description="Share of common words (with a leading space) split into the same pieces.",
    )
    positions_compared: int = 0
    k: int = 10
    topk_overlap: float | None = Field(
        default=None,
        description="Mean share of top-k next-token strings the two members have in common, at "
        "text positions where both tokenizations have a boundary.",
    )
    top1_agreement: float | None = Field(
        default=None, description="Share of those positions where both top-1 strings are equal."
    )


class MemberReport(BaseModel):
    """One member: its score, gap to the best, typical response length, vocabulary, verdict."""

    name: str
    spec: MemberSpec
    score: float | None = None
    score_source: Literal["measured", "given"] | None = None
    n_items: int | None = Field(default=None, description="Items behind a measured score.")
    score_interval: Interval | None = Field(
        default=None, description="Wilson 95% interval of a measured score."
    )
    gap_to_best: float | None = None
    versus_best: PairedComparison | None = Field(
        default=None,
        description="Measured: this member against the best, paired on the same items.",
    )
    median_response_chars: float | None = None
    median_response_tokens: float | None = None
    truncated_share: float | None = Field(
        default=None, description="Share of measured answers cut by max_new_tokens."
    )
    length_ratio_to_primary: float | None = None
    vocab_size: int | None = None
    is_primary: bool = False
    verdict: Verdict = Field(description="Against the primary (the best member).")
    reasons: list[str] = Field(default_factory=list)


class PairReport(BaseModel):
    members: tuple[str, str]
    verdict: Verdict
    gap: float | None
    gap_verdict: Verdict
    length_ratio: float | None
    length_verdict: Verdict
    reasons: list[str]
    vocabulary: VocabularyFacts | None = None


class Recommendation(BaseModel):
    """Which members to ensemble, which is primary (the best), and their weights."""

    members: list[str]
    primary: str
    weights: dict[str, float] = Field(description="Normalised weights, in member order.")
    use_ensemble: bool = Field(description="False when only one member should be used alone.")
    ranked: bool = Field(
        default=True, description="False when no score ranks the members (then: measure first)."
    )
    excluded: dict[str, str] = Field(
        default_factory=dict, description="Members left out, each with the reason."
    )
    notes: list[str] = Field(default_factory=list)


class EnsembleScore(BaseModel):
    """The ensemble's own score on the calibration sample (measured mode, when asked)."""

    score: float
    n_items: int
    gain_over_best: float = Field(description="Ensemble score minus the best member's score.")
    interval: Interval | None = Field(default=None, description="Wilson 95% interval.")
    comparison: PairedComparison | None = Field(
        default=None, description="The ensemble against the best member, paired on the items."
    )


class CompatibilityReport(BaseModel):
    """What ``check_compatibility`` returns. ``table()`` renders it for a terminal."""

    mode: Literal["quick", "measured"]
    task: str | None = Field(default=None, description="The calibration task, if measured.")
    n_items: int | None = None
    members: list[MemberReport]
    pairs: list[PairReport]
    primary: str | None = Field(description="The best member; None when no score is known.")
    verdict: Verdict
    reasons: list[str]
    recommendation: Recommendation
    thresholds: Thresholds
    ensemble: EnsembleScore | None = None
    seconds: float = 0.0

    def member(self, name: str) -> MemberReport:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    def recommended_config(self, *, top_k: int = 10, **kw: Any) -> EnsembleConfig:
        """An ``EnsembleConfig`` for the recommended members, primary first, with its weights."""
        rec = self.recommendation
        specs = {m.name: m.spec for m in self.members}
        ordered = [rec.primary] + [n for n in rec.members if n != rec.primary]
        return ensemble_config(
            [specs[n] for n in ordered],
            top_k=top_k,
            weights=[rec.weights[n] for n in ordered],
            **kw,
        )

    def summary(self) -> str:
        """A few lines: the verdict, its reasons and the recommendation (what a tool returns)."""
        from .render import report_summary

        return report_summary(self)

    def table(self) -> str:
        """A readable report: members, pairs (with vocabulary facts), verdict, recommendation."""
        from .render import report_table

        return report_table(self)
