"""Prefix caching on the real pair: the same prompts with and without ``prefix_cache``, side by side.

    python benchmarks/bench_prefix.py --dataset triviaqa,mmlu --limit 48 --batch-sizes 1,16

Two engines over the same members, one keeping prompt prefixes (``prefix_cache``), answer the same
seeded sample of each data set (``unite eval``'s few-shot prompts, greedy, full UniTE or a gate);
the items are cut into chunks and both engines answer each chunk in turn, so a change in the
machine's load hits both alike. The store is emptied before each pass (data set and batch size),
so every pass starts cold and its figure is what a fresh engine would see. Prints the wall-time ratio, how many of the answers are the same
text (they should all be: the stored columns are the ones the model computed), and the prompt
ids each member took from the store against those it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

import torch

from unite_integrations import UniTEEngine
from unite_integrations.compat.datasets import load_task
from unite_integrations.compat.evaluate import run_task
from unite_integrations.defaults import DEFAULT_MEMBERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="triviaqa,mmlu", help="comma-separated data sets")
    ap.add_argument("--limit", type=int, default=48, help="seeded sample per data set")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--chunk", type=int, default=16, help="items per interleaved chunk")
    ap.add_argument("--gate", type=float, default=None, help="default: full UniTE")
    ap.add_argument("--prefix-cache", type=int, default=16384, help="ids kept per member")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; gate {args.gate}"
    )
    plain = UniTEEngine(list(DEFAULT_MEMBERS), prefix_cache=0)
    cached = UniTEEngine(list(DEFAULT_MEMBERS), prefix_cache=args.prefix_cache)
    print(
        f"{'data set':10} {'batch':>5} {'items':>5} {'plain s':>8} {'cached s':>8} {'speed-up':>8}"
        f" {'same text':>9}  prompt ids per member: reused / stored"
    )
    for name in args.dataset.split(","):
        task = load_task(name, "test", limit=args.limit, seed=0)
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            seconds = {"plain": 0.0, "cached": 0.0}
            texts: dict[str, list[str]] = {"plain": [], "cached": []}
            cached.reset_prefix_cache()  # each pass starts cold: nothing from the pass before
            before = [(s.reused, s.stored) for s in cached._ens.stores]
            items = list(task.items)
            for start in range(0, len(items), args.chunk):
                part = dataclasses.replace(task, items=items[start : start + args.chunk])
                for key, engine in (("plain", plain), ("cached", cached)):
                    t0 = time.perf_counter()
                    outs = run_task(engine, part, batch_size=batch, gate=args.gate)
                    seconds[key] += time.perf_counter() - t0
                    texts[key] += [o.text if o is not None else "" for o in outs]
            same = sum(a == b for a, b in zip(texts["plain"], texts["cached"]))
            counts = [
                (s.reused - r0, s.stored - s0) for s, (r0, s0) in zip(cached._ens.stores, before)
            ]
            print(
                f"{name:10} {batch:5d} {len(items):5d} {seconds['plain']:8.1f} "
                f"{seconds['cached']:8.1f} {seconds['plain'] / seconds['cached']:7.2f}x "
                f"{same:4d}/{len(items):<4d}  "
                + ", ".join(f"{r} reused / {s} stored" for r, s in counts),
                flush=True,
            )


if __name__ == "__main__":
    main()
