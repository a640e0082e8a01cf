"""Rows joining and leaving a member's KV cache (``MemberBatch.add_rows``/``keep_rows``) give every
row the logits it gets alone, for full-attention and sliding-window layers (Gemma-3's kind)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unite_integrations.engine.sequences import MemberBatch

WINDOW = 6  # tiny, so that prompts and generations pass it


@pytest.fixture(scope="module")
def gemma3() -> torch.nn.Module:
    return _gemma3(WINDOW)


@pytest.fixture(scope="module")
def gemma3_wide() -> torch.nn.Module:
    """Sliding layers whose window no test sequence reaches."""
    return _gemma3(64)


def _gemma3(window: int) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return _tiny(
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        num_hidden_layers=3,
        head_dim=16,
        sliding_window=window,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )


def _tiny(model_class: Any, config_class: Any, **layout: Any) -> torch.nn.Module:
    """A seeded random model of 97 ids, width 32, two heads sharing one key/value head."""
    torch.manual_seed(0)
    config = config_class(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        **layout,
    )
    return model_class(config).eval()


def _assert_rows_as_alone(batch: MemberBatch, model: torch.nn.Module) -> None:
    """Each row's next logits are a fresh forward's over its ids alone, and its mask counts
    exactly its ids (the holes left by rollbacks and other rows' takes are masked out)."""
    for r, ids in enumerate(batch.ids):
        fresh = fresh_logits(model, ids)
        torch.testing.assert_close(batch.next_logits()[r], fresh, rtol=1e-4, atol=1e-4)
        assert int(batch.mask[r].sum()) == len(ids)


def fresh_logits(model, ids: list[int]) -> torch.Tensor:
    """[V] logits after ``ids`` from one forward pass over them, no cache: the oracle, which shares
    no code with ``MemberBatch`` (no holes, no masks of ours, the model's own sliding window)."""
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].float()  # positional: see the hook below


def alone_logits(model, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    return [fresh_logits(model, prompt + tokens[:n]) for n in range(len(tokens) + 1)]


def test_rows_joining_and_leaving_keep_their_own_logits(gemma3):
    g = torch.Generator().manual_seed(1)
    lengths = [3, 11, 5, 9]  # rows 1 and 3 start past the sliding window
    prompts = {n: torch.randint(1, 97, (k,), generator=g).tolist() for n, k in enumerate(lengths)}
    tokens = {n: torch.randint(1, 97, (12,), generator=g).tolist() for n in prompts}
    expected = {n: alone_logits(gemma3, prompts[n], tokens[n]) for n in prompts}
    batch = MemberBatch(gemma3, [], 0)
    rows: list[int] = []  # batch row r is prompt rows[r]
    steps = dict.fromkeys(prompts, 0)
    checked = 0

    def check() -> None:
        nonlocal checked
        for r, n in enumerate(rows):
            want = expected[n][steps[n]]
            torch.testing.assert_close(batch.next_logits()[r], want, rtol=1e-4, atol=1e-4)
            checked += 1

    def step(times: int) -> None:
        for _ in range(times):
            batch.advance([(len(batch.ids[r]), [tokens[n][steps[n]]]) for r, n in enumerate(rows)])
            for n in rows:
                steps[n] += 1
            check()

    batch.add_rows([prompts[0]])  # a short row alone
    rows += [0]
    check()
    step(3)
    batch.add_rows([prompts[1], prompts[2]])  # a wider row and another join the running one
    rows += [1, 2]
    check()
    step(4)
    batch.keep_rows([0, 2])  # the widest row leaves: leading columns are trimmed
    rows.remove(1)
    check()
    batch.add_rows([prompts[3]])
    rows += [3]
    check()
    step(3)
    batch.keep_rows([2])  # row 3 goes on alone
    rows[:] = [3]
    check()
    step(2)
    assert checked == 1 + 3 + 3 + 4 * 3 + 2 + 3 + 3 * 3 + 1 + 2


def test_keep_rows_trims_columns_no_row_uses(gemma3):
    batch = MemberBatch(gemma3, [[1, 2, 3], list(range(1, 15))], 0)
    batch.prefill()
    assert batch.mask.shape[1] == 14
    batch.keep_rows([0])
    assert batch.mask.shape[1] == 3 and batch.cols == [[0, 1, 2]]
    for layer in batch.cache.layers:
        assert layer.keys.shape[0] == 1 and layer.keys.shape[-2] <= 3
    batch.keep_rows([])
    assert batch.n_rows == 0
    batch.add_rows([[4, 5]])
    assert batch.n_rows == 1 and batch.mask.shape == (1, 2)


def test_keep_rows_takes_the_rows_in_the_order_given(gemma3):
    """``keep_rows`` with every row, reordered, is a reorder (not "nothing changed"): each row's
    ids, logits and cache go with it and it decodes on as alone."""
    prompts = [[1, 2, 3], list(range(1, 15)), [7, 8]]
    batch = MemberBatch(gemma3, prompts, 0)
    batch.prefill()
    batch.keep_rows([2, 0, 1])
    assert batch.ids == [prompts[2], prompts[0], prompts[1]]
    _assert_rows_as_alone(batch, gemma3)
    batch.advance([(len(ids), [5 + r]) for r, ids in enumerate(batch.ids)])
    _assert_rows_as_alone(batch, gemma3)


def test_rows_leaving_from_either_end_keep_views_of_the_cache(gemma3):
    """The oldest rows finish first: the rows kept are then consecutive and keep their columns
    as views of each layer's buffer (nothing copied), and decode on as alone, past the room
    the buffer had."""
    prompts = [[1, 2, 3], list(range(1, 15)), [7, 8], [9, 10, 11, 12]]
    batch = MemberBatch(gemma3, prompts, 0)
    batch.prefill()
    storage = [la._k.untyped_storage().data_ptr() for la in batch.cache.layers]
    batch.keep_rows([1, 2, 3])
    assert [la._k.untyped_storage().data_ptr() for la in batch.cache.layers] == storage
    _assert_rows_as_alone(batch, gemma3)
    batch.keep_rows([1, 2])  # the widest leaves: its leading columns are trimmed
    assert batch.mask.shape[1] == 4 and batch.ids == prompts[2:]
    for step in range(80):
        batch.advance([(len(ids), [5 + (r + step) % 90]) for r, ids in enumerate(batch.ids)])
    assert [la._k.untyped_storage().data_ptr() for la in batch.cache.layers] != storage
    _assert_rows_as_alone(batch, gemma3)


def _script(g: torch.Generator) -> list[tuple[int, list[int]]]:
    """(ids to drop from the end, ids to append) per step: appends, multi-token takes and the
    rollbacks that re-tokenization makes (case b), always within the generated ids."""
    t = torch.randint(1, 97, (9,), generator=g).tolist()
    return [(0, t[:1]), (0, t[1:3]), (2, t[3:4]), (0, t[4:5]), (1, t[5:7]), (0, t[7:9])]


def alone_scripted(model, prompt: list[int], script) -> list[tuple[list[int], torch.Tensor]]:
    """(ids, logits) after each step of the script, by a fresh forward over the ids."""
    ids = list(prompt)
    out = [(list(ids), fresh_logits(model, ids))]
    for drop, new in script:
        ids = ids[: len(ids) - drop] + new
        out.append((list(ids), fresh_logits(model, ids)))
    return out


def test_rollbacks_after_rows_of_other_widths_join(gemma3_wide):
    """Rows that joined a running batch at another width keep their own columns: rolling back
    ids masks exactly the columns they used (a wrong column shift on joining would mask another
    row's or a live one's), and multi-token takes line up; ids and logits equal each row alone,
    and every forward pass is counted."""
    _scripted_join(gemma3_wide)


def test_rollbacks_with_holes_inside_a_sliding_window(gemma3):
    """The hole columns that rollbacks and other rows' longer takes leave inside a sliding window
    hide no real token: the window counts positions, not columns, and no cache layer drops a
    column a row still needs (sequences pass the window of 6 here)."""
    _scripted_join(gemma3)


def _scripted_join(model) -> None:
    gemma3 = model
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 97, (k,), generator=g).tolist() for k in (4, 10, 2)]
    scripts = [_script(g) for _ in prompts]
    expected = [alone_scripted(gemma3, p, s) for p, s in zip(prompts, scripts)]
    batch = MemberBatch(gemma3, [], 0)
    done = [0, 0, 0]

    def check(rows: list[int]) -> None:
        for r, n in enumerate(rows):
            ids, logits = expected[n][done[n]]
            assert batch.ids[r] == ids
            # the row's columns: one live column per id, in order, and no other live column
            assert batch.cols[r] == sorted(batch.cols[r]) and min(batch.cols[r]) >= 0
            assert batch.mask[r, batch.cols[r]].all() and int(batch.mask[r].sum()) == len(ids)
            torch.testing.assert_close(batch.next_logits()[r], logits, rtol=1e-4, atol=1e-4)

    def run(rows: list[int], steps: int) -> None:
        for _ in range(steps):
            batch.advance(
                [
                    (len(batch.ids[r]) - scripts[n][done[n]][0], scripts[n][done[n]][1])
                    for r, n in enumerate(rows)
                ]
            )
            for n in rows:
                done[n] += 1
            check(rows)

    batch.add_rows([prompts[0]])
    check([0])
    run([0], 2)  # row 0: 4 + 3 columns
    batch.add_rows([prompts[1]])  # wider (10) than the running batch
    check([0, 1])
    run([0, 1], 2)
    batch.add_rows([prompts[2]])  # narrower (2) than the running batch
    check([0, 1, 2])
    run([0, 1, 2], 2)
    assert batch.forwards == 1 + 2 + 1 + 2 + 1 + 2


def test_a_forward_runs_only_the_rows_that_take_ids(gemma3):
    """Rows that take nothing this step (gated rows while others catch up) stay out of the forward
    pass: the model sees only the rows with ids, the others keep their logits and columns, and
    every row still equals a fresh forward over its ids (holes of other rows' takes included)."""
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(1, 97, (k,), generator=g).tolist() for k in (3, 8, 5)]
    batch = MemberBatch(gemma3, prompts, 0)
    batch.prefill()
    # Rows in each of the batch's forwards (it passes keywords, the oracle not).
    seen: list[int] = []
    hook = gemma3.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["input_ids"].shape[0]) if kw else None, with_kwargs=True
    )
    t = torch.randint(1, 97, (12,), generator=g).tolist()
    script: list[list[tuple[int, list[int]] | None]] = [
        [(len(prompts[0]), t[:4]), None, None],  # row 0 catches up 4 ids alone
        [None, (len(prompts[1]), t[4:5]), (len(prompts[2]), t[5:7])],
        [(len(prompts[0]) + 2, t[7:10]), None, None],  # a rollback inside the window, alone
        [None, None, None],  # nothing: no forward at all
        [(len(prompts[0]) + 5, t[10:11]), None, (len(prompts[2]) + 1, t[11:12])],
    ]
    try:
        for updates in script:
            batch.advance(updates)
            _assert_rows_as_alone(batch, gemma3)
    finally:
        hook.remove()
    assert seen == [1, 2, 1, 2]
    assert batch.ids[1] == prompts[1] + t[4:5]


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    """Full attention only: the model builds its own masks from the 2-D one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaForCausalLM, LlamaConfig, num_hidden_layers=2)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_a_long_take_beside_one_id_takes_runs_in_a_forward_of_its_own(name, request):
    """A row catching up on many ids (a gated row's lazily prefilled prompt) beside rows taking
    one id each: the long take runs apart, so the others are not padded to its length; every
    row still equals a fresh forward over its ids, through more cache growth than the buffer's
    spare room (40 ids at once, then one at a time)."""
    model = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(1, 97, (k,), generator=g).tolist() for k in (1, 6, 4)]
    batch = MemberBatch(model, prompts, 0)
    batch.prefill()
    seen: list[int] = []  # (rows, ids) of each forward, as rows * 1000 + ids
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: (
            seen.append(kw["input_ids"].shape[0] * 1000 + kw["input_ids"].shape[1]) if kw else None
        ),
        with_kwargs=True,
    )
    t = torch.randint(1, 97, (120,), generator=g).tolist()
    try:
        batch.advance([(1, t[:80]), (6, t[80:81]), (4, t[81:82])])
        for n in range(3):  # then everyone one id at a time (the buffer grows on the way)
            batch.advance([(len(ids), [t[90 + 3 * n + r]]) for r, ids in enumerate(batch.ids)])
        _assert_rows_as_alone(batch, model)
    finally:
        hook.remove()
    assert seen == [1080, 2001, 3001, 3001, 3001]
    assert batch.ids[0] == prompts[0] + t[:80] + [t[90], t[93], t[96]]


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_rows_whose_ids_wait_skip_the_output_layer(name, request):
    """Rows joining with ids still pending (a gated row's lazy prefill) run the decoder only:
    nobody reads their logits before they take the rest, which then equals a fresh forward. A
    batch with one row that takes its whole prompt runs the output layer for all of them, at
    each row's last position only (``logits_to_keep``: a 262k-wide head over a whole prompt would
    cost more than the decoder)."""
    model = request.getfixturevalue(name)
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(1, 97, (k,), generator=g).tolist() for k in (5, 9)]
    head_calls: list[tuple[int, ...]] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda _m, a: head_calls.append(tuple(a[0].shape[:2]))  # (rows, positions)
    )
    try:
        batch = MemberBatch(model, [], 0)
        batch.add_rows(prompts, now=[1, 2])
        assert head_calls == [] and batch.ids == [prompts[0][:1], prompts[1][:2]]
        assert not batch.next_logits().any()
        batch.advance([(1, prompts[0][1:]), (2, prompts[1][2:])])
        assert head_calls == [(2, 1)]
        _assert_rows_as_alone(batch, model)  # the oracle's forwards run the output layer too
        head_calls.clear()
        batch.add_rows(prompts, now=[1, len(prompts[1])])  # one row whole: logits for both
        assert head_calls == [(2, 1)]
        torch.testing.assert_close(
            batch.next_logits()[3], fresh_logits(model, prompts[1]), rtol=1e-4, atol=1e-4
        )
    finally:
        hook.remove()


@pytest.mark.parametrize(
    ("lengths", "groups"),
    [
        ([1, 1, 1], [[0, 1, 2]]),  # a decode step: one forward
        ([0, 0], []),  # nothing to take: no forward
        ([200, 1, 0, 2], [[0], [3, 1]]),  # a prompt's catch-up apart
        ([30, 1], [[0, 1]]),  # 29 padded tokens: not worth a forward
        ([300, 290, 5, 1], [[0, 1], [2, 3]]),
    ],
)
def test_rows_are_grouped_where_padding_costs_more_than_a_forward(lengths, groups):
    from unite_integrations.engine.sequences import _groups

    assert _groups(lengths) == groups


@given(st.lists(st.integers(0, 400), max_size=24))
def test_groups_take_every_row_once_and_pad_no_more_than_one_forward(lengths):
    from unite_integrations.engine.sequences import SPLIT_TOKENS, _groups

    groups = _groups(lengths)
    taken = sorted(r for g in groups for r in g)
    assert taken == [r for r, n in enumerate(lengths) if n > 0]
    padded = sum(len(g) * max(lengths[r] for r in g) for g in groups)
    one = len(taken) * max(lengths, default=0)
    assert padded + SPLIT_TOKENS * (len(groups) - 1) <= one
