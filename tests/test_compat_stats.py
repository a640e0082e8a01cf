"""Intervals and paired tests against published values (no models)."""

from __future__ import annotations

import pytest

from unite_integrations.compat.stats import (
    compare_paired,
    mcnemar_exact,
    paired_difference_interval,
    wilson_interval,
    z_value,
)
from unite_integrations.errors import ConfigError


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson, no CC).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_table(correct: int, n: int, low: float, high: float) -> None:
    iv = wilson_interval(correct, n)
    assert iv.estimate == pytest.approx(correct / n)
    assert iv.low == pytest.approx(low, abs=1e-4)
    assert iv.high == pytest.approx(high, abs=1e-4)


def test_wilson_edges_and_errors() -> None:
    assert wilson_interval(10, 10).high == 1.0
    assert wilson_interval(0, 0).low == 0.0 and wilson_interval(0, 0).high == 1.0
    assert wilson_interval(5, 10, 0.99).low < wilson_interval(5, 10).low
    with pytest.raises(ConfigError, match="correct <= n"):
        wilson_interval(3, 2)
    with pytest.raises(ConfigError, match="confidence"):
        z_value(0.42)


@pytest.mark.parametrize(
    ("cells", "low", "high"),
    [
        # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), ch. 8:
        # complete response before/after consolidation therapy (Cavo et al. 2012) and airway
        # hyper-responsiveness (Bentur et al. 2009), Newcombe square-and-add.
        ((59, 6, 16, 80), -0.1186, -0.0046),
        ((1, 1, 7, 12), -0.5069, -0.0256),
    ],
)
def test_newcombe_paired_interval_matches_textbook(cells, low: float, high: float) -> None:
    iv = paired_difference_interval(*cells)
    a, b, c, d = cells
    assert iv.estimate == pytest.approx((b - c) / (a + b + c + d))
    assert iv.low == pytest.approx(low, abs=1e-4)
    assert iv.high == pytest.approx(high, abs=1e-4)
    assert iv.method == "newcombe"


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (6, 16, 0.052479),  # Cavo et al.: exact conditional McNemar P = 0.0525
        (1, 7, 0.0703125),  # Bentur et al.: P = 0.0703
        (0, 5, 0.0625),
        (3, 3, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_matches_textbook(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-6)
    assert mcnemar_exact(c, b) == pytest.approx(p, abs=1e-6)  # two-sided: symmetric


def test_compare_paired_counts_and_words() -> None:
    first = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    second = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    cmp = compare_paired(first, second, names=("ensemble", "best"))
    assert (cmp.both_right, cmp.first_only, cmp.second_only, cmp.both_wrong) == (59, 6, 16, 80)
    assert cmp.p_value == pytest.approx(0.052479, abs=1e-6)
    assert not cmp.significant
    assert cmp.verdict() == "no significant difference"
    assert "no significant difference" in cmp.text()
    strong = compare_paired([True] * 30 + [False] * 10, [False] * 30 + [False] * 10)
    assert strong.significant and strong.verdict() == "better"
    assert strong.difference.low > 0
    assert compare_paired([False] * 30, [True] * 30).verdict() == "worse"
    with pytest.raises(ConfigError, match="same items"):
        compare_paired([True], [True, False])
