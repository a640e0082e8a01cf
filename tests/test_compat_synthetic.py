"""The union combines knowledge across vocabularies: two tiny experts trained on different halves
of an invented fact set, and a negative control (issue 8, part 4).

The demonstration trains three tiny members in-process (about a minute on two CPUs) into a
temporary cache, then asserts what the docs page shows: the ensemble of the two experts answers
significantly more facts than either alone (exact McNemar) and the check calls them compatible;
an expert with a far weaker member is called incompatible and the ensemble is no better than the
expert alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_experts import (
    ATTRIBUTES,
    Demonstration,
    _balanced_sample,
    fact_task,
    make_facts,
    run_demonstration,
    train_member,
)

from unite_integrations.compat.evaluate import ENSEMBLE
from unite_integrations.errors import ConfigError


def test_facts_are_seeded_split_in_halves_and_scored_as_short_answers() -> None:
    facts = make_facts(20, seed=3)
    assert facts == make_facts(20, seed=3) and facts != make_facts(20, seed=4)
    assert len(facts) == 20 * len(ATTRIBUTES)
    assert {f.half for f in facts} == {0, 1}
    assert sum(f.half == 0 for f in facts) == sum(f.half == 1 for f in facts)
    assert len({f.entity for f in facts}) == 20
    for f in facts:
        assert f.value in ATTRIBUTES[f.attribute][1] and f.entity in f.question
    task = fact_task(facts)
    assert task.kind == "text" and task.chance == pytest.approx(1 / 8)
    item = task.items[0]
    assert task.text(item).endswith("\nAnswer:") and item.answers == (facts[0].value,)
    assert task.is_correct(f" {facts[0].value}\n", item)
    assert not task.is_correct(" nowhere", item)
    with pytest.raises(ConfigError, match="n_entities"):
        make_facts(1)
    with pytest.raises(ConfigError, match="no facts"):
        fact_task([])


def test_the_calibration_sample_takes_as_many_facts_from_each_half() -> None:
    # A sample that favours one half favours its expert: the check's gap would measure the sample.
    facts = make_facts(30, seed=1)
    every = _balanced_sample(facts, None, seed=0)
    assert every == list(range(len(facts)))
    some = _balanced_sample(facts, 20, seed=0)
    assert len(some) == 20 and some == sorted(set(some))
    assert sum(facts[i].half == 0 for i in some) == 10
    assert some == _balanced_sample(facts, 20, seed=0) != _balanced_sample(facts, 20, seed=1)
    with pytest.raises(ConfigError, match="calibration_items"):
        _balanced_sample(facts, 1, seed=0)


def test_train_member_validates_and_caches(tmp_path: Path) -> None:
    facts = make_facts(6)
    with pytest.raises(ConfigError, match="family"):
        train_member("wordpiece", facts, half=0, cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="half"):
        train_member("bytelevel_bpe", facts, half=2, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="steps"):
        train_member("bytelevel_bpe", facts, half=0, steps=-1, cache_dir=tmp_path)
    first = train_member("sentencepiece_bpe", facts, half=1, steps=2, cache_dir=tmp_path)
    assert first.parent == tmp_path / "synthetic-facts" and (first / "config.json").exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = train_member("sentencepiece_bpe", facts, half=1, steps=2, cache_dir=tmp_path)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == stamp
    other = train_member("sentencepiece_bpe", facts, half=1, steps=3, cache_dir=tmp_path)
    assert other != first


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demonstration:
    return run_demonstration(cache_dir=tmp_path_factory.mktemp("synthetic-cache"))


def test_each_expert_knows_its_half_and_guesses_the_other(demo: Demonstration) -> None:
    case = demo.case("experts")
    a, b, ens = case.halves
    assert a.half0 >= 0.9 * a.n_half0 and a.half1 <= 0.3 * a.n_half1
    assert b.half1 >= 0.9 * b.n_half1 and b.half0 <= 0.3 * b.n_half0
    assert ens.system == ENSEMBLE


def test_two_experts_ensemble_answers_significantly_more_than_either(demo: Demonstration) -> None:
    case = demo.case("experts")
    for member in case.members:
        cmp = case.versus(member)
        assert cmp.significant and cmp.verdict() == "better", cmp.text()
        assert cmp.difference.low > 0
    assert case.check.verdict == "compatible", case.check.summary()
    assert case.check.recommendation.use_ensemble
    assert set(case.check.recommendation.members) == set(case.members)


def test_expert_with_weak_member_is_incompatible_and_not_helped(demo: Demonstration) -> None:
    case = demo.case("control")
    expert, weak = case.members
    assert case.check.verdict == "incompatible", case.check.summary()
    assert case.check.recommendation.members == [expert]
    cmp = case.versus(expert)
    # No better than the expert alone: either no significant difference, or worse.
    assert cmp.verdict() in ("no significant difference", "worse"), cmp.text()
    assert case.result.result(weak).accuracy < 0.3


def test_demonstration_renders_markdown_and_plot(demo: Demonstration, tmp_path: Path) -> None:
    text = demo.markdown()
    assert "McNemar p" in text and "**compatible**" in text and "**incompatible**" in text
    assert text.count("| ensemble |") == 2
    out = demo.plot(tmp_path / "demo.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert Demonstration.model_validate_json(demo.model_dump_json()) == demo
