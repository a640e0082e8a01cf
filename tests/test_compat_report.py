"""The verdict rules and the report assembly of the compatibility check, on synthetic numbers
(no models)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unite_integrations import ConfigError, MemberSpec
from unite_integrations.compat.assemble import build_report, recommend
from unite_integrations.compat.formatting import text_table
from unite_integrations.compat.rules import (
    Thresholds,
    combine,
    gap_verdict,
    judge,
    length_ratio,
    length_verdict,
    relative_gap,
    sampling_noise,
    worst,
)
from unite_integrations.compat.stats import compare_paired

TH = Thresholds()
NAMES = ("a", "b")


def report(scores, lengths=(None, None), sources=("given", "given"), **kw):
    names = [f"m{i}" for i in range(len(scores))]
    return build_report(
        specs=[MemberSpec(source=n) for n in names],
        names=names,
        mode=kw.pop("mode", "quick"),
        scores=list(scores),
        score_sources=[s if sc is not None else None for s, sc in zip(sources, scores)],
        lengths=list(lengths),
        th=kw.pop("th", TH),
        **kw,
    )


# -- the pure rules --------------------------------------------------------------------------------


def test_relative_gap():
    assert relative_gap(0.76, 0.80) == pytest.approx(0.05)
    assert relative_gap(0.80, 0.80) == 0
    assert relative_gap(0.0, 0.0) == 0  # nobody scores: no gap to speak of
    assert relative_gap(0.9, 0.8) == 0  # never negative
    with pytest.raises(ConfigError):
        relative_gap(math.nan, 0.5)


@pytest.mark.parametrize(
    ("gap", "verdict"),
    [
        (0.0, "compatible"),
        (0.05, "compatible"),
        (0.10, "compatible"),  # the boundary belongs to compatible
        (0.12, "risky"),
        (0.15, "risky"),
        (0.151, "incompatible"),
        (0.40, "incompatible"),
        (None, "unknown"),
    ],
)
def test_gap_verdict(gap, verdict):
    assert gap_verdict(gap, TH) == verdict


def test_gap_boundary_computed_from_scores():
    # (0.5 - 0.45) / 0.5 is 0.09999999999999998 or 0.1000...02 depending on rounding: still 10%.
    assert gap_verdict(relative_gap(0.45, 0.5), TH) == "compatible"
    assert gap_verdict(relative_gap(0.425, 0.5), TH) == "risky"


@pytest.mark.parametrize(
    ("a", "b", "ratio", "verdict"),
    [
        (120, 100, 1.2, "compatible"),
        (100, 120, 1.2, "compatible"),
        (200, 100, 2.0, "compatible"),  # exactly 2x is allowed
        (300, 100, 3.0, "incompatible"),
        (0, 0, 1.0, "compatible"),
        (0, 10, math.inf, "incompatible"),
    ],
)
def test_length_ratio_and_verdict(a, b, ratio, verdict):
    assert length_ratio(a, b) == pytest.approx(ratio)
    assert length_verdict(length_ratio(a, b), TH) == verdict


def test_length_unknown_and_invalid():
    assert length_ratio(None, 3) is None
    assert length_verdict(None, TH) == "unknown"
    with pytest.raises(ConfigError):
        length_ratio(-1, 3)


@pytest.mark.parametrize(
    ("gap", "length", "out"),
    [
        ("compatible", "compatible", "compatible"),
        ("compatible", "unknown", "compatible"),  # the gap decides when lengths are unknown
        ("compatible", "incompatible", "incompatible"),
        ("risky", "compatible", "risky"),
        ("risky", "unknown", "risky"),
        ("risky", "incompatible", "incompatible"),
        ("incompatible", "compatible", "incompatible"),
        ("unknown", "compatible", "unknown"),
        ("unknown", "unknown", "unknown"),
        ("unknown", "incompatible", "incompatible"),
    ],
)
def test_combine(gap, length, out):
    assert combine(gap, length) == out


def test_worst():
    assert worst(["compatible", "risky", "unknown"]) == "risky"
    assert worst(["compatible", "unknown"]) == "unknown"
    assert worst(["incompatible", "risky"]) == "incompatible"
    assert worst([]) == "unknown"


# -- judgements with their reasons -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "verdict", "gap_text"),
    [
        ((0.80, 0.76), "compatible", "5.0%"),
        ((0.50, 0.44), "risky", "12.0%"),
        ((0.50, 0.30), "incompatible", "40.0%"),
    ],
)
def test_judge_gap_paths_explain_numbers(scores, verdict, gap_text):
    j = judge(NAMES, scores, (None, None), TH)
    assert j.verdict == verdict
    assert j.gap_verdict == verdict
    assert j.length_verdict == "unknown"
    assert gap_text in j.reasons[0] and verdict in j.reasons[0]
    assert "not measured" in j.reasons[1]


@pytest.mark.parametrize(
    ("lengths", "verdict", "ratio_text"),
    [((120, 100), "compatible", "1.20x"), ((300, 100), "incompatible", "3.00x")],
)
def test_judge_length_paths(lengths, verdict, ratio_text):
    j = judge(NAMES, (0.80, 0.78), lengths, TH)
    assert j.length_verdict == verdict
    assert j.verdict == verdict
    assert ratio_text in j.reasons[1]


def test_length_rule_overrides_a_compatible_gap_and_a_missing_score():
    assert judge(NAMES, (0.8, 0.8), (300, 100), TH).verdict == "incompatible"
    j = judge(NAMES, (0.8, None), (300, 100), TH)
    assert j.gap_verdict == "unknown" and j.verdict == "incompatible"
    assert "no score for b" in j.reasons[0]


def test_scores_at_chance_make_the_gap_unknown():
    j = judge(NAMES, (0.25, 0.20), (None, None), TH, chance=0.25)
    assert j.verdict == "unknown"
    assert "chance" in j.reasons[0]
    # Above chance the gap is judged as usual.
    assert judge(NAMES, (0.40, 0.20), (None, None), TH, chance=0.25).verdict == "incompatible"


def test_sampling_noise_is_flagged_but_does_not_change_the_verdict():
    j = judge(NAMES, (0.30, 0.24), (None, None), TH, n_items=(50, 50))
    assert j.verdict == "incompatible"
    assert any("sampling noise" in r for r in j.reasons)
    j = judge(NAMES, (0.90, 0.30), (None, None), TH, n_items=(500, 500))
    assert not any("sampling noise" in r for r in j.reasons)
    assert sampling_noise(0.5, 0.5, (None, 10)) is None
    assert sampling_noise(0.0, 0.0, (100, 100)) == pytest.approx(0.03)  # rule of three


def test_thresholds_are_parameters():
    loose = Thresholds(compatible_gap=0.2, incompatible_gap=0.3, max_length_ratio=4)
    assert judge(NAMES, (0.50, 0.44), (None, None), loose).verdict == "compatible"
    assert judge(NAMES, (0.80, 0.78), (300, 100), loose).verdict == "compatible"
    strict = Thresholds(compatible_gap=0.01, incompatible_gap=0.04, max_length_ratio=1.1)
    assert judge(NAMES, (0.80, 0.76), (None, None), strict).verdict == "incompatible"
    assert judge(NAMES, (0.80, 0.80), (120, 100), strict).verdict == "incompatible"
    with pytest.raises(ConfigError):
        Thresholds(compatible_gap=0.2, incompatible_gap=0.1)
    with pytest.raises(ConfigError):
        Thresholds(max_length_ratio=0.5)


@given(
    st.floats(0.01, 1.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 0.5),
)
def test_verdict_is_monotone_in_the_gap(best, frac, extra):
    """A weaker second member never gets a better verdict than a stronger one."""
    s1 = best * frac
    s2 = max(0.0, s1 - extra * best)
    order = {"compatible": 0, "risky": 1, "incompatible": 2}
    v1 = judge(NAMES, (best, s1), (None, None), TH).verdict
    v2 = judge(NAMES, (best, s2), (None, None), TH).verdict
    assert order[v2] >= order[v1]


@given(st.floats(1, 1e4), st.floats(1, 1e4))
def test_length_ratio_symmetric_and_at_least_one(a, b):
    r = length_ratio(a, b)
    assert r == length_ratio(b, a)
    assert r is not None and r >= 1


# -- recommendation and the whole report -----------------------------------------------------------


def test_recommend_the_papers_procedure():
    names = ["weak", "best", "close", "risky", "wordy", "unscored"]
    scores = [0.30, 0.80, 0.76, 0.70, 0.79, None]
    lengths = [100, 100, 120, 100, 300, 100]
    rec = recommend(names, scores, lengths, TH)
    assert rec.primary == "best"
    assert rec.members == ["best", "close"]
    assert rec.weights == {"best": 0.5, "close": 0.5}
    assert rec.use_ensemble
    assert rec.excluded["weak"].startswith("incompatible: performance gap 62.5%")
    assert rec.excluded["risky"].startswith("risky: performance gap 12.5%")
    assert rec.excluded["wordy"].startswith("incompatible: response length 3.00x")
    assert rec.excluded["unscored"] == "no score"
    assert any("risky members were left out" in n for n in rec.notes)


def test_recommend_alone_and_without_scores():
    rec = recommend(["a", "b"], [0.9, 0.2], [None, None], TH)
    assert rec.members == ["a"] and not rec.use_ensemble and rec.weights == {"a": 1.0}
    rec = recommend(["a", "b"], [None, None], [None, None], TH)
    assert rec.members == ["a", "b"] and rec.primary == "a" and "no scores" in rec.notes[0]
    rec = recommend(["a", "b"], [0.2, 0.25], [None, None], TH, chance=0.25)
    assert rec.primary == "a" and not rec.ranked and "chance" in rec.notes[0]
    # Unranked, the length rule still applies against the first member.
    rec = recommend(["a", "b", "c"], [None] * 3, [10, 0, 12], TH)
    assert rec.members == ["a", "c"] and rec.excluded == {
        "b": "incompatible: response length inf a's"
    }
    assert rec.use_ensemble and rec.weights == {"a": 0.5, "c": 0.5}
    # Ties go to the earlier member.
    assert recommend(["a", "b"], [0.5, 0.5], [None, None], TH).primary == "a"


@pytest.mark.parametrize(
    ("scores", "lengths", "verdict"),
    [
        ((0.80, 0.76), (None, None), "compatible"),  # 5%
        ((0.50, 0.44), (None, None), "risky"),  # 12%
        ((0.50, 0.30), (None, None), "incompatible"),  # 40%
        ((0.80, 0.76), (120, 100), "compatible"),  # 5%, 1.2x
        ((0.80, 0.76), (300, 100), "incompatible"),  # 5%, 3x
        ((0.50, 0.44), (120, 100), "risky"),  # 12%, 1.2x
        ((None, None), (None, None), "unknown"),  # quick mode, no scores
        ((None, None), (300, 100), "incompatible"),  # no scores, but 3x
        ((0.8, None), (None, None), "unknown"),  # one score missing
    ],
)
def test_report_overall_verdict(scores, lengths, verdict):
    r = report(scores, lengths)
    assert r.verdict == verdict
    assert len(r.pairs) == 1 and r.pairs[0].verdict == verdict
    assert r.reasons
    table = r.table()
    assert verdict in table and "recommendation" in table


def test_report_primary_is_best_and_config_follows_recommendation():
    r = report((0.50, 0.80, 0.78), (100, 100, 110), sources=("given",) * 3)
    assert r.primary == "m1"
    assert r.member("m1").is_primary and r.member("m1").gap_to_best == 0
    assert r.member("m0").verdict == "incompatible"
    assert r.member("m2").verdict == "compatible"
    assert r.verdict == "incompatible"  # the worst member against the primary
    assert len(r.pairs) == 3
    cfg = r.recommended_config(top_k=5)
    assert [m.source for m in cfg.members] == ["m1", "m2"]  # primary first
    assert cfg.weights == [0.5, 0.5] and cfg.top_k == 5
    assert r.model_validate_json(r.model_dump_json()) == r


def test_single_member_report():
    r = report((0.5,), (None,), sources=("given",))
    assert r.verdict == "compatible" and r.pairs == []
    assert not r.recommendation.use_ensemble


def test_measured_report_at_chance_is_unknown():
    r = report(
        (0.26, 0.22),
        (2, 2),
        sources=("measured", "measured"),
        mode="measured",
        chance=0.25,
        n_items_per_member=[50, 50],
    )
    assert r.verdict == "unknown" and r.primary is None
    assert not any(m.is_primary for m in r.members)
    assert "chance" in r.recommendation.notes[0] and not r.recommendation.ranked
    assert "(* primary" not in r.table()
    # At chance with an infinite length ratio (one member answers nothing): incompatible.
    r = report(
        (0.02, 0.24),
        (0, 12),
        sources=("measured", "measured"),
        mode="measured",
        chance=0.25,
        n_items_per_member=[50, 50],
    )
    assert r.verdict == "incompatible" and r.pairs[0].gap_verdict == "unknown"
    assert not r.recommendation.use_ensemble and r.recommendation.members == ["m0"]
    assert "inf" in r.table() and "infx" not in r.table()


def test_text_table():
    t = text_table(["a", "bb"], [["xxx", "y"], ["z", ""]])
    assert t.splitlines() == ["a    bb", "---  --", "xxx  y", "z"]


def test_paired_gap_replaces_the_normal_noise_flag() -> None:
    # 20 items; a right on 12, b right on 10, 8 of them shared: 4 discordant vs 2, p = 0.6875.
    a = [True] * 8 + [True] * 4 + [False] * 2 + [False] * 6
    b = [True] * 8 + [False] * 4 + [True] * 2 + [False] * 6
    paired = compare_paired(a, b, names=("a", "b"))
    j = judge(NAMES, (0.6, 0.5), (10.0, 10.0), TH, n_items=(20, 20), paired=paired)
    assert j.gap_verdict == "incompatible"  # 16.7% > 15%: the verdict stands
    noise = [r for r in j.reasons if "on the same items" in r]
    assert noise and "no significant difference" in noise[0] and "McNemar p=0.688" in noise[0]
    assert not any("sampling noise (+/-" in r for r in j.reasons)
    # A significant paired difference is not flagged.
    strong = compare_paired([True] * 40 + [False] * 10, [False] * 40 + [False] * 10)
    j = judge(NAMES, (0.8, 0.0), (10.0, 10.0), TH, n_items=(50, 50), paired=strong)
    assert not any("on the same items" in r for r in j.reasons)


def test_build_report_gives_measured_scores_intervals_and_paired_gaps() -> None:
    per_item = [[True] * 12 + [False] * 8, [True] * 10 + [False] * 10]
    r = report(
        [0.6, 0.5],
        [10.0, 10.0],
        sources=("measured", "measured"),
        mode="measured",
        n_items_per_member=[20, 20],
        item_correct=per_item,
    )
    best, other = r.members
    assert best.score_interval is not None and best.score_interval.estimate == pytest.approx(0.6)
    assert best.versus_best is None
    assert other.versus_best is not None and other.versus_best.second == best.name
    assert other.versus_best.first_only == 0 and other.versus_best.second_only == 2
    given = report([0.6, 0.5], [10.0, 10.0])
    assert all(m.score_interval is None and m.versus_best is None for m in given.members)
