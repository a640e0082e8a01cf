"""The traffic the package serves, on the real pair, side by side in one run (the machine is noisy).

    python benchmarks/bench_workloads.py [--turns 6] [--rag 16] [--mixed 6] [--skip agent,rag,mixed]

Three workloads, each printed as ratios measured in this run, with the machine:

- **agent loop**: a ~700-token system prompt, then turns of a short user message and a 24-token
  answer, the whole history re-sent each turn (as LangChain, LlamaIndex and OpenAI clients do).
  Two engines over the same members, one with the default prefix store and one with
  ``prefix_cache=0``, take each turn in turn. Prints each turn's seconds, the last turn over turn
  2 (target <= 1.3) and the last turn without the store over with it (target >= 2.5x), and per
  member how much of each turn's prompt came from the store, and how often the chat template
  re-rendered an earlier answer differently from the ids the member generated for it (the store
  then gives the longest common block prefix only).
- **RAG burst**: 16 requests with one system prompt and different ~500-token passages: sent one at
  a time, then all at once (the store emptied before each), concurrent over one-at-a-time
  throughput (target >= 4x), ids reused counted.
- **mixed lengths through ``unite serve``**: half 20-token and half ~700-token prompts, 16 new
  tokens each, streamed; the short requests' median time to first token behind the long ones
  over their median when only short requests are sent (target <= 2x), and concurrent over
  one-at-a-time throughput (target >= 3x).

Every answer is greedy and compared with the same request's answer alone and without the store:
the counts of equal texts are printed (they should all be equal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import openai  # noqa: E402
import torch  # noqa: E402
from server_harness import running  # noqa: E402

from unite_integrations import UniTEEngine  # noqa: E402
from unite_integrations.defaults import DEFAULT_MEMBERS  # noqa: E402
from unite_integrations.engine.prefix import BLOCK  # noqa: E402


def _texts(n_words: int, seed: int) -> str:
    """About ``n_words`` words of real text: MMLU questions from the repository's data, from
    the ``seed``-th subject on (deterministic, and different passages for different seeds)."""
    files = sorted((ROOT / "data" / "MMLU" / "test").glob("*.jsonl"))
    words: list[str] = []
    for path in files[seed % len(files) :] + files[: seed % len(files)]:
        for line in filter(None, path.read_text().split("\n")):
            words += json.loads(line)["question"].split()
            if len(words) >= n_words:
                return " ".join(words[:n_words])
    return " ".join(words)


SYSTEM = (
    "You are a careful assistant for a library. Answer briefly and cite what you use. "
    + _texts(480, 0)
)


def machine() -> str:
    return (
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )


def reused(engine: UniTEEngine) -> list[int]:
    return [s.reused for s in engine._ens.stores]


# -- agent loop -------------------------------------------------------------------------------------


def agent_loop(cached: UniTEEngine, plain: UniTEEngine, turns: int) -> None:
    questions = [
        "Which of these questions is about algebra?",
        "Summarise the second question in one sentence.",
        "What would a student need to know for the third one?",
        "Pick one question and answer it.",
        "Why is that the answer?",
        "Thank you. What should I read next?",
        "Give me one more practice question.",
        "And its answer?",
    ]
    history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    cached.reset_prefix_cache()
    rows, same, diverged, answers = [], 0, [0] * len(cached.members), [0] * len(cached.members)
    held: list[int] | None = None  # each member's ids after the last answer (whole blocks)
    for t in range(turns):
        history.append({"role": "user", "content": questions[t % len(questions)]})
        ids = [m.encode_prompt(history) for m in cached.members]
        before = reused(cached)
        t0 = time.perf_counter()
        a = cached.generate([history], max_new_tokens=24)[0]
        t1 = time.perf_counter()
        b = plain.generate([history], max_new_tokens=24)[0]
        t2 = time.perf_counter()
        got = [r - r0 for r, r0 in zip(reused(cached), before)]
        if held is not None:  # did the re-rendered history keep the ids of the last answer?
            for i, (g, h) in enumerate(zip(got, held)):
                answers[i] += 1
                diverged[i] += g < h
        held = [
            (n + a.usage.output_tokens_per_member[m.name]) // BLOCK * BLOCK
            for n, m in zip(a.usage.input_tokens_per_member.values(), cached.members)
        ]
        same += a.text == b.text
        rows.append((t + 1, t1 - t0, t2 - t1, [len(i) for i in ids], got))
        history.append({"role": "assistant", "content": a.text})
    print(f"\nagent loop: {turns} turns, ~700-token system prompt, 24 new tokens a turn")
    print(f"{'turn':>4} {'store s':>8} {'no store s':>10}  prompt ids per member (from the store)")
    for turn, s_cached, s_plain, n, got in rows:
        per = ", ".join(f"{x} ({g})" for x, g in zip(n, got))
        print(f"{turn:>4} {s_cached:>8.2f} {s_plain:>10.2f}  {per}")
    last = rows[-1]
    print(
        f"last turn / turn 2 (store): {last[1] / rows[1][1]:.2f} (target <= 1.3); "
        f"last turn without / with the store: {last[2] / last[1]:.2f}x (target >= 2.5x)"
    )
    names = [m.name for m in cached.members]
    print(
        "earlier answer re-rendered differently from the generated ids (store gives less): "
        + ", ".join(f"{n} {d}/{c}" for n, d, c in zip(names, diverged, answers))
    )
    print(f"same text with and without the store: {same}/{turns}")


# -- RAG burst ---------------------------------------------------------------------------------------


def rag_burst(cached: UniTEEngine, plain: UniTEEngine, n: int) -> None:
    system = "Answer the question from the passage only. " + _texts(60, 1)
    prompts = [
        [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": f"Passage: {_texts(380, 2 + k)}\n\nQuestion: what is the passage "
                "mostly about?",
            },
        ]
        for k in range(n)
    ]

    def one(p: Any) -> str:
        return cached.generate([p], max_new_tokens=16)[0].text

    cached.reset_prefix_cache()
    before = reused(cached)
    t0 = time.perf_counter()
    alone = [one(p) for p in prompts]
    sequential = time.perf_counter() - t0
    seq_reused = [r - r0 for r, r0 in zip(reused(cached), before)]
    cached.reset_prefix_cache()
    before = reused(cached)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(one, prompts))
    concurrent = time.perf_counter() - t0
    con_reused = [r - r0 for r, r0 in zip(reused(cached), before)]
    bare = [plain.generate([p], max_new_tokens=16)[0].text for p in prompts]
    sizes = [len(cached.members[0].encode_prompt(p)) for p in prompts]
    print(f"\nRAG burst: {n} requests, one system prompt, different passages (~{sizes[0]} ids)")
    print(
        f"one at a time {sequential:.1f} s, all at once {concurrent:.1f} s: "
        f"{sequential / concurrent:.2f}x (target >= 4x)"
    )
    print(f"ids from the store per member: one at a time {seq_reused}, all at once {con_reused}")
    print(
        f"same text: all at once vs alone {sum(a == b for a, b in zip(together, alone))}/{n}, "
        f"alone vs without the store {sum(a == b for a, b in zip(alone, bare))}/{n}"
    )


# -- mixed lengths through the server ---------------------------------------------------------------


def _stream(client: openai.OpenAI, model: str, content: str) -> tuple[float, float, str]:
    """(time to first token, total time, text) of one streamed request."""
    start = time.perf_counter()
    first, text = None, ""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=16,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text += chunk.choices[0].delta.content
    end = time.perf_counter()
    return (first or end) - start, end - start, text


def mixed(engine: UniTEEngine, plain: UniTEEngine, n: int) -> None:
    shorts = [f"In one word, what colour is item number {k}?" for k in range(n)]
    longs = [f"{_texts(520, 40 + k)}\n\nWhich subject are these questions from?" for k in range(n)]
    model = f"unite:{'+'.join(DEFAULT_MEMBERS)}"

    def burst(client: openai.OpenAI, contents: list[str]) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(contents)) as pool:
            out = list(pool.map(lambda c: _stream(client, model, c), contents))
        return out, time.perf_counter() - t0

    with running(engine) as base:
        client = openai.OpenAI(base_url=base, api_key="none", max_retries=0, timeout=900)
        _stream(client, model, "Hello")  # warm-up
        engine.reset_prefix_cache()
        t0 = time.perf_counter()
        alone = [_stream(client, model, c) for c in shorts + longs]
        sequential = time.perf_counter() - t0
        engine.reset_prefix_cache()
        only_short, _ = burst(client, shorts)
        engine.reset_prefix_cache()
        together, concurrent = burst(client, longs + shorts)
    bare = [
        plain.generate([[{"role": "user", "content": c}]], max_new_tokens=16)[0].text
        for c in shorts + longs
    ]
    short_alone = statistics.median(r[0] for r in only_short)
    short_mixed = statistics.median(r[0] for r in together[n:])
    print(f"\nmixed lengths through unite serve: {n} short + {n} long prompts, 16 new tokens")
    print(
        f"short requests' median TTFT: {short_alone:.2f} s among short ones, {short_mixed:.2f} s "
        f"beside long ones: {short_mixed / short_alone:.2f}x (target <= 2x)"
    )
    print(
        f"one at a time {sequential:.1f} s, all at once {concurrent:.1f} s: "
        f"{sequential / concurrent:.2f}x (target >= 3x)"
    )
    mixed_texts = [r[2] for r in together[n:]] + [r[2] for r in together[:n]]
    print(
        "same text: all at once vs alone "
        f"{sum(a[2] == b for a, b in zip(alone, mixed_texts))}/{2 * n}, alone vs without the "
        f"store {sum(a[2] == b for a, b in zip(alone, bare))}/{2 * n}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--rag", type=int, default=16)
    ap.add_argument("--mixed", type=int, default=6, help="short and long requests, each")
    ap.add_argument("--skip", default="", help="comma-separated: agent, rag, mixed")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(machine())
    cached = UniTEEngine(list(DEFAULT_MEMBERS))  # the default: a store of "auto" size
    plain = UniTEEngine(list(DEFAULT_MEMBERS), prefix_cache=0)
    m = cached.metrics()
    print(f"prefix store (auto): {m.prefix_bytes_max / 2**20:.0f} MiB for both members together")
    if "agent" not in skip:
        agent_loop(cached, plain, args.turns)
    if "rag" not in skip:
        rag_burst(cached, plain, args.rag)
    if "mixed" not in skip:
        mixed(cached, plain, args.mixed)


if __name__ == "__main__":
    main()
