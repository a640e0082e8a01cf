"""The engine under load, over time and at load time: a concurrency hammer, a memory check, and
quiet loading, on the tiny models and (marked ``real``) on the real pair.

* Hammer: eight threads mixing ``generate``, batched ``generate``, streams read to the end and
  streams abandoned after one chunk (closed, or dropped for the garbage collector), all greedy:
  every answer equals the one the engine gives alone, sequentially.
* Memory: the resident set size stays flat (within a generous bound) over hundreds of calls, a
  third of them abandoned streams.
* Quiet loading: a load prints nothing (no transformers "Loading weights" bars, no tokenizer
  ``model_max_length`` warning); ``UNITE_PROGRESS=1`` brings the bars back.

Bad inputs are in ``test_bad_inputs.py``; a real-pair subset of them is here.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import PROMPTS, REAL_MODELS_MISSING
from test_bad_inputs import BASE, ENGINE_CASES, check_error

from unite_integrations import UniTEEngine, UniteError

needs_real = pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING))
REAL_ALIASES = ["smollm2-135m-instruct", "gemma-3-270m"]


def rss_mib() -> float:
    """This process's resident set size now (not the peak), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the RSS from /proc (Linux)"
)


# -- the hammer --------------------------------------------------------------------------------


def hammer(engine: UniTEEngine, prompts: list[str], budgets: tuple[int, ...], per_thread: int):
    """Eight threads of mixed calls; returns (what each call expected, what it got)."""
    alone = {
        (p, n): engine.generate([p], max_new_tokens=n)[0].text for p in prompts for n in budgets
    }
    start = threading.Barrier(8)
    abandoned = 0

    def worker(t: int) -> list[tuple[str, str]]:
        nonlocal abandoned
        start.wait()
        out = []
        for i in range(per_thread):
            k = t * per_thread + i
            p, q = prompts[k % len(prompts)], prompts[(k + 3) % len(prompts)]
            n = budgets[k % len(budgets)]
            kind = (t + i) % 5
            if kind == 0:
                out.append((alone[p, n], engine.generate([p], max_new_tokens=n)[0].text))
            elif kind == 1:
                got = engine.generate([p, q], max_new_tokens=n)
                out += [(alone[p, n], got[0].text), (alone[q, n], got[1].text)]
            elif kind == 2:
                text = "".join(c.text for c in engine.stream(p, max_new_tokens=n))
                out.append((alone[p, n], text))
            elif kind == 3:  # abandoned after one chunk, closed
                it: Iterator = iter(engine.stream(p, max_new_tokens=64))
                next(it, None)
                it.close()  # type: ignore[attr-defined]
                abandoned += 1
            else:  # abandoned after one chunk, dropped for the garbage collector
                it = iter(engine.stream(q, max_new_tokens=64))
                next(it, None)
                del it
                abandoned += 1
        return out

    with ThreadPoolExecutor(8) as pool:
        pairs = [pair for part in pool.map(worker, range(8)) for pair in part]
    assert abandoned > 0
    # Right after, alone again: nothing left behind changes an answer.
    after = [
        (alone[p, budgets[0]], engine.generate([p], max_new_tokens=budgets[0])[0].text)
        for p in prompts
    ]
    return pairs + after


def test_hammer_eight_threads_mixed_calls_equal_sequential_answers(hetero):
    pairs = hammer(hetero, PROMPTS[:8], budgets=(6, 10), per_thread=10)
    assert len(pairs) > 60
    mismatches = [(want, got) for want, got in pairs if want != got]
    assert mismatches == []


# -- memory ------------------------------------------------------------------------------------


def calls(engine: UniTEEngine, n: int, prompts: list[str], tokens: int) -> None:
    for i in range(n):
        p = prompts[i % len(prompts)]
        if i % 3 == 0:
            engine.generate([p], max_new_tokens=tokens)
        elif i % 3 == 1:
            for _ in engine.stream(p, max_new_tokens=tokens):
                pass
        else:  # abandoned
            it = iter(engine.stream(p, max_new_tokens=tokens * 4))
            next(it, None)
            del it


@needs_proc
def test_memory_stays_flat_over_hundreds_of_calls(hetero):
    calls(hetero, 60, PROMPTS, tokens=4)  # warm-up: allocator pools, caches, lazy imports
    gc.collect()
    before = rss_mib()
    calls(hetero, 300, PROMPTS, tokens=4)
    gc.collect()
    grown = rss_mib() - before
    # A leak of one KV cache, one row of logits or one thread per call would add far more.
    assert grown < 24, f"RSS grew by {grown:.1f} MiB over 300 calls"


# -- quiet loading -----------------------------------------------------------------------------

_LOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from unite_integrations import ContextWindowError, UniTEEngine

    members, cache = sys.argv[1:-1], sys.argv[-1]
    engine = UniTEEngine(members, cache_dir=cache)
    engine.generate(["Hello"], max_new_tokens=2)
    try:  # longer than the tokenizers' model_max_length: the engine's error, no warning
        engine.generate(["word " * 10_000], max_new_tokens=2)
    except ContextWindowError:
        pass
    print("==progress==", file=sys.stderr, flush=True)
    os.environ["UNITE_PROGRESS"] = "1"
    UniTEEngine(members[:1], cache_dir=cache)
    """
)


def load_in_subprocess(members: list[str], cache: Path) -> tuple[str, str]:
    """stderr of a default load (plus a too-long prompt), and of a load with UNITE_PROGRESS=1."""
    env = {k: v for k, v in os.environ.items() if k != "UNITE_PROGRESS"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, *members, str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    quiet, _, loud = done.stderr.partition("==progress==")
    return quiet, loud


def test_an_ordinary_load_prints_nothing(tiny_dirs, tmp_path):
    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    quiet, loud = load_in_subprocess(members, tmp_path)
    assert quiet.strip() == ""
    assert "Loading weights" in loud  # asked for: the bars are back (and this test can fail)


def test_the_progress_switch_is_restored_after_a_load(tiny_dirs, tmp_path):
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    UniTEEngine([str(tiny_dirs["bytelevel_bpe"])], cache_dir=tmp_path)
    assert hf_logging.is_progress_bar_enabled() == was


# -- the real pair (a few dozen calls each) -----------------------------------------------------


@pytest.fixture(scope="module")
def real_pair() -> UniTEEngine:
    return UniTEEngine(REAL_ALIASES, top_k=10)


REAL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "中文：北京是",
    "My favourite emoji is 🎉 because",
    "Once upon a time",
    "1 + 1 =",
]


@pytest.mark.real
@needs_real
def test_real_pair_hammer_equals_sequential_answers(real_pair):
    pairs = hammer(real_pair, REAL_PROMPTS, budgets=(8,), per_thread=3)
    assert [(w, g) for w, g in pairs if w != g] == []


@pytest.mark.real
@needs_real
@needs_proc
def test_real_pair_memory_stays_flat(real_pair):
    calls(real_pair, 9, REAL_PROMPTS, tokens=4)
    gc.collect()
    before = rss_mib()
    calls(real_pair, 30, REAL_PROMPTS, tokens=4)
    gc.collect()
    grown = rss_mib() - before
    assert grown < 128, f"RSS grew by {grown:.1f} MiB over 30 calls"


@pytest.mark.real
@needs_real
def test_real_pair_bad_inputs_then_the_same_answer(real_pair):
    want = real_pair.generate([BASE], max_new_tokens=4)[0].text
    for name, case, expected in ENGINE_CASES[::4]:  # 29 of the table's rows
        with pytest.raises(UniteError) as info:
            case(real_pair)
        check_error(info.value, expected)
        assert real_pair.generate([BASE], max_new_tokens=4)[0].text == want, name


@pytest.mark.real
@needs_real
def test_real_pair_load_prints_nothing():
    from unite_integrations.engine.loading import default_cache_dir

    quiet, loud = load_in_subprocess(REAL_ALIASES, default_cache_dir())  # the converted models
    assert quiet.strip() == ""
    assert "Loading weights" in loud


def test_the_engine_fixes_glibcs_mmap_threshold_unless_the_user_set_one(monkeypatch):
    """glibc's mmap threshold is fixed when an engine starts decoding (its dynamic rise kept
    gigabytes of fragmented heap under sustained load); a ``MALLOC_MMAP_THRESHOLD_`` the user
    set stands."""
    from unite_integrations.engine import memory

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc())
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    memory.tune_malloc.__wrapped__()
    assert calls == [(-3, 1 << 20)]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    memory.tune_malloc.__wrapped__()
    assert calls == [(-3, 1 << 20)]
