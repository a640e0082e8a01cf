"""A request that breaks a step costs only itself: the engine finds the request at fault, fails it
alone, and the others go on to the answers they get alone (greedy, counted, not timed)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import PROMPTS
from test_workloads import finishing

from unite_integrations import UniTEEngine
from unite_integrations.engine.scheduler import Done


class Poison(RuntimeError):
    """What the primary member's forward raises when it meets the poisoned id."""


@contextmanager
def poisoned(model: torch.nn.Module, bad: int) -> Iterator[list[int]]:
    """The model's forward raises whenever its input holds id ``bad``; yields the count."""
    hits = [0]

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids")
        if ids is not None and bool((ids == bad).any()):
            hits[0] += 1
            raise Poison(f"id {bad} in the input")

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield hits
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def engine(make_engine: Any, tiny_dirs: Any) -> UniTEEngine:
    # Prompts prefill 4 ids a step: the poisoned id reaches the model beside decoding rows.
    engine: UniTEEngine = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], prefill_chunk=4
    )
    return engine


@pytest.mark.parametrize("gate", [None, 0.5])
def test_a_row_whose_forward_raises_fails_alone(engine: UniTEEngine, gate: float | None) -> None:
    good = PROMPTS[:4]
    kw: dict[str, Any] = {"max_new_tokens": 24, "gate": gate}
    alone = [engine.generate([p], **kw)[0] for p in good]
    primary = engine.members[0]
    seen = {t for p in good for t in primary.encode_prompt(p)}
    seen |= {t for r in alone for t in primary.vocab.encode(r.text.encode())}
    bad_prompt = " ".join(PROMPTS[4:9]) + " Zymurgy quixotic"
    ids = primary.encode_prompt(bad_prompt)
    bad = next(t for t in ids[8:] if t not in seen)  # only in the bad prompt, past its first chunk
    with poisoned(primary.model, bad) as hits:
        requests = [engine.submit([p], stream=True, **kw)[0] for p in good[:2]]
        [victim] = engine.submit([bad_prompt], **kw)
        requests += [engine.submit([p], stream=True, **kw)[0] for p in good[2:]]
        with pytest.raises(Poison):
            victim.next_event()
        texts = []
        for req in requests:
            text = ""
            while not isinstance(event := req.next_event(), Done):
                text += event.text
            texts.append(text + event.text)
    assert hits[0] >= 2  # in the batch, then again when the request was tried alone
    assert texts == [r.text for r in alone]
    assert engine.generate([good[0]], **kw)[0].text == alone[0].text  # the engine goes on


def test_a_request_alone_whose_step_raises_fails_and_the_engine_goes_on(
    engine: UniTEEngine,
) -> None:
    primary = engine.members[0]
    ids = primary.encode_prompt(PROMPTS[0])
    with poisoned(primary.model, ids[-1]), pytest.raises(Poison):
        engine.generate([PROMPTS[0]], max_new_tokens=4)
    assert engine.generate([PROMPTS[0]], max_new_tokens=4)[0].usage.output_tokens > 0


def test_with_every_row_taken_requests_are_admitted_in_arrival_order(
    make_engine: Any, tiny_dirs: Any
) -> None:
    """Fair scheduling: a request that waited is served before a newcomer, whatever its size."""
    small = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], max_batch_rows=2
    )
    with finishing(small) as finished:
        # Two long rows take both rows; then a two-row request, then one-row requests arrive.
        # None of them may pass the two-row one, though each would fit beside one long row.
        held = [
            small.submit([p], max_new_tokens=30 + 8 * n, min_new_tokens=30 + 8 * n, stop=[f"<{n}>"])
            for n, p in enumerate(PROMPTS[:2])
        ]
        pair = small.submit(PROMPTS[2:4], max_new_tokens=3, min_new_tokens=3, stop=["<pair>"])
        singles = [
            small.submit([p], max_new_tokens=2, min_new_tokens=2, stop=[f"<s{n}>"])
            for n, p in enumerate(PROMPTS[4:7])
        ]
        for req in [*(r for rs in held for r in rs), *pair, *(r for rs in singles for r in rs)]:
            assert isinstance(req.next_event(), Done)
    order = [row.opts.stop[0] for row in finished]  # each request's marker
    assert order[:2] == ["<0>", "<1>"]
    assert order[2:4] == ["<pair>", "<pair>"]
    assert order[4:] == ["<s0>", "<s1>", "<s2>"]
