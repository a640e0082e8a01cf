"""Continuous batching: aggregate tokens/s of N concurrent greedy requests against one at a time.

Both sides run in one process, on the same engine and the same requests (fixed lengths, END
disabled), interleaved over ``--repeats`` passes, so machine load hits both alike. Prints the ratio
(concurrent / one at a time) and checks that every concurrent answer equals its sequential one.

Usage: ``python benchmarks/bench_batching.py [--clients 16] [--tokens 32] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from unite_integrations import UniTEEngine

TOPICS = [
    "a lighthouse keeper",
    "the printing press",
    "how bicycles work",
    "a city at night",
    "the history of tea",
    "volcanoes",
    "a chess tournament",
    "the moon landing",
    "bread baking",
    "a mountain village",
    "migrating birds",
    "the first computers",
    "a storm at sea",
    "coral reefs",
    "an old library",
    "the silk road",
]


def one_at_a_time(engine: UniTEEngine, prompts: list[str], n: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = [engine.generate([p], max_new_tokens=n, min_new_tokens=n)[0].text for p in prompts]
    return time.perf_counter() - start, texts


def concurrent(engine: UniTEEngine, prompts: list[str], n: int) -> tuple[float, list[str]]:
    gate = threading.Barrier(len(prompts) + 1)

    def call(p: str) -> str:
        gate.wait()
        return engine.generate([p], max_new_tokens=n, min_new_tokens=n)[0].text

    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(call, p) for p in prompts]
        gate.wait()
        start = time.perf_counter()
        texts = [f.result() for f in futures]
    return time.perf_counter() - start, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--members", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    args = parser.parse_args()

    engine = UniTEEngine(args.members, top_k=10, prefix_cache=0)  # the decoding alone, no reuse
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; members: {', '.join(engine.member_names)}"
    )
    prompts = [f"Write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(args.clients)]
    engine.generate(["warm up"], max_new_tokens=4)
    total = args.clients * args.tokens
    ratios = []
    for _ in range(args.repeats):
        t_seq, seq = one_at_a_time(engine, prompts, args.tokens)
        steps = engine.stats["steps"]
        t_con, con = concurrent(engine, prompts, args.tokens)
        assert con == seq, "a concurrent answer differs from its sequential one"
        ratios.append(t_seq / t_con)
        print(
            f"  {args.clients} x {args.tokens} tokens: one at a time {total / t_seq:.1f} tok/s, "
            f"concurrent {total / t_con:.1f} tok/s ({engine.stats['steps'] - steps} union steps)"
            f" -> {t_seq / t_con:.2f}x"
        )
    print(f"aggregate throughput, concurrent / one at a time: {statistics.median(ratios):.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
