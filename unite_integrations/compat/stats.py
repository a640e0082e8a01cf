"""Uncertainty of accuracies and of paired differences: pure functions, no scipy.

* :func:`wilson_interval`: the Wilson score interval of a proportion (95% by default). Unlike the
  normal ("Wald") interval it stays inside [0, 1] and is not zero-width at 0 or n correct.
* :func:`mcnemar_exact`: the exact (binomial) McNemar test of two systems scored on the *same*
  items: under "no difference" each discordant item (one right, the other wrong) is a fair coin,
  so the two-sided p-value is ``min(1, 2 * P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``.
* :func:`paired_difference_interval`: Newcombe's interval for the difference of two paired
  proportions (Newcombe 1998, *Statistics in Medicine* 17:2635, method 10), built from the Wilson
  intervals of each accuracy and corrected by the correlation of the pairs (``phi``).
* :func:`compare_paired`: the three together for two systems' per-item correctness, with the
  words a report prints ("no significant difference" where p >= alpha).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from ..errors import ConfigError

__all__ = [
    "Interval",
    "PairedComparison",
    "compare_paired",
    "mcnemar_exact",
    "paired_difference_interval",
    "wilson_interval",
    "z_value",
]

#: Two-sided normal quantiles for the confidence levels reports use.
_Z = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` (0.90, 0.95 or 0.99)."""
    try:
        return _Z[round(confidence, 4)]
    except KeyError:
        raise ConfigError(
            f"confidence must be one of {', '.join(map(str, _Z))}, got {confidence}"
        ) from None


class Interval(BaseModel):
    """A point estimate with its confidence interval (proportions in [0, 1])."""

    estimate: float
    low: float
    high: float
    confidence: float = 0.95
    method: str = "wilson"

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"41.2 [38.1, 44.3]"`` (percent by default)."""
        f = f"{{:.{digits}f}}"
        return (
            f"{f.format(scale * self.estimate)} "
            f"[{f.format(scale * self.low)}, {f.format(scale * self.high)}]"
        )


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval for ``correct`` successes out of ``n``.

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``; n = 0 gives the whole [0, 1].
    """
    if n < 0 or correct < 0 or correct > n:
        raise ConfigError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return Interval(estimate=0.0, low=0.0, high=1.0, confidence=confidence)
    z = z_value(confidence)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return Interval(estimate=p, low=low, high=high, confidence=confidence)


def _log_binom_pmf(k: int, n: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    ``b``: items only the first system got right; ``c``: only the second. 1.0 when there are no
    discordant pairs (nothing tells the systems apart).
    """
    if b < 0 or c < 0:
        raise ConfigError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.exp(_log_binom_pmf(i, n)) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def paired_difference_interval(
    a: int, b: int, c: int, d: int, confidence: float = 0.95
) -> Interval:
    """Newcombe's (method 10) interval for ``p1 - p2`` of two paired proportions.

    The 2x2 table of the pairs: ``a`` both right, ``b`` first right only, ``c`` second right only,
    ``d`` both wrong. The difference is ``(b - c) / n``.
    """
    if min(a, b, c, d) < 0:
        raise ConfigError(f"cell counts must be >= 0, got {(a, b, c, d)}")
    n = a + b + c + d
    if n == 0:
        return Interval(estimate=0.0, low=-1.0, high=1.0, confidence=confidence, method="newcombe")
    p1, p2 = (a + b) / n, (a + c) / n
    w1, w2 = wilson_interval(a + b, n, confidence), wilson_interval(a + c, n, confidence)
    l1, u1, l2, u2 = w1.low, w1.high, w2.low, w2.high
    # phi: the correlation of the two systems' correctness; 0 when a margin is empty.
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        phi = 0.0
    else:
        num = float(a * d - b * c)
        # Newcombe's correction: a positive ad - bc shrinks by n/2 (not past 0); a negative stays.
        if num > 0:
            num = max(num - n / 2, 0.0)
        phi = num / math.sqrt(margins)
    diff = p1 - p2
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return Interval(
        estimate=diff,
        low=max(-1.0, diff - dl),
        high=min(1.0, diff + du),
        confidence=confidence,
        method="newcombe",
    )


class PairedComparison(BaseModel):
    """System ``first`` against system ``second`` on the same items."""

    first: str
    second: str
    n: int
    both_right: int
    first_only: int = Field(description="Items only the first system got right.")
    second_only: int = Field(description="Items only the second system got right.")
    both_wrong: int
    difference: Interval = Field(description="Accuracy of first minus second, Newcombe interval.")
    p_value: float = Field(description="Exact two-sided McNemar p-value (binomial, discordant).")
    alpha: float = 0.05

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    def verdict(self) -> str:
        """``"better"``/``"worse"`` when significant, else ``"no significant difference"``."""
        if not self.significant:
            return "no significant difference"
        return "better" if self.difference.estimate > 0 else "worse"

    def text(self) -> str:
        """``"+12.0 points [7.1, 16.8], McNemar p=0.0012: better"``."""
        d = self.difference
        sign = "+" if d.estimate >= 0 else ""
        return (
            f"{sign}{100 * d.estimate:.1f} points [{100 * d.low:.1f}, {100 * d.high:.1f}], "
            f"McNemar p{_p_text(self.p_value)}: {self.verdict()}"
        )


def _p_text(p: float) -> str:
    """``"<0.0001"``, ``"=0.0066"``, ``"=0.052"``: the sign and the value, as a report prints it."""
    return "<0.0001" if p < 1e-4 else f"={p:.4f}" if p < 0.01 else f"={p:.3f}"


def compare_paired(
    first: Sequence[bool],
    second: Sequence[bool],
    *,
    names: tuple[str, str] = ("first", "second"),
    confidence: float = 0.95,
    alpha: float = 0.05,
) -> PairedComparison:
    """Paired comparison of two systems' per-item correctness (same items, same order)."""
    if len(first) != len(second):
        raise ConfigError(
            f"paired comparison needs the same items: {len(first)} against {len(second)}"
        )
    a = sum(1 for x, y in zip(first, second) if x and y)
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    d = len(first) - a - b - c
    return PairedComparison(
        first=names[0],
        second=names[1],
        n=len(first),
        both_right=a,
        first_only=b,
        second_only=c,
        both_wrong=d,
        difference=paired_difference_interval(a, b, c, d, confidence),
        p_value=mcnemar_exact(b, c),
        alpha=alpha,
    )
