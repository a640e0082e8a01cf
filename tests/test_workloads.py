"""The traffic the package serves: conversations re-sending their history, prompts sharing a
beginning, long and short prompts together. Each behaviour is counted (ids reused, ids run
through the model, the order rows finish in) and checked against a fresh forward pass or the
literal reference of the rule; nothing is timed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import PROMPTS
from reference import as_engine_text, reference_of
from test_cancellation import gate_after
from test_reliability import needs_proc, rss_mib
from test_sequences import _assert_rows_as_alone, _gemma3, _tiny
from tiny_models import tiny_model_dir

from unite_integrations import UniTEEngine
from unite_integrations.engine.prefix import AUTO_CAP, BLOCK, PrefixStore
from unite_integrations.engine.scheduler import Done
from unite_integrations.engine.sequences import MemberBatch
from unite_integrations.errors import ConfigError

# -- the store: on by default, sized in memory ------------------------------------------------


def test_the_store_is_on_by_default_and_sized_in_bytes(make_engine: Any, tiny_dirs: Any) -> None:
    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"])
    assert engine.config.prefix_cache == "auto"
    m = engine.metrics()
    assert len(engine._ens.stores) == 2
    assert 0 < m.prefix_bytes_max <= 2 * AUTO_CAP
    sized = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefix_cache="1MiB"
    )
    assert sized.metrics().prefix_bytes_max == 2 * 2**20
    off = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefix_cache=0)
    assert off._ens.stores == [] and off.metrics().prefix_bytes_max == 0


@pytest.mark.parametrize("bad", ["x", "200%", "12 parsecs", -1, True, 1.5])
def test_a_store_size_that_means_nothing_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="prefix_cache"):
        UniTEEngine(["unused"], prefix_cache=bad)  # type: ignore[arg-type]


def test_both_adapters_keep_a_store_by_default() -> None:
    from unite_integrations.langchain import UniTEChatModel
    from unite_integrations.llama_index import UniTELLM

    assert UniTEChatModel(members=["a", "b"])._ensemble_config().prefix_cache == "auto"
    assert UniTELLM(members=["a", "b"]).ensemble_config.prefix_cache == "auto"
    assert UniTELLM(members=["a"], prefix_cache=0).ensemble_config.prefix_cache == 0


def _columns(ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    col = torch.tensor(ids, dtype=torch.float32)[None, :, None]  # [1 head, n, 1] per layer
    return [col, col + 1], [-col, -col - 1]


def test_a_store_in_bytes_evicts_the_least_recently_used_blocks_to_stay_within() -> None:
    per_block = 4 * BLOCK * 4  # two layers, keys and values, BLOCK float32 columns of width 1
    store = PrefixStore(max_bytes=3 * per_block)
    for start in range(0, 10 * BLOCK, 2 * BLOCK):
        ids = list(range(start + 1, start + 2 * BLOCK + 1))
        store.extend(store.match(ids, len(ids)), ids, *_columns(ids))
        assert store.bytes <= 3 * per_block
    assert store.bytes == 3 * per_block and len(store) == 3 * BLOCK
    last = list(range(8 * BLOCK + 1, 10 * BLOCK + 1))
    assert len(store.match(last, len(last))) == 2  # the newest chain stayed whole
    store.clear()
    assert store.bytes == 0


# -- a member's rows: answers stored, beginnings shared, no padding to the longest ------------


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    if request.param == "gemma3":
        return _gemma3(6)  # a sliding window every test sequence passes
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaForCausalLM, LlamaConfig)


@contextmanager
def finishing(engine: UniTEEngine) -> Iterator[list[Any]]:
    """The rows that finish while inside, in the order the worker builds their results (the
    order they finish in, whatever the threads reading them do)."""
    finished: list[Any] = []
    result = engine._result

    def record(row: Any) -> Any:
        finished.append(row)
        return result(row)

    engine._result = record  # type: ignore[method-assign]
    try:
        yield finished
    finally:
        del engine._result


@contextmanager
def counted(model: torch.nn.Module) -> Iterator[list[int]]:
    """Ids (padding included) that go through the model's forward passes while inside
    (counted at its decoder, which every pass runs)."""
    seen = [0]

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        seen[0] += 0 if ids is None else ids.numel()

    handle = model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def test_a_rows_answer_enters_the_store_when_it_leaves(model: torch.nn.Module) -> None:
    store = PrefixStore(10_000)
    batch = MemberBatch(model, [], 0, store)
    prompt = [(7 * n) % 90 + 1 for n in range(21)]
    batch.add_rows([prompt, prompt[:5]])
    for t in range(30):  # a generated answer with a rollback now and then (re-tokenization)
        keep = len(batch.ids[0]) - (2 if t % 7 == 6 else 0)
        batch.advance([(keep, [(t * 13) % 90 + 1] * (3 if t % 7 == 6 else 1)), None])
    held = list(batch.ids[0])
    assert len(store) == len(prompt) // BLOCK * BLOCK  # only the prompt so far
    batch.keep_rows([1])  # row 0 finished: every id it holds enters the store
    assert len(store) == len(held) // BLOCK * BLOCK  # whole blocks only
    # The next turn re-sends the answer and adds to it: it runs only what is new.
    turn = [*held, 50, 51, 52]
    reused = store.reused
    nxt = MemberBatch(model, [], 0, store)
    with counted(model) as ran:
        nxt.add_rows([turn])
    assert store.reused - reused == len(held) // BLOCK * BLOCK
    assert ran[0] == len(turn) - len(held) // BLOCK * BLOCK
    _assert_rows_as_alone(nxt, model)


def test_prompts_sharing_a_beginning_in_one_admission_run_it_once(model: torch.nn.Module) -> None:
    store = PrefixStore(10_000)
    shared = [(5 * n) % 90 + 1 for n in range(3 * BLOCK + 2)]
    tails = [[60 + r] * (2 + r) for r in range(4)]
    prompts = [shared + tail for tail in tails] + [[3, 4, 5]]  # and one that shares nothing
    batch = MemberBatch(model, [], 0, store)
    with counted(model) as ran:
        batch.add_rows(prompts)
    assert batch.ids == prompts  # in the call's order
    assert store.reused == 4 * 3 * BLOCK  # every sharing row took the three blocks
    # The beginning ran once (its three blocks); then every row ran only what follows, padded
    # to the longest of its group.
    assert ran[0] <= 3 * BLOCK + 5 * (2 + 2 + 3)
    _assert_rows_as_alone(batch, model)


def test_prompts_of_very_different_lengths_are_not_padded_to_the_longest(
    model: torch.nn.Module,
) -> None:
    prompts = [[(3 * n) % 90 + 1 for n in range(150)], [4, 5, 6], [7, 8], [9, 10, 11]]
    batch = MemberBatch(model, [], 0)
    with counted(model) as ran:
        batch.add_rows(prompts)
    assert batch.ids == prompts
    assert ran[0] == 150 + 3 * 3  # the long one alone, the short ones padded to 3
    _assert_rows_as_alone(batch, model)


def test_a_chunk_that_stops_inside_its_prompt_skips_the_output_layer(
    model: torch.nn.Module,
) -> None:
    prompt = [(11 * n) % 90 + 1 for n in range(23)]
    batch = MemberBatch(model, [], 0)
    batch.add_rows([prompt, [4, 5, 6]], now=[1, 3])  # the long one joins with one id
    heads = [0]
    handle = model.get_output_embeddings().register_forward_hook(
        lambda *_: heads.__setitem__(0, heads[0] + 1)
    )
    try:
        for start in range(1, 21, 5):  # four chunks inside the prompt: no output layer
            batch.advance([(start, prompt[start : start + 5]), None])
        assert heads[0] == 0
        batch.advance([None, (3, [9])])  # a decoding row's step computes its logits
        assert heads[0] == 1
        batch.advance([(21, prompt[21:]), None])  # the last chunk: its logits are read
        assert heads[0] == 2
    finally:
        handle.remove()
    _assert_rows_as_alone(batch, model)


# -- the engine: turns, chunked prefill, short requests beside long ones -------------------------


def test_a_conversations_next_turn_reuses_its_own_answer(make_engine: Any, tiny_dirs: Any) -> None:
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefix_cache="8MiB"
    )
    stores, members = engine._ens.stores, engine.members
    history = [{"role": "user", "content": " ".join(PROMPTS[:6])}]
    engine.reset_prefix_cache()
    for turn in range(3):
        n_in = [len(m.encode_prompt(history)) for m in members]
        answer = engine.generate([history], max_new_tokens=40, min_new_tokens=40)[0]
        if turn == 0:  # the answer entered the store with its prompt before the call returned
            held = [
                n + answer.usage.output_tokens_per_member[m.name] for n, m in zip(n_in, members)
            ]
            assert [len(s) for s in stores] == [h // BLOCK * BLOCK for h in held]
            assert all(len(s) > n // BLOCK * BLOCK for s, n in zip(stores, n_in))
        history += [
            {"role": "assistant", "content": answer.text},
            {"role": "user", "content": "And then?"},
        ]
        # The next turn, re-rendered by each member's chat template, takes from the store the
        # longest common prefix (whole blocks) of its ids and the ids the member held.
        ids = [m.encode_prompt(history) for m in members]
        want = [len(s.match(i, len(i) - 1)) * BLOCK for s, i in zip(stores, ids)]
        assert all(w >= n // BLOCK * BLOCK for w, n in zip(want, n_in))
        reused = [s.reused for s in stores]
        engine.generate([history], max_new_tokens=2)
        assert [s.reused - r for s, r in zip(stores, reused)] == want


@pytest.fixture(scope="module", params=["gemma3", "mistral", "full"])
def chunked(request: pytest.FixtureRequest, make_engine: Any, tiny_dirs: Any) -> UniTEEngine:
    """A pair whose prompts prefill 3 ids a step: every prompt is chunked many times."""
    if request.param == "full":
        second = tiny_dirs["sentencepiece_bpe"]
    else:
        second = tiny_model_dir("sentencepiece_bpe", sliding_window=4, sliding_layout=request.param)
    engine: UniTEEngine = make_engine(tiny_dirs["bytelevel_bpe"], second, prefill_chunk=3)
    return engine


def test_chunked_prefill_equals_the_reference(chunked: UniTEEngine) -> None:
    prompts = PROMPTS[:6]
    assert all(len(m.encode_prompt(p)) > 3 for p in prompts for m in chunked.members)
    got = chunked.generate(prompts, max_new_tokens=12)
    rolled_back = 0
    for prompt, result in zip(prompts, got):
        expected = reference_of(chunked, prompt, 12)
        assert result.text == as_engine_text(expected.text), prompt
        rolled_back += sum(1 not in p for p in expected.proposers)
    assert rolled_back > 0, "no member ever took a string it did not propose"


def test_prompts_prefilled_apart_equal_the_reference(
    make_engine: Any, tiny_dirs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Long prompts admitted beside short ones prefill in chunks longer than ``SPLIT_TOKENS``,
    each in a batch of its own that joins the shared cache whole; a sliding-window member
    (Gemma-3's layout) and a full-attention one, against the literal reference."""
    from unite_integrations.engine.sequences import SPLIT_TOKENS

    second = tiny_model_dir("sentencepiece_bpe", sliding_window=4, sliding_layout="gemma3")
    engine = make_engine(tiny_dirs["bytelevel_bpe"], second, prefill_chunk=SPLIT_TOKENS + 6)
    engine.reset_prefix_cache()
    joins = [0]
    real = MemberBatch._join

    def join(self: MemberBatch, side: MemberBatch, n: int, r: int) -> None:
        joins[0] += 1
        real(self, side, n, r)

    monkeypatch.setattr(MemberBatch, "_join", join)
    prompts = [" ".join(PROMPTS[k:] + PROMPTS[:k]) for k in range(3)] + PROMPTS[:2]
    for m in engine.members:
        assert all(len(m.encode_prompt(p)) > 2 * (SPLIT_TOKENS + 6) for p in prompts[:3])
    got = engine.generate(prompts, max_new_tokens=8)
    assert joins[0] == 3 * 2  # each long prompt, in each member
    for prompt, result in zip(prompts, got):
        assert result.text == as_engine_text(reference_of(engine, prompt, 8).text), prompt


def test_chunked_prefill_keeps_sampled_and_gated_rows_as_they_are_alone(
    chunked: UniTEEngine, make_engine: Any, tiny_dirs: Any
) -> None:
    members = [m.spec.source for m in chunked.members]
    whole = make_engine(*members, prefill_chunk=10_000)
    for kw in ({"temperature": 0.9, "top_p": 0.95, "seed": 3}, {"gate": 0.4}):
        want = [whole.generate([p], max_new_tokens=10, **kw)[0].text for p in PROMPTS[:5]]
        got = [r.text for r in chunked.generate(PROMPTS[:5], max_new_tokens=10, **kw)]
        assert got == want, kw


def test_a_step_prefills_more_while_few_rows_decode_beside_many_waiting() -> None:
    from unite_integrations.engine.batch import IDLE_CHUNKS, prefill_share

    assert prefill_share(0, 5) == 1  # nothing waits
    assert prefill_share(1, 0) == prefill_share(9, 0) == IDLE_CHUNKS  # nobody decodes
    assert prefill_share(6, 6) == prefill_share(6, 7) == 1  # as many decode as wait: a chunk
    assert prefill_share(9, 4) == 2
    assert prefill_share(15, 1) == IDLE_CHUNKS  # a burst's first answer: never more than this


@pytest.mark.parametrize(
    ("pending", "left", "piece"),
    [
        (600, 512, 600),  # within half a budget more: the prompt is done now, not in two pieces
        (768, 512, 768),
        (769, 512, 512),  # longer: a chunk
        (300, 100, 300),  # what is left and half a budget finish it
        (900, 128, 128),  # a quarter of the budget or more: a piece
        (900, 127, 0),  # less: no piece of a few ids (each piece is a forward of its own)
        (10, 0, 0),
        (10, -200, 0),  # a prompt taken whole ran past the budget: nothing more this step
    ],
)
def test_a_steps_budget_runs_whole_prompts_and_no_small_pieces(
    pending: int, left: int, piece: int
) -> None:
    from unite_integrations.engine.batch import _piece

    assert _piece(pending, left, 512) == piece


def test_a_short_request_finishes_while_a_long_prompt_still_prefills(
    make_engine: Any, tiny_dirs: Any
) -> None:
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefill_chunk=2
    )
    long_prompt = " ".join(PROMPTS[:8])
    assert all(len(m.encode_prompt(long_prompt)) > 40 for m in engine.members)
    # The long request's first chunk is held at the gate: the short one is provably admitted
    # while the long prompt has some 20 chunks to go.
    with finishing(engine) as finished, gate_after(engine.members[0].model, forwards=1) as opened:
        [long] = engine.submit([long_prompt], max_new_tokens=1)
        assert opened.waiting.wait(60)  # type: ignore[attr-defined]
        [short] = engine.submit(["Hello"], max_new_tokens=4, min_new_tokens=4)
        opened.set()
        assert isinstance(short.next_event(), Done)
        assert isinstance(long.next_event(), Done)
    n_short = len(engine.members[0].encode_prompt("Hello"))
    assert [row.n_in[0] for row in finished] == [
        n_short,
        len(engine.members[0].encode_prompt(long_prompt)),
    ]


def test_a_request_queued_while_every_row_prefills_joins_before_the_next_chunk(
    make_engine: Any, tiny_dirs: Any
) -> None:
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefill_chunk=4
    )
    engine.reset_prefix_cache()
    primary = engine.members[0]
    widths: list[int] = []
    handle = primary.model.get_decoder().register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        # The long request's admission (its first id) is held; the short one queues meanwhile.
        with gate_after(primary.model, forwards=0) as opened:
            [long] = engine.submit([" ".join(PROMPTS[:6])], max_new_tokens=1)
            assert opened.waiting.wait(60)  # type: ignore[attr-defined]
            [short] = engine.submit(["Hello"], max_new_tokens=1)
            opened.set()
            assert isinstance(short.next_event(), Done) and isinstance(long.next_event(), Done)
    finally:
        handle.remove()
    # Nobody decoded after the long one's admission: the short one was admitted (its whole
    # prompt in one forward) before the long prompt's first chunk ran.
    assert widths[:2] == [1, len(primary.encode_prompt("Hello"))]


def test_requests_in_flight_are_counted_from_admission_to_their_last_step(
    make_engine: Any, tiny_dirs: Any
) -> None:
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefill_chunk=2
    )
    engine.reset_prefix_cache()  # the prompt runs whole, in chunks: some steps end before the gate
    seen: list[int] = []
    with gate_after(engine.members[0].model, forwards=4) as opened:
        [req] = engine.submit([" ".join(PROMPTS[:4])], max_new_tokens=2)
        assert opened.waiting.wait(60)  # type: ignore[attr-defined]
        held = engine.metrics()
        seen.append(held.rows_in_flight)  # prefilling: in flight, not queued
        seen.append(held.queued)
        opened.set()
    done = threading.Event()
    threading.Thread(target=lambda: (req.next_event(), done.set()), daemon=True).start()
    assert done.wait(120)
    assert seen == [1, 0] and engine.metrics().rows_in_flight == 0
    # The row's KV caches, counted while it prefilled (a few chunks in), given back after.
    per_id = sum(
        2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
        for c in (m.model.config for m in engine.members)
    )
    assert held.kv_bytes >= 3 * per_id
    assert engine.metrics().kv_bytes == 0


# -- gating in batches: the other members work for the rows that vote only ------------------------


def test_a_gated_batch_computes_only_for_the_rows_that_vote(
    make_engine: Any, tiny_dirs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unite_integrations.engine.backends import LocalMember

    engine = make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"])
    primary, other = (m.model for m in engine.members)
    tops: dict[str, list[int]] = {"primary": [], "other": []}  # rows each top-k was taken for
    real = LocalMember.top

    def top(self: LocalMember, k: int, ban_end: Any, rows: list[int] | None = None) -> Any:
        who = "primary" if self.batch.model is primary else "other"
        tops[who].append(self.batch.n_rows if rows is None else len(rows))
        return real(self, k, ban_end, rows)

    monkeypatch.setattr(LocalMember, "top", top)
    results = engine.generate(PROMPTS[:8], max_new_tokens=12, gate=0.5)
    decisions = [len(r.provenance.tokens) + (r.finish_reason == "stop") for r in results]
    votes = sum(round(d * (1 - r.provenance.gated_share)) for d, r in zip(decisions, results))
    assert 0 < votes < sum(decisions)  # some rows gated, some voted
    assert sum(tops["other"]) == votes  # the other member's top-k: voting rows only
    assert len(tops["primary"]) == max(decisions)  # the primary's: once a step
    # At gate 0 no row ever votes: the other member takes one id per row and computes nothing.
    tops["other"].clear()
    with counted(other.get_decoder()) as ran:  # the decoder runs with or without the head
        engine.generate(PROMPTS[:8], max_new_tokens=12, gate=0.0)
    assert tops["other"] == [] and ran[0] == 8


def test_long_prompts_chunks_leave_no_lasting_holes_in_the_others_caches(
    model: torch.nn.Module,
) -> None:
    """Each chunk forward appends columns to every row (holes for the rows that took fewer):
    three long prompts prefilled one after another beside decoding rows would leave the cache
    three prompts wide. It is compacted once holes are most of it, and every row keeps its own
    logits."""
    from unite_integrations.engine.sequences import COMPACT_SLACK

    longs = [[(11 * n + k) % 90 + 1 for n in range(200)] for k in range(3)]
    batch = MemberBatch(model, [], 0)
    batch.add_rows([[5, 6, 7], *(p[:1] for p in longs), [8, 9]])
    widths = []
    for k, prompt in enumerate(longs):  # the oldest first, 20 ids a step
        for start in range(1, len(prompt), 20):
            updates: list[Any] = [(len(ids), [start % 90 + 1]) for ids in batch.ids]
            updates[1 + k] = (start, prompt[start : start + 20])
            for j in range(3):
                if j != k:
                    updates[1 + j] = None  # waiting for their turn
            batch.advance(updates)
            widths.append(batch.mask.shape[1])
            live = max(len(ids) for ids in batch.ids)
            assert batch.mask.shape[1] <= 2 * live + COMPACT_SLACK
    assert [batch.ids[1 + k] for k in range(3)] == longs
    assert max(widths) < 2 * 230 + COMPACT_SLACK < 3 * 200  # without: three prompts wide
    _assert_rows_as_alone(batch, model)
    for _ in range(3):  # and decoding goes on exactly
        batch.advance([(len(ids), [7]) for ids in batch.ids])
    _assert_rows_as_alone(batch, model)


def test_a_long_prompt_prefills_apart_and_joins_the_shared_cache_whole(
    model: torch.nn.Module,
) -> None:
    """A prompt piece longer than ``SPLIT_TOKENS`` that leaves more to come runs in a one-row
    batch of its own, kept until the prompt is whole: the
    shared cache never widens by its chunks (the rows decoding beside it, one rolling back
    every third step, attend over their own columns), it runs no padding and no other row's
    columns, and the row joins whole when its prompt is complete, with the logits it has
    alone; every row goes on decoding as alone after."""
    from unite_integrations.engine.sequences import SPLIT_TOKENS

    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(1, 97, (200,), generator=g).tolist()
    batch = MemberBatch(model, [], 0)
    batch.add_rows([[5, 6, 7], prompt, [8, 9]], now=[3, 1, 2])
    chunk, start, step = SPLIT_TOKENS + 6, 1, 0
    while start < len(prompt):
        width = batch.mask.shape[1]
        piece = prompt[start : start + chunk]
        back = 1 if step % 3 == 2 else 0  # row 2 rolls back one id and takes two
        updates: list[Any] = [
            (len(batch.ids[0]), [11 + step]),
            (start, piece),
            (len(batch.ids[2]) - back, [20 + step, 21]),
        ]
        with counted(model) as ran:
            batch.advance(updates)
        start += len(piece)
        joined = start == len(prompt)  # then as wide as the prompt, where that is wider
        assert batch.mask.shape[1] <= max(width + 2, len(prompt) if joined else 0)
        # The piece alone (the first with the id the row joined with: its batch starts with
        # all it holds), then the others padded to 2.
        assert ran[0] == len(piece) + (step == 0) + 2 * 2
        assert (1 in batch.apart) == (start < len(prompt))  # apart until it is whole
        step += 1
    assert batch.ids[1] == prompt and batch.cache_bytes > 0
    _assert_rows_as_alone(batch, model)
    for n in range(4):
        batch.advance([(len(ids), [30 + n]) for ids in batch.ids])
    _assert_rows_as_alone(batch, model)


def test_whole_prompts_taken_at_once_run_together_apart_and_join_at_once(
    model: torch.nn.Module,
) -> None:
    """Rows that take the rest of a long prompt in one update (lazily prefilled rows' catch-ups,
    prompts a step's budget takes whole) run together, in one forward of a batch of their own
    (not one each, not over the shared cache's width), and join it at once."""
    g = torch.Generator().manual_seed(6)
    longs = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (120, 110)]
    batch = MemberBatch(model, [], 0)
    batch.add_rows([[5, 6, 7], *longs], now=[3, 1, 1])
    for n in range(3):  # the short row decodes: the shared cache is a few columns wide
        batch.advance([(3 + n, [8 + n]), None, None])
    with counted(model) as ran:
        batch.advance([(6, [20]), (1, longs[0][1:]), (1, longs[1][1:])])
    # The two prompts whole (their batch starts with all they hold) padded to the longer, in
    # one forward, then the short row's id.
    assert ran[0] == 2 * 120 + 1
    assert batch.apart == {} and batch.ids[1:] == longs
    assert batch.mask.shape[1] <= 120 + 2
    _assert_rows_as_alone(batch, model)


def test_a_row_that_leaves_while_it_prefills_apart_leaves_the_others_as_they_are(
    model: torch.nn.Module,
) -> None:
    prompt = [(7 * n) % 90 + 1 for n in range(150)]
    batch = MemberBatch(model, [], 0, PrefixStore(max_bytes=2**20))
    batch.add_rows([[5, 6, 7], prompt], now=[3, 1])
    batch.advance([(3, [8]), (1, prompt[1:100])])
    assert list(batch.apart) == [1] and batch.ids[1] == prompt[:100]
    batch.keep_rows([0])  # cancelled half-way: what it ran enters the store
    assert batch.apart == {} and len(batch.store.match(prompt, 100)) == 100 // BLOCK
    batch.advance([(4, [9])])
    _assert_rows_as_alone(batch, model)


@needs_proc
def test_memory_stays_within_its_bound_over_500_mixed_requests(
    make_engine: Any, tiny_dirs: Any
) -> None:
    """500 requests of different prompts (5 to ~350 ids, so the store fills and evicts, long
    ones prefilled in chunks), greedy, sampled and gated, from 8 threads, a tenth of them
    abandoned streams: the stores never hold more than their size, and the process's memory
    after the first 100 requests grows by less than a store's worth."""
    import gc
    import random
    from concurrent.futures import ThreadPoolExecutor

    engine = make_engine(  # 100-id chunks: long prompts prefill apart, then join
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
        prefix_cache="256KiB",
        prefill_chunk=100,
    )
    words = " ".join(PROMPTS).split()
    rng = random.Random(0)
    calls = []
    for n in range(500):
        prompt = " ".join(rng.choice(words) for _ in range(rng.choice([2, 5, 20, 40, 80])))
        kw: dict[str, Any] = {"max_new_tokens": rng.randint(2, 8)}
        if n % 5 == 1:
            kw.update(temperature=0.8, seed=n)
        if n % 7 == 2:
            kw["gate"] = 0.5
        calls.append((f"{n}: {prompt}", kw, n % 10 == 3))

    def one(call: tuple[str, dict[str, Any], bool]) -> None:
        prompt, kw, abandon = call
        if abandon:
            it = engine.stream(prompt, **kw)
            next(it, None)
            it.close()
        else:
            engine.generate([prompt], **kw)
        assert all(s.bytes <= s.max_bytes for s in engine._ens.stores)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, calls[:100]))
        gc.collect()
        before = rss_mib()
        list(pool.map(one, calls[100:]))
    gc.collect()
    grown = rss_mib() - before
    stores = engine._ens.stores
    assert all(0 < s.bytes <= s.max_bytes == 256 * 1024 for s in stores)
    assert all(s.stored * s.bytes / len(s) > 2 * s.max_bytes for s in stores)  # it evicted
    assert grown < 48, f"RSS grew by {grown:.1f} MiB over 400 requests"
