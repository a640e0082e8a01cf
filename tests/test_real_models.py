"""The core engine checks on the two real offline models (SmolLM2-135M-Instruct + Gemma-3-270M).

Their tokenizers differ (byte-level BPE of 49,152 vs SentencePiece BPE of 262,144 with byte
fallback), which is the case UniTE exists for. ``make test`` installs both, so CI runs these.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import real_models_mark
from reference import as_engine_text, member_oracle, reference_generate, transformers_greedy

from unite_integrations import UniTEEngine

pytestmark = [
    pytest.mark.real,
    real_models_mark,
]

ALIASES = ("smollm2-135m-instruct", "gemma-3-270m")
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "中文：北京是",
    "My favourite emoji is 🎉 because",
    "  Indented text\nand a new line",
]


@pytest.fixture(scope="module")
def pair() -> UniTEEngine:
    return UniTEEngine(list(ALIASES), top_k=10, check_invariants=True, retokenize_window=10_000)


@pytest.fixture(scope="module")
def singles(pair: UniTEEngine) -> dict[str, UniTEEngine]:
    return {a: UniTEEngine([a], top_k=10, check_invariants=True) for a in ALIASES}


@pytest.mark.parametrize("alias", ALIASES)
def test_single_real_member_equals_generate(singles, alias):
    engine = singles[alias]
    for prompt in PROMPTS[:3]:
        expected, stopped, n = transformers_greedy(engine.members[0], prompt, 12)
        got = engine.generate([prompt], max_new_tokens=12)[0]
        assert got.text == as_engine_text(expected)
        assert got.usage.output_tokens == n
        assert got.finish_reason == ("stop" if stopped else "length")


def test_real_pair_equals_the_literal_reference(pair):
    models = [m.model for m in pair.members]
    vocabs = [member_oracle(m) for m in pair.members]
    for prompt in PROMPTS:
        prompts = [m.encode_prompt(prompt) for m in pair.members]
        expected = reference_generate(
            models, vocabs, prompts, [1.0, 1.0], k=10, max_new_tokens=10, window=None
        )
        got = pair.generate([prompt], max_new_tokens=10)[0]
        assert got.text == as_engine_text(expected.text), prompt
        for t, ps in zip(got.provenance.tokens, expected.probs, strict=True):
            assert list(t.probs.values()) == pytest.approx(ps, rel=1e-3, abs=1e-5), prompt


def test_real_pair_batched_streamed_and_stopped(pair):
    batched = pair.generate(PROMPTS, max_new_tokens=12)
    for prompt, got in zip(PROMPTS, batched):
        alone = pair.generate([prompt], max_new_tokens=12)[0]
        assert got.text == alone.text
        streamed = "".join(c.text for c in pair.stream(prompt, max_new_tokens=12))
        assert streamed == alone.text
    # A stop string that straddles two chosen strings is cut before, and never streamed.
    first = batched[0]
    pieces = [t.text for t in first.provenance.tokens]
    stop = pieces[0][-1] + pieces[1][:2]
    stopped = pair.generate([PROMPTS[0]], max_new_tokens=12, stop=[stop])[0]
    assert stopped.text == first.text[: first.text.index(stop)]
    assert stopped.finish_reason == "stop"
    assert stop not in "".join(
        c.text for c in pair.stream(PROMPTS[0], max_new_tokens=12, stop=[stop])
    )


def test_real_pair_chat_uses_each_template_and_the_base_model_fallback(pair):
    conversation = [{"role": "user", "content": "Name a colour."}]
    rendered = [m.tokenizer.decode(m.encode_prompt(conversation)) for m in pair.members]
    assert "<|im_start|>assistant" in rendered[0]
    assert rendered[1].rstrip().endswith("Assistant:")  # Gemma-3-270M is a base model
    r = pair.generate([conversation], max_new_tokens=16)[0]
    assert "\nUser:" not in r.text
    assert r.usage.input_tokens == len(pair.members[0].encode_prompt(conversation))


def test_real_pair_seeded_sampling_and_threads(pair):
    a = pair.generate(PROMPTS[:2], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=5)
    b = pair.generate(PROMPTS[:2], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=5)
    assert [r.text for r in a] == [r.text for r in b]
    prompts = (PROMPTS * 2)[:8]
    alone = [pair.generate([p], max_new_tokens=6)[0].text for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: pair.generate([p], max_new_tokens=6)[0].text, prompts))
    assert together == alone


def test_real_pair_members_really_disagree(pair):
    """Provenance shows both members winning tokens, and tokenizations that differ."""
    results = pair.generate(PROMPTS, max_new_tokens=12)
    wins = [r.provenance.win_share for r in results]
    assert any(w["gemma-3-270m"] > 0 for w in wins) and any(
        w["smollm2-135m-instruct"] > 0 for w in wins
    )
    counts = [r.usage.output_tokens_per_member for r in results]
    assert any(len(set(c.values())) > 1 for c in counts)


def test_real_pair_past_gemmas_sliding_window_equals_the_reference(pair):
    """Gemma-3's local layers keep a 512-token window; rollbacks past it must still be exact."""
    prompt = " ".join(f"Item {n}: the {['red', 'blue', 'green'][n % 3]} box." for n in range(90))
    prompt += "\nThe last item is"
    assert len(pair.members[1].encode_prompt(prompt)) > 512
    models = [m.model for m in pair.members]
    vocabs = [member_oracle(m) for m in pair.members]
    prompts = [m.encode_prompt(prompt) for m in pair.members]
    expected = reference_generate(
        models, vocabs, prompts, [1.0, 1.0], k=10, max_new_tokens=12, window=None
    )
    got = pair.generate([prompt], max_new_tokens=12)[0]
    assert got.text == as_engine_text(expected.text)
