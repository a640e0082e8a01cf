"""Prompt prefixes kept across batches (``prefix_cache``): a prompt that begins like an earlier one
takes the stored KV columns of its shared blocks instead of running them, and every row's logits
stay those of a fresh forward pass over its ids alone; an engine writes the same texts with the
store as without it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import PROMPTS
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sequences import _assert_rows_as_alone, _gemma3, _tiny

from unite_integrations import UniTEEngine
from unite_integrations.engine.prefix import BLOCK, PrefixStore
from unite_integrations.engine.sequences import MemberBatch
from unite_integrations.errors import ConfigError

# -- the store ------------------------------------------------------------------------------------


def _columns(ids: list[int], layers: int = 2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer [1 head, len(ids), 1]: each column holds its id (and the layer), to read back."""
    col = torch.tensor(ids, dtype=torch.float32)[None, :, None]
    return [col + 1000 * n for n in range(layers)], [-col - 1000 * n for n in range(layers)]


def _stored(store: PrefixStore, ids: list[int]) -> None:
    blocks = store.match(ids, len(ids))
    keys, values = _columns(ids[len(blocks) * BLOCK :])
    store.extend(blocks, ids, keys, values)


def test_a_prompt_reuses_the_whole_blocks_of_its_longest_stored_prefix() -> None:
    store = PrefixStore(10 * BLOCK)
    first = list(range(1, 3 * BLOCK + 5))  # three whole blocks and 4 ids that are not stored
    _stored(store, first)
    assert len(store) == 3 * BLOCK and store.stored == 3 * BLOCK
    other = first[: 2 * BLOCK + 3] + [999] * 20  # differs inside the third block
    blocks = store.match(other, len(other))
    assert len(blocks) == 2
    keys, values = store.columns(blocks, 5)  # the row already holds its first 5 ids
    assert keys[0][0, :, 0].tolist() == [float(i) for i in first[5 : 2 * BLOCK]]
    assert keys[1][0, :, 0].tolist() == [1000.0 + i for i in first[5 : 2 * BLOCK]]
    assert values[0][0, :, 0].tolist() == [-float(i) for i in first[5 : 2 * BLOCK]]
    assert store.reused == 2 * BLOCK - 5
    # ``limit`` caps the match: a prompt's last id always runs (its logits are needed).
    assert len(store.match(first[: 2 * BLOCK], 2 * BLOCK - 1)) == 1
    assert store.match([5, *first[1:]], 3 * BLOCK) == []  # the first block differs


def test_blocks_are_keyed_by_their_parent_not_only_their_ids() -> None:
    store = PrefixStore(10 * BLOCK)
    a = list(range(1, 2 * BLOCK + 1))
    _stored(store, a)
    b = list(range(500, 500 + BLOCK)) + a[BLOCK:]  # a's second block after another first block
    assert store.match(b, len(b)) == []
    _stored(store, b)
    assert len(store) == 4 * BLOCK  # b's blocks are its own
    keys, _ = store.columns(store.match(b, len(b)), 0)
    assert keys[0][0, :, 0].tolist() == [float(i) for i in b]
    _stored(store, a + [7] * BLOCK)  # extends a's chain: only the new block is written
    assert len(store) == 5 * BLOCK


def test_the_least_recently_used_blocks_leave_first_and_parents_outlive_children() -> None:
    store = PrefixStore(3 * BLOCK)
    a = list(range(1, 2 * BLOCK + 1))
    _stored(store, a)
    b = list(range(300, 300 + 2 * BLOCK))
    _stored(store, b)  # 4 blocks for a capacity of 3: a's oldest goes, its child first
    assert len(store) == 3 * BLOCK
    assert len(store.match(a, len(a))) == 1  # a's first block stayed: its child left first
    assert len(store.match(b, len(b))) == 2
    _stored(store, list(range(700, 700 + BLOCK)))  # a's first block is now the oldest
    assert store.match(a, len(a)) == []
    assert len(store.match(b, len(b))) == 2


def test_stored_columns_read_back_from_any_start_and_after_known_blocks() -> None:
    """Blocks written after a known prefix hold their own ids' columns; ``columns`` reads from
    any start, inside a later block too; a partial block at the end is never stored."""
    store = PrefixStore(10 * BLOCK)
    first = list(range(1, BLOCK + 1))
    _stored(store, first)
    longer = first + list(range(200, 200 + 2 * BLOCK + BLOCK - 1))  # 2 new blocks and 15 ids
    _stored(store, longer)
    assert len(store) == 3 * BLOCK and store.stored == 3 * BLOCK
    blocks = store.match(longer, len(longer))
    assert len(blocks) == 3
    for start in (0, 3, BLOCK, BLOCK + 5, 2 * BLOCK + 1):
        keys, values = store.columns(blocks, start)
        assert keys[0][0, :, 0].tolist() == [float(i) for i in longer[start : 3 * BLOCK]]
        assert values[1][0, :, 0].tolist() == [-1000.0 - i for i in longer[start : 3 * BLOCK]]


def test_a_prompt_stored_twice_keeps_one_copy_and_its_children() -> None:
    """Two equal prompts in one batch both reach ``extend`` with nothing known: the second
    writes nothing, and blocks already hanging under the first stay reachable."""
    store = PrefixStore(10 * BLOCK)
    a = list(range(1, 2 * BLOCK + 1))
    _stored(store, a + [9] * BLOCK)
    keys, values = _columns(a)
    store.extend([], a, keys, values)
    assert store.stored == 3 * BLOCK and len(store) == 3 * BLOCK
    assert len(store.match(a + [9] * BLOCK, 3 * BLOCK)) == 3


def test_a_store_of_exactly_one_block_keeps_one() -> None:
    store = PrefixStore(BLOCK)
    _stored(store, list(range(1, 3 * BLOCK)))
    assert len(store) == BLOCK and len(store.match(list(range(1, 3 * BLOCK)), 99)) == 1


def test_the_store_never_holds_more_than_its_size_while_blocks_go_in() -> None:
    """Room is made before a block goes in (another thread may read ``bytes`` meanwhile), and
    a prompt's own stored beginning does not leave for its later blocks: they are not kept."""
    peak = [0]

    class Watched(PrefixStore):
        def __setattr__(self, name: str, value: Any) -> None:
            if name == "bytes":
                peak[0] = max(peak[0], value)
            super().__setattr__(name, value)

    block_bytes = 2 * 2 * BLOCK * 4  # two layers of keys and values, one float32 a column
    store = Watched(max_bytes=3 * block_bytes)
    first, second = list(range(1, 3 * BLOCK + 1)), list(range(500, 500 + 5 * BLOCK + 1))
    _stored(store, first)
    _stored(store, second)  # five blocks for a store of three: the first prompt's go
    assert peak[0] <= store.max_bytes and store.bytes == 3 * block_bytes
    assert store.match(first, 99) == [] and len(store.match(second, 99)) == 3


def test_a_store_too_small_for_a_block_keeps_nothing() -> None:
    store = PrefixStore(BLOCK - 1)
    _stored(store, list(range(1, 3 * BLOCK)))
    assert len(store) == 0 and store.match(list(range(1, 3 * BLOCK)), 99) == []


# -- a member's rows ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    """A full-attention member and one with sliding layers (a window of 6, which prompts pass)."""
    if request.param == "llama":
        return _llama()
    return _gemma3(6)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return _llama()


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaForCausalLM, LlamaConfig, num_hidden_layers=2)


def _random(n: int, seed: int) -> list[int]:
    return torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_rows_taking_stored_columns_keep_their_own_logits(model: torch.nn.Module) -> None:
    shared = _random(2 * BLOCK + 5, 1)
    store = PrefixStore(64 * BLOCK)
    batch = MemberBatch(model, [], 0, store)
    batch.add_rows([shared + _random(3, 2)])  # runs alone; stores its two whole blocks
    assert (store.stored, store.reused) == (2 * BLOCK, 0)
    # A fresh batch of newcomers: one reuses both blocks; one is lazy (one id now, the rest at
    # its first advance) and takes what the store holds of it at once (stored columns cost no
    # forward), and one more id; one more is lazy and new to the store: it holds one id.
    fresh = _random(2 * BLOCK + 6, 7)
    late = [shared[: 2 * BLOCK] + _random(9, 3), shared + _random(4, 4), fresh]
    batch.add_rows(late, now=[len(late[0]), 1, 1])
    assert store.reused == 4 * BLOCK
    assert [len(ids) for ids in batch.ids[1:]] == [len(late[0]), 2 * BLOCK + 1, 1]
    _assert_rows_as_alone(batch, model)
    # Another batch stores the new prompt meanwhile; the lazy rows catch up on the rest of their
    # prompts: the new one takes 2 blocks less its one id from the store, beside a row taking
    # one id and a row rolling back.
    MemberBatch(model, [], 0, store).add_rows([fresh])
    held = [len(ids) for ids in batch.ids]
    batch.advance(
        [
            (held[0], [5]),
            (held[1] - 2, [8, 9, 10]),
            (held[2], late[1][held[2] :]),
            (1, fresh[1:]),
        ]
    )
    assert store.reused == 6 * BLOCK - 1
    _assert_rows_as_alone(batch, model)
    batch.advance([(len(ids), [11]) for ids in batch.ids])
    _assert_rows_as_alone(batch, model)
    batch.keep_rows([2, 0, 3])
    batch.add_rows([shared[:BLOCK] + _random(BLOCK + 2, 5)])  # joins a running batch
    _assert_rows_as_alone(batch, model)


def test_a_prompt_of_whole_blocks_runs_its_last_id(model: torch.nn.Module) -> None:
    prompt = _random(2 * BLOCK, 6)
    store = PrefixStore(64 * BLOCK)
    first = MemberBatch(model, [], 0, store)
    first.add_rows([prompt])
    again = MemberBatch(model, [], 0, store)
    again.add_rows([prompt])  # the same prompt: the first block comes from the store, not both
    assert store.reused == BLOCK
    _assert_rows_as_alone(again, model)
    longer = MemberBatch(model, [], 0, store)
    longer.add_rows([[*prompt, 5]])  # one id more: both blocks come from the store
    assert store.reused == 3 * BLOCK
    _assert_rows_as_alone(longer, model)


def test_every_new_prompt_of_a_batch_is_stored(model: torch.nn.Module) -> None:
    """A row whose prompt the store holds already does not keep the next row's from being
    stored."""
    known, new = _random(BLOCK + 2, 10), _random(BLOCK + 3, 11)
    store = PrefixStore(64 * BLOCK)
    MemberBatch(model, [], 0, store).add_rows([known])
    MemberBatch(model, [], 0, store).add_rows([known, new])
    assert store.stored == 2 * BLOCK and len(store.match(new, len(new))) == 1


@settings(max_examples=12, deadline=None)
@given(
    shared=st.integers(0, 3 * BLOCK),
    tails=st.lists(st.integers(1, 20), min_size=1, max_size=4),
    lazy=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 10_000),
)
def test_any_mix_of_shared_prefixes_keeps_every_rows_logits(
    llama: torch.nn.Module, shared: int, tails: list[int], lazy: list[bool], seed: int
) -> None:
    model = llama
    head = _random(shared, seed)
    store = PrefixStore(8 * BLOCK)
    batch = MemberBatch(model, [], 0, store)
    batch.add_rows([head + _random(tails[0], seed + 1)])
    prompts = [head[: shared - n] + _random(t, seed + 2 + n) for n, t in enumerate(tails)]
    now = [1 if g else len(p) for g, p in zip(lazy, prompts)]
    batch.add_rows(prompts, now=now)
    batch.advance([None] + [(n, p[n:]) if n < len(p) else None for n, p in zip(now, prompts)])
    _assert_rows_as_alone(batch, model)


# -- the engine -----------------------------------------------------------------------------------

#: A long shared beginning (few-shot examples, a system prompt) and then different questions.
FEW_SHOT = "".join(f"{p}\n" for p in PROMPTS[:6])
PROMPTS_SHARING = [FEW_SHOT + p for p in PROMPTS[6:12]]


@pytest.mark.parametrize("gate", [None, 0.5])
def test_an_engine_with_a_prefix_cache_writes_the_same_texts(
    make_engine: Any, tiny_dirs: Any, trio: UniTEEngine, gate: float | None
) -> None:
    cached = make_engine(
        tiny_dirs["sentencepiece_unigram"],
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
        prefix_cache=1024,
    )
    want = [r.text for r in trio.generate(PROMPTS_SHARING, max_new_tokens=12, gate=gate)]
    one_by_one = [
        cached.generate([p], max_new_tokens=12, gate=gate)[0].text for p in PROMPTS_SHARING
    ]
    batched = [r.text for r in cached.generate(PROMPTS_SHARING, max_new_tokens=12, gate=gate)]
    assert one_by_one == want and batched == want
    stores = cached._ens.stores
    assert len(stores) == 3 and all(s.reused > 0 for s in stores[:1])
    if gate is None:  # every member ran every prompt: each reused the shared beginning
        assert all(s.reused > 0 for s in stores)


def test_prefix_cache_is_a_count_of_ids() -> None:
    with pytest.raises(ConfigError, match="prefix_cache"):
        UniTEEngine(["unused"], prefix_cache=-1)


def test_reset_prefix_cache_empties_the_stores(make_engine: Any, tiny_dirs: Any) -> None:
    cached = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefix_cache=1024
    )
    cached.generate(PROMPTS_SHARING[:1], max_new_tokens=2)
    assert all(len(s) > 0 for s in cached._ens.stores)
    reused = cached.metrics().prefix_ids_reused
    cached.reset_prefix_cache()
    assert all(len(s) == 0 for s in cached._ens.stores)
    cached.generate(PROMPTS_SHARING[:1], max_new_tokens=2)  # the same prompt runs whole again
    assert cached.metrics().prefix_ids_reused == reused
    cached.generate(PROMPTS_SHARING[:1], max_new_tokens=2)
    assert cached.metrics().prefix_ids_reused > reused
