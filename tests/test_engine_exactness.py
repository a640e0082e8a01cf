"""The engine against transformers' own ``generate`` and against the independent reference rule.

Both oracles (``reference.py``) derive canonical bytes, end ids and in-context encodings from the
tokenizer files and ``generation_config`` themselves; nothing here reads the engine's ``Vocab``.
Outputs are compared as bytes: the engine's ``str`` must be exactly the oracle's bytes decoded
strictly where they are valid UTF-8; where they are not, the per-step strings, proposers and every
member's probability of each chosen string must match too, so a differing partial character cannot
hide behind U+FFFD (and a text cut inside a character is run again a few steps longer).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PROMPTS
from reference import (
    Reference,
    as_engine_text,
    member_oracle,
    reference_of,
    transformers_greedy,
)
from tiny_models import FAMILIES

from unite_integrations import UniTEEngine


def _complete(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("family", FAMILIES)
def test_single_member_equals_transformers_greedy_generate(make_engine, tiny_dirs, family):
    # The engine never lets special tokens other than end-of-sequence be chosen (spec 1.2);
    # generate() matches that when told to suppress them (see reference.transformers_greedy).
    engine = make_engine(tiny_dirs[family])
    for prompt in PROMPTS[:12]:
        for budget in (16, 19):
            expected, stopped, n = transformers_greedy(engine.members[0], prompt, budget)
            result = engine.generate([prompt], max_new_tokens=budget)[0]
            assert result.text == as_engine_text(expected), (prompt, expected)
            assert result.finish_reason == ("stop" if stopped else "length")
            assert result.usage.output_tokens == n
            if _complete(expected):
                break  # a complete text: the longer budget adds nothing


def _with_generation_eos(src: Path, dst: Path, extra: int) -> Path:
    """A copy of a tiny model whose ``generation_config`` also ends sequences at ``extra``."""
    shutil.copytree(src, dst)
    path = dst / "generation_config.json"
    config = json.loads(path.read_text())
    eos = config.get("eos_token_id")
    config["eos_token_id"] = [*(eos if isinstance(eos, list) else [eos]), extra]
    path.write_text(json.dumps(config))
    return dst


def test_end_ids_from_generation_config_end_the_sequence(tiny_dirs, tmp_path, cache_dir):
    """An id that only ``generation_config`` names as end (here the piece ``.``, which the tiny
    model writes often) must stop generation exactly where transformers' generate stops."""
    plain = UniTEEngine([str(tiny_dirs["bytelevel_bpe"])], cache_dir=cache_dir)
    dot = member_oracle(plain.members[0]).exact[b"."]
    src = _with_generation_eos(tiny_dirs["bytelevel_bpe"], tmp_path / "dot-ends", dot)
    engine = UniTEEngine([str(src)], cache_dir=cache_dir, check_invariants=True)
    assert dot in member_oracle(engine.members[0]).end_ids
    stopped_at_dot = 0
    for prompt in PROMPTS[:12]:
        expected, stopped, _ = transformers_greedy(engine.members[0], prompt, 24)
        result = engine.generate([prompt], max_new_tokens=24)[0]
        assert result.text == as_engine_text(expected), prompt
        assert result.finish_reason == ("stop" if stopped else "length")
        free = plain.generate([prompt], max_new_tokens=24)[0].text
        stopped_at_dot += stopped and free.startswith(result.text + ".")
    assert stopped_at_dot >= 3, "the tiny model must reach the extra end id on several prompts"


@pytest.mark.parametrize("family", FAMILIES)
def test_model_ensembled_with_itself_equals_model_alone(make_engine, tiny_dirs, family):
    alone = make_engine(tiny_dirs[family])
    doubled = make_engine(tiny_dirs[family], tiny_dirs[family])
    for prompt in PROMPTS[:10]:
        a = alone.generate([prompt], max_new_tokens=16)[0]
        b = doubled.generate([prompt], max_new_tokens=16)[0]
        assert a.text == b.text
        assert b.provenance.agreement_rate == 1.0


def _reference(engine: UniTEEngine, prompt: str, budget: int, weights, window) -> Reference:
    return reference_of(engine, prompt, budget, weights=list(weights), k=5, window=window)


def _assert_same(engine: UniTEEngine, prompt: str, budget: int, weights, window) -> Reference:
    """Engine == reference, as bytes, per step and in who proposed each string."""
    for b in (budget, budget + 3):
        expected = _reference(engine, prompt, b, weights, window)
        got = engine.generate([prompt], max_new_tokens=b)[0]
        assert got.text == as_engine_text(expected.text), (prompt, expected.text)
        assert got.finish_reason == ("stop" if expected.stopped else "length"), prompt
        assert got.usage.output_tokens == len(expected.pieces), prompt
        names = engine.member_names
        assert [t.proposers for t in got.provenance.tokens] == [
            [names[i] for i in p] for p in expected.proposers
        ], prompt
        for t, ps in zip(got.provenance.tokens, expected.probs):
            assert list(t.probs.values()) == pytest.approx(ps, rel=1e-4, abs=1e-6), prompt
        if _complete(expected.text):
            return expected
    return expected


@pytest.mark.parametrize("which", ["hetero", "trio"])
def test_engine_equals_reference_rule_whole_text_retokenization(
    request, make_engine, tiny_dirs, which
):
    """The paper's rule: case (b) re-tokenizes the member's whole generated text."""
    engine = request.getfixturevalue(which)
    wide = make_engine(*[m.spec.source for m in engine.members], retokenize_window=10_000)
    cases_b = 0
    for prompt in PROMPTS:
        expected = _assert_same(wide, prompt, 12, [1.0] * len(wide.members), None)
        cases_b += sum(len(p) < len(wide.members) for p in expected.proposers)
    assert cases_b > 0, "no step needed a member to take a string it did not propose"


@pytest.mark.parametrize("which", ["hetero", "trio"])
def test_engine_equals_reference_rule_default_window(request, which):
    """The engine's default window of 32 ids, on outputs long enough to pass it."""
    engine = request.getfixturevalue(which)
    assert engine.config.retokenize_window == 32
    longest = 0
    for prompt in PROMPTS[:6]:
        expected = _assert_same(engine, prompt, 40, [1.0] * len(engine.members), 32)
        longest = max(longest, len(expected.pieces))
    assert longest > 32, "no output passed the window"


@pytest.mark.parametrize("weights", [(0.85, 0.15), (0.15, 0.85), (3.0, 1.0)])
def test_engine_equals_reference_rule_with_weights(make_engine, tiny_dirs, weights):
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], weights=weights
    )
    equal = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"])
    differs = 0
    for prompt in PROMPTS[:12]:
        expected = _assert_same(engine, prompt, 12, weights, 32)
        differs += expected.text != _reference(equal, prompt, 12, (1.0, 1.0), 32).text
    assert differs > 0, "these weights change no output: the test could not see them ignored"


def test_text_is_split_across_tokenizers(hetero):
    """The pair must really disagree on tokenization, or the tests above prove little."""
    results = hetero.generate(PROMPTS, max_new_tokens=12)
    per_member = [r.usage.output_tokens_per_member for r in results]
    names = hetero.member_names
    assert any(c[names[0]] != c[names[1]] for c in per_member)
