"""An abandoned stream stops the decoding: counted in steps (``engine.stats["steps"]``), not time.

The primary member's forward pass is held at a gate after a few steps, so the consumer provably
closes the stream while the decoding is in progress; after the gate opens, the engine may finish
the step in flight and must then stop. Without cancellation it would decode all the remaining
steps of a budget that END cannot end early (``min_new_tokens``).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from conftest import PROMPTS

from unite_integrations.engine.scheduler import MAX_BATCH_ROWS

BUDGET = 120
SLACK = 3  # the step in flight when the stream closed, and the one that notices it


@contextmanager
def gate_after(model, forwards: int) -> Iterator[threading.Event]:
    """Block the model's forward passes after ``forwards`` of them until the event is set
    (counted at its decoder, which every pass runs: a chunk inside a prompt skips the head)."""
    opened = threading.Event()
    opened.waiting = threading.Event()  # type: ignore[attr-defined]  # set once a pass is held
    seen = [0]

    def hook(module, args, kwargs):
        seen[0] += 1
        if seen[0] > forwards:
            opened.waiting.set()  # type: ignore[attr-defined]
            assert opened.wait(120), "the gate was never opened"

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield opened
    finally:
        opened.set()
        handle.remove()


@pytest.fixture(scope="module")
def engine(make_engine, tiny_dirs):
    # An engine of its own (top_k=4): the hook and the step counts see no other test's calls.
    return make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4)


def _wait_idle(engine) -> None:
    """Until no row is in flight and nothing waits (polling, no time limit asserted: a row that
    is never freed decodes out its budget and then leaves, and the step count tells)."""
    for _ in range(60_000):
        m = engine.metrics()
        if m.rows_in_flight == 0 and m.queued == 0:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["close", "drop"])
def test_an_abandoned_stream_decodes_no_more_steps(engine, how):
    start = engine.stats["steps"]
    with gate_after(engine.members[0].model, forwards=4) as opened:
        stream = engine.stream("Once upon a time", max_new_tokens=BUDGET, min_new_tokens=BUDGET)
        first = next(stream)  # prefill + up to 3 steps; the fifth forward waits at the gate
        assert first.text
        if how == "close":
            stream.close()
        else:  # the consumer just lets go of the generator
            del stream
            gc.collect()
        at_close = engine.stats["steps"] - start
        assert at_close <= 4
        opened.set()
        _wait_idle(engine)
        after = engine.stats["steps"] - start
    assert after - at_close <= SLACK, f"{after - at_close} steps decoded after the close"


def test_a_stream_read_to_the_end_decodes_its_whole_budget(engine):
    """The counter the test above relies on counts what it claims to."""
    start = engine.stats["steps"]
    chunks = list(engine.stream("Once upon a time", max_new_tokens=20, min_new_tokens=20))
    assert chunks[-1].result is not None and chunks[-1].result.usage.output_tokens == 20
    assert engine.stats["steps"] - start == 20


def _widths(model) -> tuple[list[int], object]:
    widths: list[int] = []

    def hook(module, args, kwargs):
        widths.append(int(kwargs["input_ids"].shape[0]))

    return widths, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_waiting_calls_are_batched_up_to_max_batch_rows(engine):
    """Calls queued together are decoded together, never more than MAX_BATCH_ROWS rows at once."""
    n = MAX_BATCH_ROWS + 6
    prompts = (PROMPTS * 4)[:n]
    model = engine.members[0].model
    with gate_after(model, forwards=1) as opened, ThreadPoolExecutor(n + 1) as pool:
        blocker = pool.submit(engine.generate, ["x"], max_new_tokens=2)  # holds the worker
        assert opened.waiting.wait(120)  # the worker is held inside the blocker's decoding
        futures = [pool.submit(engine.generate, [p], max_new_tokens=3) for p in prompts]
        while engine.metrics().queued < n:  # every call waits behind the blocker
            time.sleep(0.01)
        widths, handle = _widths(model)
        opened.set()
        together = [f.result()[0] for f in futures]
        blocker.result()
        handle.remove()
    # The waiting calls were decoded together, never more than MAX_BATCH_ROWS rows at once.
    assert MAX_BATCH_ROWS // 2 <= max(widths) <= MAX_BATCH_ROWS, widths
    for p in PROMPTS[:6]:
        alone = engine.generate([p], max_new_tokens=3)[0]
        assert {r.text for r, q in zip(together, prompts) if q == p} == {alone.text}


def test_one_call_with_more_rows_than_max_batch_rows_is_split(engine):
    prompts = (PROMPTS * 4)[: MAX_BATCH_ROWS + 6]
    widths, handle = _widths(engine.members[0].model)
    try:
        results = engine.generate(prompts, max_new_tokens=2)
    finally:
        handle.remove()
    assert len(results) == len(prompts)
    assert max(widths) <= MAX_BATCH_ROWS, f"a forward pass over {max(widths)} rows"
