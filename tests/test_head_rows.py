"""The output layer over a few rows padded to sixteen (``engine.head_rows``): the same numbers as
the plain layer, the choice measured once per row count, and the same answers from an engine
whose members pad. Nothing is timed here: the choice's timing is replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PROMPTS

from unite_integrations import UniTEEngine
from unite_integrations.engine import head_rows
from unite_integrations.engine.head_rows import PAD_ROWS, RowPaddedForward, pad_head_rows


def _head(vocab: int = 300, hidden: int = 24) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(hidden, vocab, bias=False)


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (9, 1), (15, 1), (16, 1), (20, 1), (7,), (2, 5)])
def test_padded_rows_give_the_plain_layers_numbers(
    padded: bool, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    head = _head()
    x = torch.randn(*shape, head.in_features)
    want = head(x)
    monkeypatch.setattr(RowPaddedForward, "SPEEDUP", float("inf") if padded else 0.0)
    head.forward = RowPaddedForward(head.forward)  # type: ignore[method-assign]
    for _ in range(2):  # the first pass of a row count runs plain and is timed
        got = head(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def test_the_choice_is_measured_once_per_row_count(monkeypatch: pytest.MonkeyPatch) -> None:
    head = _head()
    clock = iter(range(1000))  # each read one second later: a plain pass takes 1 s
    monkeypatch.setattr(head_rows.time, "perf_counter", lambda: float(next(clock)))
    padded: list[float] = []
    monkeypatch.setattr(head_rows, "_seconds", lambda f, x: padded.append(x.shape[0]) or 0.5)
    wrapped = RowPaddedForward(head.forward)
    for rows in (5, 5, 9, 5, 1, 16, 30):
        wrapped(torch.randn(rows, 1, head.in_features))
    assert padded == [PAD_ROWS]  # one padded pass timed, for every count
    assert wrapped.padded == {5: True, 9: True}  # rows 1, 16 and 30 are never padded
    no_faster = RowPaddedForward(head.forward)
    monkeypatch.setattr(head_rows, "_seconds", lambda f, x: 1.0)
    no_faster(torch.randn(6, head.in_features))
    assert no_faster.padded == {6: False}


def test_only_large_float_heads_on_a_cpu_are_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    class Model(torch.nn.Module):
        def __init__(self, head: torch.nn.Module) -> None:
            super().__init__()
            self.head = head

        def get_output_embeddings(self) -> torch.nn.Module:
            return self.head

    small = Model(_head())
    assert not pad_head_rows(small)  # fits in a CPU's caches
    assert not isinstance(small.head.forward, RowPaddedForward)
    monkeypatch.setattr(head_rows, "MIN_HEAD_WEIGHTS", 0)
    assert pad_head_rows(small) and isinstance(small.head.forward, RowPaddedForward)
    assert not pad_head_rows(small)  # once
    assert not pad_head_rows(Model(torch.nn.Embedding(10, 4)))  # not a linear layer
    assert not pad_head_rows(Model(torch.nn.Identity()))
    assert not pad_head_rows(torch.nn.Linear(2, 2))  # no output layer to ask for


def test_an_engine_whose_heads_pad_answers_as_one_whose_do_not(
    cache_dir: Path, tiny_dirs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight greedy prompts in one batch (rows finish, so the step sees 2 to 8 rows), with every
    member's head padding each row count, against the same engine's members unpadded."""
    sources = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    plain = UniTEEngine(sources, cache_dir=cache_dir, prefix_cache=0)
    want = [r.text for r in plain.generate(PROMPTS[:8], max_new_tokens=12)]
    monkeypatch.setattr(head_rows, "MIN_HEAD_WEIGHTS", 0)
    monkeypatch.setattr(RowPaddedForward, "SPEEDUP", float("inf"))
    padded = UniTEEngine(sources, cache_dir=cache_dir, prefix_cache=0)
    heads = [m.model.get_output_embeddings().forward for m in padded.members]
    assert all(isinstance(f, RowPaddedForward) for f in heads)
    assert [r.text for r in padded.generate(PROMPTS[:8], max_new_tokens=12)] == want
    assert any(True in f.padded.values() for f in heads)  # some steps ran a few rows padded
