"""Batching, streaming, stop strings, sampling, threads, re-tokenization window, chat."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import PROMPTS

from unite_integrations.engine.decode import retokenize_tail
from unite_integrations.engine.engine import stream_chunk
from unite_integrations.engine.scheduler import Done
from unite_integrations.errors import ConfigError


def test_batched_equals_row_by_row(hetero, trio):
    for engine in (hetero, trio):
        batched = engine.generate(PROMPTS, max_new_tokens=14)
        for prompt, got in zip(PROMPTS, batched):
            alone = engine.generate([prompt], max_new_tokens=14)[0]
            assert got.text == alone.text, prompt
            assert got.finish_reason == alone.finish_reason


def test_streamed_deltas_join_to_the_generated_text(hetero):
    for prompt in PROMPTS[:12]:
        chunks = list(hetero.stream(prompt, max_new_tokens=14))
        full = hetero.generate([prompt], max_new_tokens=14)[0]
        assert "".join(c.text for c in chunks) == full.text
        assert chunks[-1].finish_reason == full.finish_reason
        assert chunks[-1].result is not None and chunks[-1].result.text == full.text
        assert all(c.finish_reason is None for c in chunks[:-1])


def _split_stop(result) -> str | None:
    """A stop string that straddles the boundary between two chosen strings, if any."""
    pieces = [t.text for t in result.provenance.tokens]
    for n in range(1, len(pieces) - 1):
        left, right = pieces[n - 1], pieces[n]
        if left and right and "\ufffd" not in left + right:
            return left[-1] + right[:2]
    return None


def test_stop_string_is_never_emitted_even_when_split_across_steps(hetero):
    tried = 0
    for prompt in PROMPTS:
        free = hetero.generate([prompt], max_new_tokens=16)[0]
        stop = _split_stop(free)
        if stop is None:
            continue
        tried += 1
        cut = free.text.index(stop)
        stopped = hetero.generate([prompt], max_new_tokens=16, stop=[stop])[0]
        assert stopped.text == free.text[:cut]
        assert stopped.finish_reason == "stop"
        streamed = "".join(c.text for c in hetero.stream(prompt, max_new_tokens=16, stop=[stop]))
        assert streamed == free.text[:cut]
        assert stop not in streamed
    assert tried >= 5


def test_seed_reproduces_a_sampled_output(hetero):
    kw = {"max_new_tokens": 16, "temperature": 1.0, "top_p": 0.9}
    a = hetero.generate(PROMPTS[:6], seed=123, **kw)
    b = hetero.generate(PROMPTS[:6], seed=123, **kw)
    c = hetero.generate(PROMPTS[:6], seed=7, **kw)
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.text for r in a] != [r.text for r in c]


def test_decoding_leaves_torchs_global_generator_alone(hetero):
    """Sampled rows draw from their own generators and greedy rows draw nothing, so a caller's
    ``torch.manual_seed`` sequence is the same with or without a call in between: greedy,
    seeded and unseeded sampled rows in one batch."""
    state = torch.get_rng_state()
    with hetero._scheduler._cond:  # the worker admits the three requests at once
        requests = [
            *hetero.submit([PROMPTS[0]], max_new_tokens=6),
            *hetero.submit([PROMPTS[1]], max_new_tokens=6, temperature=1.0, seed=3),
            *hetero.submit([PROMPTS[2]], max_new_tokens=6, temperature=0.8),
        ]
    results = [r.next_event().results[0] for r in requests]
    assert all(r.usage.output_tokens > 0 for r in results)
    assert torch.equal(torch.get_rng_state(), state)


def test_sampling_with_tiny_top_p_is_greedy(hetero):
    greedy = hetero.generate(PROMPTS[:6], max_new_tokens=12)
    nucleus = hetero.generate(PROMPTS[:6], max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=1)
    assert [r.text for r in greedy] == [r.text for r in nucleus]


def test_eight_threads_get_the_answers_they_get_alone(hetero):
    prompts = PROMPTS[:8]
    alone = [hetero.generate([p], max_new_tokens=12)[0].text for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(lambda p: hetero.generate([p], max_new_tokens=12)[0].text, prompts)
        )
    assert together == alone


def test_short_retokenization_window_keeps_the_invariant(make_engine, tiny_dirs):
    # check_invariants is on in every engine the tests build: each step asserts that every
    # member's ids spell exactly the shared text, here with a window of two tokens.
    engine = make_engine(
        tiny_dirs["sentencepiece_unigram"], tiny_dirs["bytelevel_bpe"], retokenize_window=2
    )
    results = engine.generate(PROMPTS, max_new_tokens=16)
    assert sum(r.usage.output_tokens for r in results) > 4 * len(PROMPTS)


def test_retokenize_tail_equals_full_retokenization_when_the_window_covers_it(hetero):
    vocab = hetero.members[1].vocab
    text = "naïve 中文 text 👨‍👩‍👧 ok".encode()
    for cut in range(1, len(text)):
        held = vocab.encode(text[:cut])
        prompt = [7, 8, 9]
        keep, new = retokenize_tail(vocab, prompt + held, 3, text[cut:], window=10_000)
        assert (prompt + held)[:keep] + new == prompt + vocab.encode(text)


def test_chat_prompts_use_each_members_template(trio):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    result = trio.generate([conversation], max_new_tokens=8)[0]
    # Without stop strings, a row stops before its budget exactly when END won.
    assert result.finish_reason == ("stop" if result.usage.output_tokens < 8 else "length")
    assert result.usage.input_tokens == len(trio.members[0].encode_prompt(conversation))
    rendered = [m.tokenizer.decode(m.encode_prompt(conversation)) for m in trio.members]
    assert "[INST]" in rendered[0] and "<|im_start|>" in rendered[1]
    assert "<start_of_turn>" in rendered[2]


def test_provenance_accounts_for_every_token(trio):
    r = trio.generate(["Once upon a time"], max_new_tokens=12)[0]
    prov = r.provenance
    assert "".join(t.text for t in prov.tokens).startswith(r.text)
    assert len(prov.tokens) == r.usage.output_tokens
    assert sum(prov.win_share.values()) == pytest.approx(1.0)
    for t in prov.tokens:
        assert set(t.probs) == set(prov.members)
        assert t.winner == max(prov.members, key=lambda m: t.probs[m])


def test_members_stepping_in_a_thread_pool_give_the_same_text(make_engine, tiny_dirs):
    """Members on different devices run their forward passes in a pool; the result is the same."""
    from concurrent.futures import ThreadPoolExecutor as Pool

    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_unigram"])
    sequential = [r.text for r in engine.generate(PROMPTS[:6], max_new_tokens=12)]
    engine._ens.pool = Pool(2)
    try:
        pooled = [r.text for r in engine.generate(PROMPTS[:6], max_new_tokens=12)]
    finally:
        engine._ens.pool.shutdown()
        engine._ens.pool = None
    assert pooled == sequential


def test_calls_waiting_together_are_batched_and_get_their_own_answers(make_engine, tiny_dirs):
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=3)
    prompts = PROMPTS[:8]
    alone = [engine.generate([p], max_new_tokens=10)[0].text for p in prompts]
    before = dict(engine.stats)
    with ThreadPoolExecutor(9) as pool:
        # A long call keeps the worker busy while the eight others queue up behind it.
        busy = pool.submit(
            engine.generate, ["Once upon a time"], max_new_tokens=300, min_new_tokens=300
        )
        together = list(
            pool.map(lambda p: engine.generate([p], max_new_tokens=10)[0].text, prompts)
        )
        busy.result()
    assert together == alone
    assert engine.stats["requests"] - before["requests"] == 9
    assert engine.stats["batches"] - before["batches"] < 9


def test_an_abandoned_stream_stops_and_the_engine_goes_on(hetero):
    before = hetero.generate(["Hello world"], max_new_tokens=5)[0]
    stream = hetero.stream("Once upon a time", max_new_tokens=200, min_new_tokens=200)
    first = next(stream)
    assert first.text
    stream.close()
    after = hetero.generate(["Hello world"], max_new_tokens=5)[0]
    assert (after.text, after.finish_reason) == (before.text, before.finish_reason)
    # The steps decoded after the close are counted in test_cancellation.py.


def test_the_invariant_check_catches_a_member_whose_ids_do_not_spell_the_text(hetero, monkeypatch):
    """Every engine in the tests checks, after each step, that each member's ids spell the shared
    text; that check must be able to fail. A feed-back that gives the second member one id too
    many breaks the invariant: the call fails naming the member and both spellings."""
    from unite_integrations.engine import decode

    real = decode._feed_back

    def one_too_many(ens, i, *args):  # type: ignore[no-untyped-def]
        keep, new = real(ens, i, *args)
        return (keep, new + new[-1:]) if i == 1 and new else (keep, new)

    monkeypatch.setattr(decode, "_feed_back", one_too_many)
    with pytest.raises(AssertionError, match=r"member '.+' row 0: ids spell b'.*', text is b'"):
        hetero.generate([PROMPTS[0]], max_new_tokens=4)
    monkeypatch.undo()
    assert hetero.generate([PROMPTS[0]], max_new_tokens=4)[0].usage.output_tokens > 0


@pytest.mark.parametrize("gate", [None, 0.0])
def test_min_new_tokens_holds_the_end_back(hetero, gate):
    """END may not win before ``min_new_tokens``, in the union's choice and in the primary's own
    choice for a gated row (gate 0: every row): the tiny members end early on several prompts,
    and with ``min_new_tokens`` write at least that many tokens, the same text up to where they
    stopped."""
    least, early = 8, 0
    for prompt in PROMPTS[:12]:
        free = hetero.generate([prompt], max_new_tokens=16, gate=gate)[0]
        held = hetero.generate([prompt], max_new_tokens=16, min_new_tokens=least, gate=gate)[0]
        early += free.finish_reason == "stop" and len(free.provenance.tokens) < least
        assert len(held.provenance.tokens) >= least, prompt
        assert held.text.startswith(free.text), prompt
    assert early >= 3, "the tiny members must end early on several prompts"


def test_per_row_seeds_equal_separate_seeded_calls(hetero):
    """``submit(seeds=...)``: row i samples as a call of its own with ``seed=seeds[i]`` (two rows
    of one prompt with two seeds are two different samples); greedy rows ignore seeds."""
    kw = {"max_new_tokens": 12, "temperature": 1.2}
    prompts, seeds = [PROMPTS[0], PROMPTS[0], PROMPTS[3]], [5, 17, 5]
    [request] = hetero.submit(prompts, seeds=seeds, **kw)
    together = [r.text for r in request.next_event().results]
    alone = [hetero.generate([p], seed=s, **kw)[0].text for p, s in zip(prompts, seeds)]
    assert together == alone
    assert together[0] != together[1]  # one prompt, two seeds: two samples
    greedy = hetero.generate(prompts, seeds=seeds, max_new_tokens=12)
    assert [r.text for r in greedy] == [r.text for r in hetero.generate(prompts, max_new_tokens=12)]


def test_a_streamed_request_of_several_rows_tags_each_rows_deltas(hetero):
    """Each row of a streamed request streams its own deltas, tagged with the row; the last
    event gives each row's held-back text and result: per row, they join to its text."""
    prompts, seeds = [PROMPTS[0], PROMPTS[0], PROMPTS[1]], [1, 2, 3]
    kw = {"max_new_tokens": 14, "min_new_tokens": 6, "temperature": 1.2, "stop": ["zz", "e."]}
    [request] = hetero.submit(prompts, stream=True, seeds=seeds, **kw)
    texts = ["", "", ""]
    while not isinstance(event := request.next_event(), Done):
        texts[event.row] += event.text
    assert [len(event.results), len(event.texts)] == [3, 3]
    assert [t + last for t, last in zip(texts, event.texts)] == [r.text for r in event.results]
    assert all(texts), texts  # every row streamed
    alone = [hetero.generate([p], seed=s, **kw)[0].text for p, s in zip(prompts, seeds)]
    assert [r.text for r in event.results] == alone
    last = [stream_chunk(event, r) for r in range(3)]
    assert [(c.row, c.text, c.result) for c in last] == [
        (r, event.texts[r], event.results[r]) for r in range(3)
    ]


@pytest.mark.parametrize(
    ("seeds", "param"),
    [
        ([1, 2], "seeds"),
        ([1, 2, 3, 4], "seeds"),
        ([1, True, 3], "seeds[1]"),
        ([1, -1, 3], "seeds[1]"),
        ([1, 2, 2**64], "seeds[2]"),
        ([1, "2", 3], "seeds[1]"),
        (5, "seeds"),
    ],
)
def test_bad_seeds_are_refused_before_anything_is_queued(hetero, seeds, param):
    before = hetero.stats["requests"]
    with pytest.raises(ConfigError) as e:
        hetero.submit(PROMPTS[:3], seeds=seeds, temperature=1.0, max_new_tokens=2)
    assert e.value.param == param and "seed" in str(e.value)
    assert hetero.metrics().queued == 0 and hetero.stats["requests"] == before
