"""The verdict rules of the compatibility check, as pure functions of numbers.

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
verdict rests on the scores alone (and says so). A measured gap is also tested for noise, paired on
the same items (:mod:`.stats`).

Everything here is a pure function of numbers, so every verdict path is unit-tested without models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from .formatting import num, pct, ratio_text
from .stats import PairedComparison

__all__ = [
    "Judgement",
    "Thresholds",
    "Verdict",
    "combine",
    "gap_verdict",
    "judge",
    "length_ratio",
    "length_verdict",
    "near_chance",
    "relative_gap",
    "sampling_noise",
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
    gap, gv, reasons = _judge_gap(names, scores, th, chance=chance, n_items=n_items, paired=paired)
    ratio = length_ratio(*lengths)
    lv = length_verdict(ratio, th)
    reasons.append(_length_reason(names, lengths, ratio, lv, th, length_unit))
    return Judgement(
        verdict=combine(gv, lv),
        gap=gap,
        gap_verdict=gv,
        length_ratio=ratio,
        length_verdict=lv,
        reasons=reasons,
    )


def _judge_gap(
    names: tuple[str, str],
    scores: tuple[float | None, float | None],
    th: Thresholds,
    *,
    chance: float | None,
    n_items: tuple[int | None, int | None],
    paired: PairedComparison | None,
) -> tuple[float | None, Verdict, list[str]]:
    """The performance criterion of :func:`judge`: the gap, its verdict and the reasons."""
    (na, nb), (sa, sb) = names, scores
    n_max = max((n for n in n_items if n), default=None)
    if sa is None or sb is None:
        missing = [n for n, s in ((na, sa), (nb, sb)) if s is None]
        return (
            None,
            "unknown",
            [
                f"performance gap unknown: no score for {', '.join(missing)} "
                "(give scores, or measure them on a task)"
            ],
        )
    if near_chance(max(sa, sb), chance, n_max):
        return (
            None,
            "unknown",
            [
                f"performance gap unknown: neither score ({num(sa)}, {num(sb)}) is clearly above "
                f"chance ({num(chance or 0.0)}"
                + (f", within sampling noise of {n_max} items" if n_max else "")
                + "), so this task does not tell them apart; pick a task they can do"
            ],
        )
    (s_hi, n_hi), (s_lo, n_lo) = sorted(((sa, na), (sb, nb)), key=lambda t: -t[0])
    gap = relative_gap(s_lo, s_hi)
    gv = gap_verdict(gap, th)
    rule = {
        "compatible": f"<= {pct(th.compatible_gap)}: compatible",
        "risky": f"between {pct(th.compatible_gap)} and {pct(th.incompatible_gap)}: risky",
        "incompatible": f"> {pct(th.incompatible_gap)}: incompatible",
    }[gv]
    reasons = [f"performance gap {pct(gap)} ({n_lo} {num(s_lo)} vs {n_hi} {num(s_hi)}) {rule}"]
    noise = sampling_noise(sa, sb, n_items)
    if paired is not None:
        if not paired.significant and sa != sb:
            reasons.append(
                f"{paired.first} vs {paired.second} on the same items: {paired.text()}; "
                "measure more items before trusting this verdict"
            )
    elif noise is not None and abs(sa - sb) < noise:
        reasons.append(
            f"the difference ({num(abs(sa - sb))}) is within sampling noise (+/-"
            f"{num(noise)} at 95% over {n_items[0]} and {n_items[1]} items): measure more "
            "items before trusting this verdict"
        )
    return gap, gv, reasons


def _length_reason(
    names: tuple[str, str],
    lengths: tuple[float | None, float | None],
    ratio: float | None,
    verdict: Verdict,
    th: Thresholds,
    unit: str,
) -> str:
    """The length criterion of :func:`judge`, explained with its numbers."""
    (na, nb), (la, lb) = names, lengths
    if ratio is None or la is None or lb is None:
        return "response lengths not measured: length rule not applied"
    rule = (
        f"<= {th.max_length_ratio:g}x: compatible"
        if verdict == "compatible"
        else f"> {th.max_length_ratio:g}x: incompatible"
    )
    return (
        f"response length ratio {ratio_text(ratio)} ({na} {num(la)} vs {nb} {num(lb)} "
        f"{unit}, typical) {rule}"
    )
