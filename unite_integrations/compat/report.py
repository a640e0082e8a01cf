"""The compatibility report (pydantic) and the verdict rules as pure functions.

The rules are the paper's (Determine-Then-Ensemble, ICLR 2025, Section 3), as heuristics with
parameters:

* **performance gap** relative to the best member on the task: at most 10% is *compatible*, over
  10% up to 15% is *risky*, over 15% is *incompatible* (the ensemble is usually worse than the best
  member alone);
* **response length**: the longer member's typical answer over 2x the shorter one's is
  *incompatible*;
* **vocabulary** facts (sizes, words tokenized identically, top-k overlap) are informative only.

A criterion that was not measured is *unknown*. The performance gap decides: without scores the
verdict is ``unknown`` unless the length rule already makes it ``incompatible``; without lengths the
verdict rests on the scores alone (and says so).

Everything here is a pure function of numbers, so every verdict path is unit-tested without models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..engine.config import EnsembleConfig, MemberSpec, ensemble_config
from ..errors import ConfigError
from .stats import Interval, PairedComparison, compare_paired, wilson_interval

__all__ = [
    "CompatibilityReport",
    "Judgement",
    "MemberReport",
    "PairReport",
    "Recommendation",
    "Thresholds",
    "Verdict",
    "VocabularyFacts",
    "combine",
    "gap_verdict",
    "judge",
    "length_ratio",
    "length_verdict",
    "near_chance",
    "overall_verdict",
    "recommend",
    "relative_gap",
    "sampling_noise",
    "text_table",
    "worst",
]

Verdict = Literal["compatible", "risky", "incompatible", "unknown"]
#: Severity order used to take the worst of several verdicts.
_SEVERITY: dict[str, int] = {"compatible": 0, "unknown": 1, "risky": 2, "incompatible": 3}


class _Model(BaseModel):
    """Validation failures of user-given values are the package's own ``ConfigError``."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"invalid {type(self).__name__}: {e}") from e


class Thresholds(_Model):
    """The paper's heuristics as parameters (defaults: 10%, 15%, 2x)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compatible_gap: float = Field(
        default=0.10,
        ge=0.0,
        le=1.0,
        description="Relative gap to the best at most this: compatible.",
    )
    incompatible_gap: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="Relative gap over this: incompatible (between the two: risky).",
    )
    max_length_ratio: float = Field(
        default=2.0,
        ge=1.0,
        description="Longer / shorter typical response length over this: incompatible.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.incompatible_gap < self.compatible_gap:
            raise ConfigError(
                f"incompatible_gap ({self.incompatible_gap}) must be >= compatible_gap "
                f"({self.compatible_gap})"
            )
        return self


# -- pure rules ------------------------------------------------------------------------------------


def relative_gap(score: float, best: float) -> float:
    """``(best - score) / best``: how far a score is below the best, as a share of the best.

    0 when the best score is 0 or less (every member failed alike: no gap to speak of).
    """
    if not math.isfinite(score) or not math.isfinite(best):
        raise ConfigError(f"scores must be finite numbers, got {score} and {best}")
    if best <= 0:
        return 0.0
    return max(0.0, (best - score) / best)


def gap_verdict(gap: float | None, th: Thresholds) -> Verdict:
    """Compatible up to ``compatible_gap``, risky up to ``incompatible_gap``, else incompatible."""
    if gap is None:
        return "unknown"
    # A tiny tolerance so that 0.10 computed as (0.5 - 0.45) / 0.5 = 0.09999... or 0.1000...1
    # lands where a person reading "10%" expects.
    eps = 1e-9
    if gap <= th.compatible_gap + eps:
        return "compatible"
    if gap <= th.incompatible_gap + eps:
        return "risky"
    return "incompatible"


def length_ratio(a: float | None, b: float | None) -> float | None:
    """Longer / shorter typical length (>= 1); None when either is unknown.

    An empty typical answer against a non-empty one is an infinite ratio; two empty ones are 1.
    """
    if a is None or b is None:
        return None
    lo, hi = sorted((float(a), float(b)))
    if lo < 0:
        raise ConfigError(f"response lengths cannot be negative, got {a} and {b}")
    if lo == 0:
        return 1.0 if hi == 0 else math.inf
    return hi / lo


def length_verdict(ratio: float | None, th: Thresholds) -> Verdict:
    """Compatible up to ``max_length_ratio`` (inclusive), else incompatible; unknown if None."""
    if ratio is None:
        return "unknown"
    return "compatible" if ratio <= th.max_length_ratio + 1e-9 else "incompatible"


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    """The most severe verdict (incompatible > risky > unknown > compatible)."""
    if not verdicts:
        return "unknown"
    return max(verdicts, key=lambda v: _SEVERITY[v])


def combine(gap: Verdict, length: Verdict) -> Verdict:
    """One verdict from the two criteria; the performance gap decides when lengths are unknown."""
    if "incompatible" in (gap, length):
        return "incompatible"
    if gap == "unknown":
        return "unknown"
    return gap  # compatible or risky; a compatible or unknown length does not change it


def near_chance(score: float, chance: float | None, n: int | None = None) -> bool:
    """True when ``score`` is not clearly above ``chance``: at most chance plus the half-width of
    a 95% interval of a chance-level score over ``n`` items (0 when n is unknown)."""
    if chance is None:
        return False
    margin = 1.96 * math.sqrt(chance * (1 - chance) / n) if n and 0 <= chance <= 1 else 0.0
    return score <= chance + margin


def sampling_noise(a: float, b: float, n_items: tuple[int | None, int | None]) -> float | None:
    """Half-width of a 95% normal interval for the difference of two measured proportions."""
    na, nb = n_items
    if not na or not nb or not (0 <= a <= 1 and 0 <= b <= 1):
        return None
    var = a * (1 - a) / na + b * (1 - b) / nb
    # At 0 or 1 the normal estimate is 0; use the rule of three (3/n) as a floor.
    return max(1.96 * math.sqrt(var), 3 / max(na, nb))


class Judgement(BaseModel):
    """The verdict on two members (or a member against the primary), with its numbers."""

    verdict: Verdict
    gap: float | None = Field(description="Relative gap of the weaker to the stronger score.")
    gap_verdict: Verdict
    length_ratio: float | None = Field(description="Longer / shorter typical response length.")
    length_verdict: Verdict
    reasons: list[str]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ratio(r: float | None) -> str:
    return "-" if r is None else "inf" if math.isinf(r) else f"{r:.2f}x"


def _num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def judge(
    names: tuple[str, str],
    scores: tuple[float | None, float | None],
    lengths: tuple[float | None, float | None],
    th: Thresholds,
    length_unit: str = "chars",
    *,
    chance: float | None = None,
    n_items: tuple[int | None, int | None] = (None, None),
    paired: PairedComparison | None = None,
) -> Judgement:
    """The verdict on a pair, each criterion explained with its numbers.

    ``chance``: the task's chance score; when neither score is above it the task does not tell the
    members apart and the performance verdict is unknown. ``n_items``: the items behind measured
    scores (proportions); a difference within sampling noise is flagged (the verdict stands).
    ``paired``: the two members' per-item comparison on the same items (measured mode); then the
    noise flag is the exact McNemar test's "no significant difference", with the difference's
    paired interval, instead of the normal approximation for independent samples.
    """
    (na, nb), (sa, sb), (la, lb) = names, scores, lengths
    reasons: list[str] = []
    gap: float | None = None
    n_max = max((n for n in n_items if n), default=None)
    if sa is not None and sb is not None and near_chance(max(sa, sb), chance, n_max):
        gv: Verdict = "unknown"
        reasons.append(
            f"performance gap unknown: neither score ({_num(sa)}, {_num(sb)}) is clearly above "
            f"chance ({_num(chance or 0.0)}"
            + (f", within sampling noise of {n_max} items" if n_max else "")
            + "), so this task does not tell them apart; pick a task they can do"
        )
    elif sa is not None and sb is not None:
        (s_hi, n_hi), (s_lo, n_lo) = sorted(((sa, na), (sb, nb)), key=lambda t: -t[0])
        gap = relative_gap(s_lo, s_hi)
        gv = gap_verdict(gap, th)
        rule = {
            "compatible": f"<= {_pct(th.compatible_gap)}: compatible",
            "risky": f"between {_pct(th.compatible_gap)} and {_pct(th.incompatible_gap)}: risky",
            "incompatible": f"> {_pct(th.incompatible_gap)}: incompatible",
        }[gv]
        reasons.append(
            f"performance gap {_pct(gap)} ({n_lo} {_num(s_lo)} vs {n_hi} {_num(s_hi)}) {rule}"
        )
        noise = sampling_noise(sa, sb, n_items)
        if paired is not None:
            if not paired.significant and sa != sb:
                reasons.append(
                    f"{paired.first} vs {paired.second} on the same items: {paired.text()}; "
                    "measure more items before trusting this verdict"
                )
        elif noise is not None and abs(sa - sb) < noise:
            reasons.append(
                f"the difference ({_num(abs(sa - sb))}) is within sampling noise (+/-"
                f"{_num(noise)} at 95% over {n_items[0]} and {n_items[1]} items): measure more "
                "items before trusting this verdict"
            )
    else:
        gv = "unknown"
        missing = [n for n, s in ((na, sa), (nb, sb)) if s is None]
        reasons.append(
            f"performance gap unknown: no score for {', '.join(missing)} "
            "(give scores, or measure them on a task)"
        )
    ratio = length_ratio(la, lb)
    lv = length_verdict(ratio, th)
    if ratio is not None and la is not None and lb is not None:
        rule = (
            f"<= {th.max_length_ratio:g}x: compatible"
            if lv == "compatible"
            else f"> {th.max_length_ratio:g}x: incompatible"
        )
        ratio_text = _ratio(ratio)
        reasons.append(
            f"response length ratio {ratio_text} ({na} {_num(la)} vs {nb} {_num(lb)} "
            f"{length_unit}, typical) {rule}"
        )
    else:
        reasons.append("response lengths not measured: length rule not applied")
    return Judgement(
        verdict=combine(gv, lv),
        gap=gap,
        gap_verdict=gv,
        length_ratio=ratio,
        length_verdict=lv,
        reasons=reasons,
    )


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
        rec = self.recommendation
        lines = [f"verdict: {self.verdict}"]
        lines += [f"- {r}" for r in self.reasons]
        head = "recommendation" if rec.ranked else "recommendation (unranked: measure first)"
        if rec.use_ensemble:
            w = ", ".join(f"{n} {rec.weights[n]:.2f}" for n in rec.members)
            lines.append(f"{head}: ensemble {w}; primary {rec.primary}")
        elif rec.ranked:
            lines.append(f"{head}: use {rec.primary} alone")
        else:
            lines.append(f"{head}: keep only {rec.primary}, the first member given")
        lines += [f"- excluded {n}: {why}" for n, why in rec.excluded.items()]
        lines += [f"- {n}" for n in rec.notes]
        return "\n".join(lines)

    def table(self) -> str:
        """A readable report: members, pairs (with vocabulary facts), verdict, recommendation."""
        head = f"compatibility check ({self.mode} mode"
        if self.task:
            head += f", task {self.task}, {self.n_items} items"
        head += f", {self.seconds:.1f} s)"
        rows = []
        for m in self.members:
            rows.append(
                [
                    m.name + (" *" if m.is_primary else ""),
                    "-"
                    if m.score is None
                    else f"{m.score:.3f}"
                    + (
                        ""
                        if m.score_interval is None
                        else f" [{m.score_interval.low:.3f}, {m.score_interval.high:.3f}]"
                    ),
                    m.score_source or "-",
                    "-" if m.gap_to_best is None else _pct(m.gap_to_best),
                    "-" if m.median_response_chars is None else f"{m.median_response_chars:.0f}",
                    _ratio(m.length_ratio_to_primary),
                    "-" if m.vocab_size is None else f"{m.vocab_size:,}",
                    m.verdict,
                ]
            )
        out = [
            head,
            "",
            text_table(
                [
                    "member",
                    "score [95% CI]",
                    "from",
                    "gap",
                    "length (chars)",
                    "vs primary",
                    "vocab",
                    "verdict",
                ],
                rows,
            ),
        ]
        if self.primary is not None:
            out.append("(* primary: the best member)")
        if self.ensemble is not None:
            e = self.ensemble
            ci = "" if e.interval is None else f" [{e.interval.low:.3f}, {e.interval.high:.3f}]"
            out.append(
                f"ensemble score {e.score:.3f}{ci} on {e.n_items} items "
                f"({'+' if e.gain_over_best >= 0 else ''}{e.gain_over_best:.3f} over the best member)"
            )
            if e.comparison is not None:
                out.append(f"ensemble vs {e.comparison.second}, paired: {e.comparison.text()}")
        prow = []
        for p in self.pairs:
            v = p.vocabulary
            prow.append(
                [
                    f"{p.members[0]} + {p.members[1]}",
                    "-" if p.gap is None else _pct(p.gap),
                    _ratio(p.length_ratio),
                    "-"
                    if v is None or v.identical_word_share is None
                    else f"{_pct(v.identical_word_share)} of {v.words_compared}",
                    "-"
                    if v is None or v.topk_overlap is None
                    else f"{_pct(v.topk_overlap)} (top-1 {_pct(v.top1_agreement or 0.0)})",
                    p.verdict,
                ]
            )
        out += [
            "",
            text_table(
                ["pair", "gap", "length ratio", "same words", "top-k overlap", "verdict"], prow
            ),
            "",
            self.summary(),
        ]
        return "\n".join(out)


# -- putting it together ---------------------------------------------------------------------------


def overall_verdict(member_verdicts: Sequence[Verdict]) -> Verdict:
    """The worst member verdict against the primary (the primary itself counts as compatible)."""
    return worst(list(member_verdicts)) if member_verdicts else "unknown"


def recommend(
    names: Sequence[str],
    scores: Sequence[float | None],
    lengths: Sequence[float | None],
    th: Thresholds,
    *,
    chance: float | None = None,
    n_items: int | None = None,
) -> Recommendation:
    """The paper's procedure: start from the best member, add members within ``compatible_gap``
    whose typical length is within ``max_length_ratio`` of the primary's; equal weights.

    Without any score, or with measured scores none clearly above chance, the members cannot be
    ranked (``ranked=False``): the first is primary, the others are kept unless the length rule
    excludes them, and the notes say to measure. Members without a score (when others have one)
    are left out.
    """
    if len(names) == 0:
        raise ConfigError("no members to recommend from")
    known = [i for i, s in enumerate(scores) if s is not None]
    at_chance = chance is not None and all(
        s is not None and near_chance(s, chance, n_items) for s in (scores[i] for i in known)
    )
    if not known or at_chance:
        why = (
            f"no score is clearly above chance ({_num(chance or 0.0)}): the task cannot rank the "
            "members"
            if known
            else "no scores: the members cannot be ranked"
        )
        first = names[0]
        kept = [first]
        left: dict[str, str] = {}
        for i, name in enumerate(names[1:], start=1):
            ratio = length_ratio(lengths[i], lengths[0])
            if length_verdict(ratio, th) == "incompatible":
                left[name] = f"incompatible: response length {_ratio(ratio)} {first}'s"
            else:
                kept.append(name)
        return Recommendation(
            members=kept,
            primary=first,
            weights=dict.fromkeys(kept, 1.0 / len(kept)),
            use_ensemble=len(kept) > 1,
            ranked=False,
            excluded=left,
            notes=[
                f"{why}; the first member is primary for lack of a ranking. Give scores, or "
                "measure on a task the members can do, before relying on this recommendation."
            ],
        )
    best = max(known, key=lambda i: (scores[i], -i))
    best_score = scores[best]
    assert best_score is not None
    chosen: list[str] = []
    excluded: dict[str, str] = {}
    for i, name in enumerate(names):
        s = scores[i]
        if i == best:
            chosen.append(name)
            continue
        if s is None:
            excluded[name] = "no score"
            continue
        gap = relative_gap(s, best_score)
        gv = gap_verdict(gap, th)
        if gv != "compatible":
            excluded[name] = f"{gv}: performance gap {_pct(gap)} to {names[best]}"
            continue
        ratio = length_ratio(lengths[i], lengths[best])
        if length_verdict(ratio, th) == "incompatible":
            assert ratio is not None
            excluded[name] = f"incompatible: response length {_ratio(ratio)} {names[best]}'s"
            continue
        chosen.append(name)
    notes: list[str] = []
    if len(chosen) == 1:
        notes.append(f"no other member is compatible with the best, {names[best]}: use it alone")
    else:
        notes.append("equal weights, as in the paper; the primary breaks greedy ties")
    if any(v.startswith("risky") for v in excluded.values()):
        notes.append(
            "risky members were left out; include one only after measuring that the ensemble "
            "beats the best member on your task (unite eval)"
        )
    w = 1.0 / len(chosen)
    return Recommendation(
        members=chosen,
        primary=names[best],
        weights=dict.fromkeys(chosen, w),
        use_ensemble=len(chosen) > 1,
        excluded=excluded,
        notes=notes,
    )


def build_report(
    *,
    specs: Sequence[MemberSpec],
    names: Sequence[str],
    mode: Literal["quick", "measured"],
    scores: Sequence[float | None],
    score_sources: Sequence[Literal["measured", "given"] | None],
    lengths: Sequence[float | None],
    th: Thresholds,
    task: str | None = None,
    n_items: int | None = None,
    n_items_per_member: Sequence[int | None] | None = None,
    token_lengths: Sequence[float | None] | None = None,
    truncated: Sequence[float | None] | None = None,
    vocab_sizes: Sequence[int | None] | None = None,
    vocabulary: dict[tuple[int, int], VocabularyFacts] | None = None,
    ensemble: EnsembleScore | None = None,
    chance: float | None = None,
    item_correct: Sequence[Sequence[bool] | None] | None = None,
    seconds: float = 0.0,
) -> CompatibilityReport:
    """Assemble the report from measured or given numbers (pure: no models).

    ``chance`` applies to measured scores only (given scores may be on any scale).
    ``item_correct``: per member, its per-item correctness on the calibration sample (measured);
    it gives each score a Wilson interval and each gap a paired test (see ``judge``).
    """
    n = len(names)
    if not (len(specs) == len(scores) == len(lengths) == len(score_sources) == n):
        raise ConfigError("internal: one value per member is needed")
    known = [i for i, s in enumerate(scores) if s is not None]
    best = max(known, key=lambda i: (scores[i], -i)) if known else None
    best_score = scores[best] if best is not None else None

    all_measured = all(src == "measured" for src in score_sources)
    rec = recommend(
        names,
        scores,
        lengths,
        th,
        chance=chance if all_measured else None,
        n_items=max((k for k in (n_items_per_member or []) if k), default=None),
    )
    ranked = best is not None and rec.ranked

    per_item = list(item_correct) if item_correct is not None else [None] * n

    def _paired(i: int, j: int) -> PairedComparison | None:
        a, b = per_item[i], per_item[j]
        if a is None or b is None or len(a) != len(b) or not a:
            return None
        return compare_paired(a, b, names=(names[i], names[j]))

    def _context(i: int, j: int) -> dict[str, Any]:
        measured = score_sources[i] == "measured" and score_sources[j] == "measured"
        per = n_items_per_member or [None] * n
        return {
            "chance": chance if measured else None,
            "n_items": (per[i], per[j]) if measured else (None, None),
            "paired": _paired(i, j) if measured else None,
        }

    members: list[MemberReport] = []
    for i, name in enumerate(names):
        if best is None or i == best:
            gap = 0.0 if i == best else None
            if best is None:
                j = Judgement(
                    verdict="unknown",
                    gap=None,
                    gap_verdict="unknown",
                    length_ratio=None,
                    length_verdict="unknown",
                    reasons=["no scores: the best member (the primary) is unknown"],
                )
            else:
                j = Judgement(
                    verdict="compatible" if ranked else "unknown",
                    gap=0.0,
                    gap_verdict="compatible" if ranked else "unknown",
                    length_ratio=1.0 if lengths[i] is not None else None,
                    length_verdict="compatible",
                    reasons=[
                        "the best member: the primary"
                        if ranked
                        else "the highest score, but not clearly above chance: no primary"
                    ],
                )
        else:
            j = judge(
                (name, names[best]),
                (scores[i], best_score),
                (lengths[i], lengths[best]),
                th,
                **_context(i, best),
            )
            gap = j.gap
        members.append(
            MemberReport(
                name=name,
                spec=specs[i],
                score=scores[i],
                score_source=score_sources[i],
                n_items=n_items_per_member[i] if n_items_per_member else None,
                score_interval=(
                    wilson_interval(sum(per_item[i] or ()), len(per_item[i] or ()))
                    if per_item[i]
                    else None
                ),
                gap_to_best=gap,
                versus_best=(
                    _paired(i, best) if best is not None and i != best and per_item[i] else None
                ),
                median_response_chars=lengths[i],
                median_response_tokens=token_lengths[i] if token_lengths else None,
                truncated_share=truncated[i] if truncated else None,
                length_ratio_to_primary=j.length_ratio,
                vocab_size=vocab_sizes[i] if vocab_sizes else None,
                is_primary=ranked and i == best,
                verdict=j.verdict,
                reasons=j.reasons,
            )
        )
    pairs: list[PairReport] = []
    for a in range(n):
        for b in range(a + 1, n):
            j = judge(
                (names[a], names[b]),
                (scores[a], scores[b]),
                (lengths[a], lengths[b]),
                th,
                **_context(a, b),
            )
            pairs.append(
                PairReport(
                    members=(names[a], names[b]),
                    verdict=j.verdict,
                    gap=j.gap,
                    gap_verdict=j.gap_verdict,
                    length_ratio=j.length_ratio,
                    length_verdict=j.length_verdict,
                    reasons=j.reasons,
                    vocabulary=(vocabulary or {}).get((a, b)),
                )
            )
    others = [m for i, m in enumerate(members) if i != best]
    verdict = (
        overall_verdict([m.verdict for m in others]) if best is not None and others else "unknown"
    )
    if n == 1:
        verdict = "compatible" if best is not None else "unknown"
    reasons: list[str] = []
    if best is None:
        reasons.append("no scores given or measured: the performance gap cannot be judged")
        for p in pairs:
            if p.length_verdict == "incompatible":
                reasons.append(f"{p.members[0]} + {p.members[1]}: {p.reasons[-1]}")
        if any(p.length_verdict == "incompatible" for p in pairs):
            verdict = "incompatible"
    else:
        for m in others:
            reasons += [f"{m.name} vs {names[best]}: {r}" for r in m.reasons]
    if vocabulary:
        reasons.append("vocabulary facts are informative only (the paper: size barely matters)")
    return CompatibilityReport(
        mode=mode,
        task=task,
        n_items=n_items,
        members=members,
        pairs=pairs,
        primary=names[best] if ranked and best is not None else None,
        verdict=verdict,
        reasons=reasons,
        recommendation=rec,
        thresholds=th,
        ensemble=ensemble,
        seconds=seconds,
    )


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table (no dependencies), left-aligned, with a rule under the header."""
    cols = list(zip(*([list(headers)] + [list(r) for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([line, rule, *body])
