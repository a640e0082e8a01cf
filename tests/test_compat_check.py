"""`check_compatibility` on tiny models: quick and measured modes, every verdict path."""

from __future__ import annotations

import pytest

from unite_integrations import ConfigError, UniTEEngine
from unite_integrations.compat import (
    CompatibilityReport,
    Thresholds,
    check_compatibility,
    custom_task,
    member_engines,
)
from unite_integrations.compat.datasets import normalize_answer
from unite_integrations.compat.evaluate import run_task
from unite_integrations.compat.vocabulary import (
    COMMON_WORDS,
    identical_word_share,
    pair_facts,
    sample_words,
    topk_overlap,
)

QUESTIONS = [
    f"The {colour} {animal}"
    for colour in ("red", "green", "blue", "black", "white", "small")
    for animal in ("cat", "dog", "fox", "bird", "horse")
]
ORACLE_FORMAT = {"instruction": "Complete:", "max_new_tokens": 6, "kind": "text"}


def _names(engine: UniTEEngine) -> tuple[str, str]:
    a, b = engine.member_names
    return a, b


# -- one-member views ------------------------------------------------------------------------------


def test_member_views_share_models_and_decode_like_single_engines(hetero, make_engine, tiny_dirs):
    views = member_engines(hetero)
    assert list(views) == hetero.member_names
    assert member_engines(hetero) is views  # cached per engine
    prompts = ["Once upon a time", "The red fox", "1 + 1 ="]
    for (name, view), family in zip(views.items(), ("bytelevel_bpe", "sentencepiece_bpe")):
        assert view.members[0] is next(m for m in hetero.members if m.name == name)
        alone = make_engine(tiny_dirs[family])
        got = [r.text for r in view.generate(prompts, max_new_tokens=10)]
        assert got == [r.text for r in alone.generate(prompts, max_new_tokens=10)]
    single = make_engine(tiny_dirs["bytelevel_bpe"])
    assert member_engines(single) == {single.member_names[0]: single}


# -- vocabulary facts ------------------------------------------------------------------------------


def test_vocabulary_facts_of_a_heterogeneous_pair(hetero):
    a, b = hetero.members
    facts = pair_facts(a, b, k=5)
    assert facts.vocab_sizes == (a.vocab.size, b.vocab.size)
    assert not facts.same_tokenizer
    assert facts.words_compared >= len(set(COMMON_WORDS))
    assert facts.identical_word_share is not None and 0 < facts.identical_word_share < 1
    assert facts.topk_overlap is not None and 0 <= facts.topk_overlap <= 1
    assert facts.top1_agreement is not None and 0 <= facts.top1_agreement <= 1
    assert facts.positions_compared > 20
    # With itself: every word split alike, top-k identical.
    same = pair_facts(a, a, k=5)
    assert same.same_tokenizer and same.identical_word_share == 1.0
    assert same.topk_overlap == pytest.approx(1.0) and same.top1_agreement == pytest.approx(1.0)
    assert identical_word_share(a.vocab, a.vocab, ["hello", "world"]) == 1.0
    assert topk_overlap(a, b, [""], 5) == (None, None, 0)
    words = sample_words(["Zebra zebra quokka"], limit=10_000)
    assert words[: len(set(COMMON_WORDS))] == list(dict.fromkeys(COMMON_WORDS))
    assert "Zebra" in words and "quokka" in words


# -- quick mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weaker", "verdict"),
    [(0.76, "compatible"), (0.704, "risky"), (0.48, "incompatible")],  # 5%, 12%, 40% of 0.8
)
def test_quick_mode_with_given_scores(hetero, weaker, verdict):
    a, b = _names(hetero)
    r = check_compatibility(hetero, scores={a: 0.8, b: weaker}, topk_overlap=False)
    assert isinstance(r, CompatibilityReport)
    assert r.mode == "quick" and r.task is None and r.n_items is None
    assert r.verdict == verdict and r.pairs[0].verdict == verdict
    assert r.primary == a and r.member(a).is_primary
    assert r.member(b).score_source == "given"
    assert r.member(b).gap_to_best == pytest.approx(1 - weaker / 0.8)
    assert r.recommendation.use_ensemble == (verdict == "compatible")
    assert r.pairs[0].vocabulary is not None and r.pairs[0].vocabulary.topk_overlap is None
    assert "response lengths not measured" in " ".join(r.reasons)


@pytest.mark.parametrize(("ratio", "verdict"), [(1.2, "compatible"), (3.0, "incompatible")])
def test_quick_mode_with_given_lengths(hetero, ratio, verdict):
    a, b = _names(hetero)
    r = check_compatibility(
        hetero, scores={a: 0.8, b: 0.78}, lengths={a: 100, b: 100 * ratio}, vocabulary=False
    )
    assert r.verdict == verdict
    assert r.member(b).length_ratio_to_primary == pytest.approx(ratio)
    assert r.pairs[0].vocabulary is None
    assert f"{ratio:.2f}x" in r.table()


def test_quick_mode_without_scores_is_unknown_and_keeps_members(hetero):
    r = check_compatibility(hetero)
    assert r.mode == "quick" and r.verdict == "unknown" and r.primary is None
    assert r.recommendation.members == hetero.member_names
    v = r.pairs[0].vocabulary
    assert v is not None and v.topk_overlap is not None and v.positions_compared > 0
    assert "no scores" in r.table()


def test_scores_by_source_or_position_and_bad_names(hetero, tiny_dirs):
    src = str(tiny_dirs["sentencepiece_bpe"])
    r = check_compatibility(hetero, scores={"0": 0.5, src: 0.25}, vocabulary=False)
    assert r.members[1].score == 0.25 and r.verdict == "incompatible"
    with pytest.raises(ConfigError, match="no member named nope"):
        check_compatibility(hetero, scores={"nope": 1.0}, vocabulary=False)
    with pytest.raises(ConfigError):
        check_compatibility(hetero, scores={"0": -1.0}, vocabulary=False)
    with pytest.raises(ConfigError):
        check_compatibility(hetero, mode="fast", vocabulary=False)  # type: ignore[arg-type]


def test_custom_thresholds(hetero):
    a, b = _names(hetero)
    th = Thresholds(compatible_gap=0.5, incompatible_gap=0.6)
    r = check_compatibility(hetero, scores={a: 0.8, b: 0.48}, thresholds=th, vocabulary=False)
    assert r.verdict == "compatible" and r.thresholds == th


# -- measured mode ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle(hetero):
    """Each member's greedy answers to QUESTIONS, for examples with a known score per member."""
    task = custom_task([{"question": q, "answer": "?"} for q in QUESTIONS], **ORACLE_FORMAT)
    outs = {
        name: [
            task.extract(r.text, it) if r else None for r, it in zip(run_task(e, task), task.items)
        ]
        for name, e in member_engines(hetero).items()
    }
    a, b = _names(hetero)
    usable = [
        i
        for i in range(len(QUESTIONS))
        if outs[a][i]
        and outs[b][i]
        and normalize_answer(outs[a][i] or "") != normalize_answer(outs[b][i] or "")
    ]
    assert len(usable) >= 25, f"only {len(usable)} questions where the tiny members differ"
    return outs, usable[:25]


def _task(hetero, oracle, b_right: int):
    """25 examples: the first member answers all right, the second exactly ``b_right``."""
    (outs, usable), (a, b) = oracle, _names(hetero)
    examples = []
    for n, i in enumerate(usable):
        answers = [outs[a][i]]
        if n < b_right:
            answers.append(outs[b][i])
        examples.append({"question": QUESTIONS[i], "answer": answers})
    return custom_task(examples, **ORACLE_FORMAT)


@pytest.mark.parametrize(
    ("b_right", "verdict"),
    [(24, "compatible"), (22, "risky"), (15, "incompatible")],  # gaps of 4%, 12%, 40%
)
def test_measured_mode_on_own_examples_every_gap_path(hetero, oracle, b_right, verdict):
    a, b = _names(hetero)
    r = check_compatibility(
        hetero,
        task=_task(hetero, oracle, b_right),
        lengths={a: 1.0, b: 1.0},  # measured lengths replace given ones
        topk_overlap=False,
        progress=False,
        with_ensemble=True,
    )
    assert r.mode == "measured" and r.task == "examples" and r.n_items == 25
    assert r.member(a).score == 1.0 and r.member(a).score_source == "measured"
    assert r.member(b).score == pytest.approx(b_right / 25)
    assert r.member(b).n_items == 25
    assert r.pairs[0].gap_verdict == verdict
    # The length rule may add "incompatible" on top; the report must be consistent either way.
    ratio = r.pairs[0].length_ratio
    assert ratio is not None and r.member(a).median_response_chars is not None
    assert r.pairs[0].length_verdict == ("incompatible" if ratio > 2 else "compatible")
    expected = "incompatible" if ratio > 2 else verdict
    assert r.verdict == expected
    assert r.ensemble is not None and r.ensemble.n_items == 25
    assert r.ensemble.gain_over_best == pytest.approx(r.ensemble.score - 1.0)
    if expected == "compatible":
        assert r.recommendation.members == [a, b]
    else:
        assert r.recommendation.members == [a] and not r.recommendation.use_ensemble


def test_measured_mode_on_a_bundled_format_with_progress(hetero, capsys):
    r = check_compatibility(
        hetero, task="multiple-choice", n_items=6, topk_overlap=False, progress=True
    )
    err = capsys.readouterr().err
    assert "ARC-Challenge" in err and "6" in err  # the tqdm bar
    assert r.mode == "measured" and r.task == "ARC-Challenge (train)" and r.n_items == 6
    assert all(m.score_source == "measured" for m in r.members)
    # Tiny models are at chance on multiple choice: the performance verdict must be unknown.
    if all(m.score is not None and m.score <= 0.25 for m in r.members):
        assert r.pairs[0].gap_verdict == "unknown"
        assert "chance" in " ".join(r.pairs[0].reasons)


def test_measured_mode_default_task_and_errors(hetero):
    with pytest.raises(ConfigError):
        check_compatibility(hetero, mode="measured", n_items=0)
    with pytest.raises(ConfigError, match="unknown task"):
        check_compatibility(hetero, task="squad", vocabulary=False)
