"""The server under concurrent clients, measured side by side in one run (the machine is noisy).

Starts ``unite serve``'s app in-process on a free loopback port with the real offline pair
(SmolLM2-135M-Instruct + Gemma-3-270M) and sends the same streamed chat requests (greedy, fixed
length: ``min_tokens`` = ``max_tokens``) one at a time, then with 4 and 16 concurrent clients.
Prints, per setting: aggregate output tokens/s, p50/p95 time to first token (TTFT) and p50/p95
time per output token after the first, and each as a ratio to one-at-a-time.

Target on 2 CPUs: 16 concurrent clients at least 4x the one-at-a-time throughput (needs the
engine's continuous batching; with batch-at-a-time scheduling the ratio is lower).

Usage: ``python benchmarks/bench_serve.py [--requests 16] [--tokens 32] [--levels 1 4 16]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import openai
import torch
from server_harness import running

from unite_integrations.engine.config import ensemble_config
from unite_integrations.engine.registry import get_engine

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]
PROMPTS = [
    "Write a story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "Describe the water cycle.",
    "Give advice to a new gardener.",
    "What makes a good cup of tea?",
    "Describe a walk through a forest.",
    "Why is the sky blue?",
    "Tell me about the history of bread.",
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_level(
    base: str, model: str, concurrency: int, n: int, tokens: int
) -> dict[str, float]:
    client = openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    ttft: list[float] = []
    per_token: list[float] = []
    produced = 0

    async def one(i: int) -> None:
        nonlocal produced
        async with gate:
            start = time.perf_counter()
            first = last = None
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"min_tokens": tokens},
            )
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or now
                    last = now
                if chunk.usage is not None:
                    produced += chunk.usage.completion_tokens
                    count = chunk.usage.completion_tokens
            assert first is not None and last is not None
            ttft.append(first - start)
            per_token.append((last - first) / max(count - 1, 1))

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    return {
        "tps": produced / wall,
        "ttft50": pct(ttft, 0.5),
        "ttft95": pct(ttft, 0.95),
        "tok50": pct(per_token, 0.5),
        "tok95": pct(per_token, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, python "
        f"{platform.python_version()}"
    )
    engine = get_engine(ensemble_config(MEMBERS, top_k=10))
    with running(engine) as base:
        model = f"unite:{'+'.join(MEMBERS)}"
        asyncio.run(run_level(base, model, 1, 2, 4))  # warm-up
        rows = {
            c: asyncio.run(run_level(base, model, c, args.requests, args.tokens))
            for c in args.levels
        }
    base_row = rows[args.levels[0]]
    print(
        f"{args.requests} streamed requests x {args.tokens} tokens, greedy; ratios against "
        f"{args.levels[0]} client(s) at a time"
    )
    print(
        f"{'clients':>7} {'tok/s':>8} {'x':>6} {'TTFT p50':>9} {'p95':>7} {'tok p50':>8} {'p95':>7}"
    )
    for c, r in rows.items():
        print(
            f"{c:>7} {r['tps']:>8.1f} {r['tps'] / base_row['tps']:>6.2f} "
            f"{r['ttft50']:>8.2f}s {r['ttft95']:>6.2f}s {r['tok50'] * 1000:>6.0f}ms "
            f"{r['tok95'] * 1000:>5.0f}ms"
        )
    for c, r in rows.items():
        print(
            f"ratios at {c:>2} clients: throughput {r['tps'] / base_row['tps']:.2f}x, TTFT p50 "
            f"{r['ttft50'] / base_row['ttft50']:.2f}x, per-token p50 "
            f"{r['tok50'] / base_row['tok50']:.2f}x"
        )


if __name__ == "__main__":
    main()
