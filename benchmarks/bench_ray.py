"""Members in Ray actors against members in process: per-token time, and bytes per step.

Both engines run in one process over the same members and the same requests (fixed lengths, END
disabled), interleaved over ``--repeats`` passes so machine load hits both alike. Prints, at each
batch size, ms per token for each and their ratio (actors / in process), and the bytes that
crossed to and from the actors per union step. A local Ray is started unless ``--ray-address``.

Usage: ``python benchmarks/bench_ray.py [--batch 1 16] [--tokens 16] [--repeats 1]``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ray

from unite_integrations import UniTEEngine

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]


def _timed(engine: UniTEEngine, prompts: list[str], tokens: int) -> tuple[float, int, int]:
    """(seconds, steps, bytes) for one greedy batch of fixed length."""
    steps, moved = engine.stats["steps"], engine.wire["bytes"]
    t = time.perf_counter()
    engine.generate(prompts, max_new_tokens=tokens, min_new_tokens=tokens)
    return (
        time.perf_counter() - t,
        engine.stats["steps"] - steps,
        engine.wire["bytes"] - moved,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ray-address", default=None)
    args = ap.parse_args()
    ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    local = UniTEEngine(MEMBERS)
    remote = UniTEEngine(MEMBERS, backend="ray", ray_address=args.ray_address)
    print(f"members: {' + '.join(MEMBERS)}; {args.tokens} tokens, {args.repeats} repeat(s)")
    for b in args.batch:
        prompts = [f"Write about topic number {n}." for n in range(b)]
        _timed(local, prompts[:1], 2), _timed(remote, prompts[:1], 2)  # warm both
        t_local = t_remote = 0.0
        steps = moved = 0
        for _ in range(args.repeats):
            t_local += _timed(local, prompts, args.tokens)[0]
            dt, s, m = _timed(remote, prompts, args.tokens)
            t_remote, steps, moved = t_remote + dt, steps + s, moved + m
        per_tok = 1000 / (args.repeats * args.tokens)
        print(
            f"batch {b:>3}: in process {t_local * per_tok:7.1f} ms/step, actors "
            f"{t_remote * per_tok:7.1f} ms/step, ratio {t_remote / t_local:5.2f}; "
            f"{moved / max(steps, 1):,.0f} bytes/step ({moved / max(steps, 1) / b:,.0f} per row)"
        )
    remote.close()
    local.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
