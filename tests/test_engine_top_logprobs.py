"""``top_logprobs``: the engine reports, per chosen token, the most likely strings of the mixed
distribution it was chosen from, and they equal the slow literal reference (``reference.py``)
computed for the same prefix."""

from __future__ import annotations

import math

import pytest
from conftest import PROMPTS
from reference import END, reference_of

from unite_integrations import UniTEEngine
from unite_integrations.errors import ConfigError


def _reference(engine: UniTEEngine, prompt: str, budget: int, temperature: float = 0.0):
    return reference_of(engine, prompt, budget, temperature=temperature)


def _key(candidate) -> object:
    """A candidate as the reference names strings: its bytes, or END."""
    return END if candidate.end else bytes(candidate.bytes)


def _assert_top_matches(engine, prompt, budget, n, temperature=0.0, **options):
    want = _reference(engine, prompt, budget, temperature)
    got = engine.generate(
        [prompt], max_new_tokens=budget, temperature=temperature, top_logprobs=n, **options
    )[0]
    tokens = got.provenance.tokens
    assert [bytes(t.bytes) for t in tokens] == want.pieces, prompt
    for t, dist in zip(tokens, want.dists):
        best = sorted(dist.items(), key=lambda e: -e[1])[:n]
        assert t.top is not None and len(t.top) == min(n, len(dist)), prompt
        assert [_key(c) for c in t.top] == [s for s, _ in best], prompt
        assert [c.logprob for c in t.top] == pytest.approx([math.log(p) for _, p in best], abs=1e-5)
        logprobs = [c.logprob for c in t.top]
        assert logprobs == sorted(logprobs, reverse=True)
        assert sum(math.exp(x) for x in logprobs) <= 1 + 1e-5
        assert t.logprob == pytest.approx(math.log(dist[bytes(t.bytes)]), abs=1e-5)
        assert t.top[0].bytes == t.bytes  # the most likely string is the one chosen
    return got


@pytest.mark.parametrize("n", [1, 3, 20])
def test_top_logprobs_equal_the_reference_mixed_distribution(hetero, n):
    # k=5 and two members: at most 10 union strings, so n=20 returns the whole union.
    for prompt in PROMPTS[:3] + PROMPTS[8:9]:
        _assert_top_matches(hetero, prompt, 6, n)


def test_top_logprobs_of_three_weighted_members(make_engine, tiny_dirs):
    engine = make_engine(
        tiny_dirs["sentencepiece_unigram"],
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
        weights=(2.0, 1.0, 1.0),
    )
    for prompt in PROMPTS[:2]:
        _assert_top_matches(engine, prompt, 5, 4)


def test_top_logprobs_follow_the_temperature(hetero):
    # A nucleus of one string takes the most likely string of the distribution at temperature
    # 0.7, which the reference computes the same way.
    for prompt in PROMPTS[:2]:
        _assert_top_matches(hetero, prompt, 5, 5, temperature=0.7, top_p=1e-6, seed=1)


def test_end_is_a_candidate(hetero):
    """END ranks among the strings like any other and shows as the primary's end token."""
    seen = False
    for prompt in PROMPTS:
        got = hetero.generate([prompt], max_new_tokens=8, top_logprobs=20)[0]
        for t in got.provenance.tokens:
            ends = [c for c in t.top or [] if c.end]
            assert len(ends) <= 1
            for c in ends:
                seen = True
                assert c.bytes == [] and c.text == hetero.members[0].tokenizer.eos_token
    assert seen


def test_no_top_logprobs_unless_asked_and_text_unchanged(hetero):
    plain = hetero.generate(PROMPTS[:2], max_new_tokens=6)
    asked = hetero.generate(PROMPTS[:2], max_new_tokens=6, top_logprobs=2)
    for p, a in zip(plain, asked):
        assert p.text == a.text
        assert all(t.top is None for t in p.provenance.tokens)
        assert all(len(t.top or []) == 2 for t in a.provenance.tokens)
        assert [t.logprob for t in a.provenance.tokens] == pytest.approx(
            [t.logprob for t in p.provenance.tokens], abs=1e-6
        )
        assert all(t.logprob == t.top[0].logprob for t in a.provenance.tokens)  # greedy


def test_rows_asking_different_counts_share_a_batch(hetero):
    """Per-row: in one batch, each row gets its own count, or none."""
    requests = [
        *hetero.submit([PROMPTS[0]], max_new_tokens=6, top_logprobs=3),
        *hetero.submit([PROMPTS[1]], max_new_tokens=6),
        *hetero.submit([PROMPTS[2]], max_new_tokens=6, top_logprobs=1),
    ]
    results = [r.next_event().results[0] for r in requests]
    counts = [
        {len(t.top) if t.top is not None else None for t in r.provenance.tokens} for r in results
    ]
    assert counts == [{3}, {None}, {1}]
    for prompt, r in zip(PROMPTS[:3], results):
        assert r.text == hetero.generate([prompt], max_new_tokens=6)[0].text


def test_gated_tokens_report_the_primary_distribution(hetero):
    """A gated token was chosen from the primary's own distribution: that is what is shown."""
    got = hetero.generate([PROMPTS[0]], max_new_tokens=6, gate=0.0, top_logprobs=3)[0]
    assert got.provenance.tokens and all(t.gated for t in got.provenance.tokens)
    for t in got.provenance.tokens:
        assert len(t.top) == 3 and t.top[0].bytes == t.bytes
        assert t.logprob == pytest.approx(t.top[0].logprob, abs=1e-6)
        assert t.logprob == pytest.approx(math.log(t.probs[hetero.member_names[0]]), abs=1e-6)
        assert sum(math.exp(c.logprob) for c in t.top) <= 1 + 1e-5


@pytest.mark.parametrize("bad", [-1, 21, True, 2.0, "3"])
def test_bad_top_logprobs_is_a_config_error(hetero, bad):
    with pytest.raises(ConfigError, match="top_logprobs"):
        hetero.generate(["x"], max_new_tokens=2, top_logprobs=bad)


def test_grammar_rows_report_the_unconstrained_distribution(hetero):
    """Under a grammar the figures are the union's before the grammar removed strings: the
    chosen string is any allowed one, and a string the grammar had to take from outside the
    union has no log-probability."""
    from unite_integrations.engine.constraints import Constraint

    plain = hetero.generate(
        ["A JSON object:"],
        max_new_tokens=24,
        constraint=Constraint.json_schema({"type": "object"}, max_string_length=8),
    )[0]
    got = hetero.generate(
        ["A JSON object:"],
        max_new_tokens=24,
        constraint=Constraint.json_schema({"type": "object"}, max_string_length=8),
        top_logprobs=5,
    )[0]
    assert got.text == plain.text
    for t, p in zip(got.provenance.tokens, plain.provenance.tokens):
        assert t.top is not None and 1 <= len(t.top) <= 5
        logprobs = [c.logprob for c in t.top]
        assert logprobs == sorted(logprobs, reverse=True)
        if t.logprob is None:  # taken outside the union
            assert p.logprob is None and bytes(t.bytes) not in {bytes(c.bytes) for c in t.top}
        else:
            assert t.logprob == pytest.approx(p.logprob, abs=1e-6) and t.logprob <= 0


def test_a_row_decoding_beside_a_prompt_still_prefilling_keeps_its_top_strings(
    make_engine, tiny_dirs
):
    """A step where some rows decide and others are still prefilled in chunks (no gate): the
    deciding rows keep their top strings (they were dropped there, and the report raised)."""
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefill_chunk=2
    )
    engine.reset_prefix_cache()
    [long] = engine.submit([" ".join(PROMPTS[:6])], max_new_tokens=2)
    [short] = engine.submit([PROMPTS[0]], max_new_tokens=6, top_logprobs=2)
    result = short.next_event().results[0]
    long.next_event()
    assert result.provenance.tokens and all(len(t.top) == 2 for t in result.provenance.tokens)
    assert result.text == engine.generate([PROMPTS[0]], max_new_tokens=6)[0].text


def test_placeholder_picks_take_a_deciding_rows_top_strings():
    """A step where only some rows decide (the others are still being prefilled, no gate) builds
    placeholder picks and puts the deciding rows' in: their top strings come along (they were
    dropped, and the row's report later raised)."""
    from unite_integrations.engine.picks import Picks

    decided = Picks([1], [4], [7], [True], [[4, 5]], [[0.5, 0.5]], [False], [[(7, 0.5), (9, 0.2)]])
    picks = Picks.none(3, 2)
    picks.put(2, decided, 0)
    assert picks.gid[2] == 7 and picks.likeliest == [[], [], [(7, 0.5), (9, 0.2)]]


def test_a_report_that_raises_fails_its_request_alone(make_engine, tiny_dirs):
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=3)
    real = engine._result

    def result(row):
        if row.opts.max_new_tokens == 3:  # the bad request's
            raise RuntimeError("a result that cannot be built")
        return real(row)

    engine._result = result
    try:
        bad = engine.submit([PROMPTS[0]], max_new_tokens=3)
        good = engine.submit([PROMPTS[1]], max_new_tokens=4)
        with pytest.raises(RuntimeError, match="cannot be built"):
            bad[0].next_event()
        assert good[0].next_event().results[0].text
    finally:
        del engine._result
    assert engine.generate([PROMPTS[2]], max_new_tokens=3)[0].text  # the engine goes on
