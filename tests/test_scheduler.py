"""Continuous batching: requests join the running batch, leave it when done, and get exactly the
answers they get alone; bounds, cancellation, close() and a clean exit."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import PROMPTS, REAL_MODELS_MISSING

from unite_integrations import UniTEEngine
from unite_integrations.engine.constraints import Constraint
from unite_integrations.engine.scheduler import Delta, Done
from unite_integrations.errors import EngineClosedError, OverloadedError

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


def wait_until(predicate: Any, seconds: float = 120.0) -> bool:
    """Poll a condition the worker sets between steps. The deadline only ends a run that would
    otherwise hang: a busy machine may take long, and no timing is asserted."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def engine(make_engine, tiny_dirs) -> UniTEEngine:
    # top_k=4: a configuration of its own, so no other test's calls share its counters.
    return make_engine(tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4)


def mixed_calls() -> list[tuple[str, dict[str, Any], bool]]:
    """32 (prompt, options, streamed) with every per-row option varied."""
    constraint = Constraint.json_schema(PERSON, max_string_length=8)
    calls = []
    for n in range(32):
        opts: dict[str, Any] = {"max_new_tokens": 4 + (n * 7) % 23}
        if n % 4 == 1:
            opts.update(temperature=0.7 + 0.1 * (n % 3), top_p=0.9, seed=n)
        if n % 5 == 2:
            opts["stop"] = ["e", "\n"]
        if n % 6 == 3:
            opts["min_new_tokens"] = opts["max_new_tokens"]
        if n % 8 == 5:
            opts.update(constraint=constraint, max_new_tokens=40)
        calls.append((PROMPTS[n % len(PROMPTS)], opts, n % 3 == 0))
    return calls


def run(engine: UniTEEngine, prompt: str, opts: dict[str, Any], streamed: bool) -> tuple[Any, ...]:
    if streamed:
        chunks = list(engine.stream(prompt, **opts))
        return "".join(c.text for c in chunks), chunks[-1].finish_reason
    r = engine.generate([prompt], **opts)[0]
    return r.text, r.finish_reason


def test_32_concurrent_mixed_requests_equal_their_sequential_answers(engine):
    calls = mixed_calls()
    before = engine.stats["steps"]
    alone = [run(engine, *c) for c in calls]
    sequential_steps = engine.stats["steps"] - before
    before = engine.stats["steps"]
    start = threading.Barrier(32)

    def concurrent(call: tuple[str, dict[str, Any], bool]) -> tuple[Any, ...]:
        start.wait()
        return run(engine, *call)

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(concurrent, calls))
    assert together == alone
    # The rows shared steps: far fewer union steps than one request at a time.
    assert engine.stats["steps"] - before < sequential_steps / 2


def test_a_short_request_joins_a_running_batch_and_finishes_first(engine):
    prompt, short = "Once upon a time", "The capital of France is"
    alone = engine.generate([short], max_new_tokens=8)[0].text
    before = engine.stats["steps"]
    long = engine.stream(prompt, max_new_tokens=300, min_new_tokens=300)
    next(long)  # the long request is decoding now
    got = engine.generate([short], max_new_tokens=8)[0].text
    assert engine.metrics().rows_in_flight >= 1  # the long request is still running
    rest = list(long)
    assert got == alone
    assert rest[-1].finish_reason == "length" and rest[-1].result.usage.output_tokens == 300
    # The short request's steps were the long one's steps: it joined the batch.
    assert engine.stats["steps"] - before == 300


def test_seeded_sampled_rows_are_the_same_alone_and_in_any_batch(engine):
    kw = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 12}
    alone = [engine.generate([p], seed=5, **kw)[0].text for p in PROMPTS[:6]]
    batched = [r.text for r in engine.generate(PROMPTS[:6], seed=5, **kw)]
    assert batched == alone
    with ThreadPoolExecutor(6) as pool:
        mixed = list(
            pool.map(
                lambda n: (
                    engine.generate([PROMPTS[n]], seed=5, **kw)[0].text
                    if n % 2
                    else "".join(c.text for c in engine.stream(PROMPTS[n], seed=5, **kw))
                ),
                range(6),
            )
        )
    assert mixed == alone
    other = [engine.generate([p], seed=6, **kw)[0].text for p in PROMPTS[:6]]
    assert other != alone


def test_overload_fails_at_once_and_the_engine_goes_on(make_engine, tiny_dirs):
    small = make_engine(
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
        top_k=4,
        max_batch_rows=1,
        max_queue=2,
    )
    [running] = small.submit(
        ["Once upon a time"], stream=True, max_new_tokens=450, min_new_tokens=450
    )
    assert isinstance(running.next_event(), Delta)  # admitted: the one row is taken
    waiting = small.submit(["Hello world", "x"], max_new_tokens=4)  # two requests of one row
    assert len(waiting) == 2 and small.metrics().queued == 2
    with pytest.raises(OverloadedError, match="max_queue=2"):
        small.submit(["The capital of France is"], max_new_tokens=4)
    running.cancel()
    assert all(isinstance(r.next_event(), Done) for r in waiting)
    assert small.generate(["Hello world"], max_new_tokens=4)[0].text == (
        small.generate(["Hello world"], max_new_tokens=4)[0].text
    )


def test_more_prompts_than_rows_are_split_and_still_exact(make_engine, tiny_dirs):
    small = make_engine(
        tiny_dirs["bytelevel_bpe"], tiny_dirs["sentencepiece_bpe"], top_k=4, max_batch_rows=3
    )
    alone = [small.generate([p], max_new_tokens=6)[0].text for p in PROMPTS[:8]]
    assert [r.text for r in small.generate(PROMPTS[:8], max_new_tokens=6)] == alone


@pytest.mark.parametrize("how", ["close", "del", "cancel"])
def test_a_cancelled_request_frees_its_row_at_the_next_step(engine, how):
    if how == "cancel":
        [req] = engine.submit(["Once upon a time"], max_new_tokens=300, min_new_tokens=300)
        assert wait_until(lambda: engine.metrics().rows_in_flight == 1)
        req.cancel()
    else:
        it = engine.stream("Once upon a time", max_new_tokens=300, min_new_tokens=300)
        next(it)
        if how == "close":
            it.close()
        else:
            del it
            gc.collect()
    # Rows in flight are counted from admission to retirement (never stale behind an event the
    # caller has seen), so 0 means the cancelled row has taken its last step.
    assert wait_until(lambda: engine.metrics().rows_in_flight == 0)
    steps = engine.stats["steps"]
    engine.generate(["x"], max_new_tokens=3, min_new_tokens=3)
    assert engine.stats["steps"] - steps == 3  # nothing else decodes any more


def _two_member_engine(tiny_dirs: Any, cache_dir: Any) -> UniTEEngine:
    return UniTEEngine(
        [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])],
        top_k=3,
        cache_dir=cache_dir,
    )


def test_close_fails_calls_in_flight_and_later_ones(tiny_dirs, cache_dir):
    with _two_member_engine(tiny_dirs, cache_dir) as engine:
        it = engine.stream("Once upon a time", max_new_tokens=300, min_new_tokens=300)
        next(it)
        waiting = engine.submit(["Hello"] * 2, max_new_tokens=4)
        engine.close()
        with pytest.raises(EngineClosedError):
            list(it)
        for r in waiting:  # done before the close, or failed by it: never left hanging
            with contextlib.suppress(EngineClosedError):
                assert isinstance(r.next_event(), Done)
        with pytest.raises(EngineClosedError):
            engine.generate(["Hello"], max_new_tokens=2)
    assert engine.closed and engine.metrics().rows_in_flight == 0


def test_a_context_manager_closes_the_engine(tiny_dirs, cache_dir):
    with UniTEEngine([str(tiny_dirs["bytelevel_bpe"])], cache_dir=cache_dir) as engine:
        assert engine.generate(["Hello"], max_new_tokens=2)[0].text is not None
    assert engine.closed
    with pytest.raises(EngineClosedError):
        list(engine.stream("Hello", max_new_tokens=2))


def test_member_engine_is_a_one_member_view_without_a_reload(engine, tiny_dirs, cache_dir):
    view = engine.member_engine(1)
    assert view is engine.member_engine(engine.member_names[1])
    assert view.members[0].model is engine.members[1].model
    alone = UniTEEngine([str(tiny_dirs["sentencepiece_bpe"])], top_k=4, cache_dir=cache_dir)
    for p in PROMPTS[:4]:
        assert view.generate([p], max_new_tokens=8)[0].text == (
            alone.generate([p], max_new_tokens=8)[0].text
        )
    alone.close()


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from unite_integrations import UniTEEngine
{make}
it = e.stream("Once upon a time", max_new_tokens=400, min_new_tokens=400)
next(it)
{end}
"""


def _exit_code(make: str, end: str) -> subprocess.CompletedProcess[str]:
    script = EXIT_SCRIPT.format(tests=str(Path(__file__).parent), make=make, end=end)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=600,
    )


TINY = (
    "from tiny_models import tiny_model_dir\n"
    "e = UniTEEngine([str(tiny_model_dir('bytelevel_bpe')), "
    "str(tiny_model_dir('sentencepiece_bpe'))], top_k=3)"
)


@pytest.mark.parametrize("end", ["del it", "pass", "e.close()"])
def test_a_script_that_ends_while_decoding_exits_cleanly(end):
    done = _exit_code(TINY, end)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr


@pytest.mark.real
@pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING))
def test_real_pair_script_that_abandons_a_stream_exits_cleanly():
    done = _exit_code('e = UniTEEngine(["smollm2-135m-instruct", "gemma-3-270m"])', "del it")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.real
@pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING))
def test_real_pair_rows_join_and_leave_past_gemmas_sliding_window():
    """A row past Gemma-3's 512-token window joins a running short row and leaves before it (its
    extra columns are trimmed); both, and a third joining later, equal their answers alone."""
    pair = UniTEEngine(["smollm2-135m-instruct", "gemma-3-270m"], check_invariants=True)
    long = " ".join(f"Item {n}: the {['red', 'blue', 'green'][n % 3]} box." for n in range(90))
    long += "\nThe last item is"
    assert len(pair.members[1].encode_prompt(long)) > 512
    short, late = "The capital of France is", "def fibonacci(n):\n"
    alone = {
        p: pair.generate([p], max_new_tokens=n)[0].text
        for p, n in ((short, 40), (long, 10), (late, 8))
    }
    before = pair.stats["steps"]
    running = pair.stream(short, max_new_tokens=40)
    first = next(running).text
    got_long = pair.generate([long], max_new_tokens=10)[0].text  # joins, then leaves first
    got_late = pair.generate([late], max_new_tokens=8)[0].text  # joins the trimmed batch
    got_short = first + "".join(c.text for c in running)
    assert {short: got_short, long: got_long, late: got_late} == alone
    assert pair.stats["steps"] - before < 40 + 10 + 8  # they shared steps
    pair.close()


def test_a_request_that_cannot_start_fails_alone(engine, monkeypatch):
    """A failure while admitting one request (here its generator) fails that request only."""
    from unite_integrations.engine import live as live_module

    running = engine.stream("Once upon a time", max_new_tokens=40, min_new_tokens=40)
    first = next(running).text
    real = live_module._generator

    def broken(opts, device):
        if opts.seed == 13:
            raise RuntimeError("no generator today")
        return real(opts, device)

    monkeypatch.setattr(live_module, "_generator", broken)
    with pytest.raises(RuntimeError, match="no generator today"):
        engine.generate(["Hello"], temperature=1.0, seed=13, max_new_tokens=4)
    rest = "".join(c.text for c in running)
    assert (
        first + rest
        == engine.generate(["Once upon a time"], max_new_tokens=40, min_new_tokens=40)[0].text
    )


def test_a_batch_that_cannot_open_fails_its_requests_and_the_next_one_runs(tiny_dirs, cache_dir):
    """Opening the members' backends (a Ray actor, a device) may fail: the requests that came
    for it fail with the error, the worker lives on, the next request gets a batch."""
    with _two_member_engine(tiny_dirs, cache_dir) as engine:
        ens, opened = engine._ens, []

        def flaky(i: int) -> Any:
            opened.append(i)
            if len(opened) == 1:
                raise RuntimeError("no device today")
            ens.open_member = None
            return ens.backend(i)

        ens.open_member = flaky
        outcome = _outcome_unless_it_hangs(engine)
        assert isinstance(outcome, RuntimeError), outcome
        assert "no device today" in str(outcome)
        assert engine.generate(["Hello"], max_new_tokens=4)[0].usage.output_tokens > 0
        assert opened[:2] == [0, 0]


class _Broken(BaseException):
    """Stands for what no ``except Exception`` catches (a bug, a KeyboardInterrupt)."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_fails_who_waits_and_refuses_later_calls(tiny_dirs, cache_dir):
    with _two_member_engine(tiny_dirs, cache_dir) as engine:
        from unite_integrations.engine import decode

        real = decode.Batch.forward

        def broken(self: Any) -> None:
            raise _Broken("the loop itself broke")

        decode.Batch.forward = broken  # type: ignore[method-assign]
        try:
            outcome = _outcome_unless_it_hangs(engine)
        finally:
            decode.Batch.forward = real  # type: ignore[method-assign]
        assert isinstance(outcome, EngineClosedError), outcome
        assert "worker stopped (_Broken: the loop itself broke)" in str(outcome)
        with pytest.raises(EngineClosedError):
            engine.generate(["Hello"], max_new_tokens=2)


def _outcome_unless_it_hangs(engine: UniTEEngine) -> Any:
    """A short call's results or error, from a thread given 120 s (a guard against a caller
    left waiting forever, not a speed bound)."""
    done: list[Any] = []

    def call() -> None:
        try:
            done.append(engine.generate(["Hello"], max_new_tokens=4))
        except Exception as e:
            done.append(e)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(120)
    assert done, "the call is still waiting: a caller was left hanging"
    return done[0]
