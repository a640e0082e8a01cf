"""Gated ensembling on the real pair: accuracy and speed at several gates, in one run.

    python benchmarks/bench_gate.py --dataset arc --limit 30 --plot gate.png

For each gate in {0.5, 0.7, 0.9, 0.97, None (full UniTE)} the ensemble answers the same seeded
sample (``unite eval``'s prompts and scoring, greedy), timed side by side; each gated setting is
compared with full UniTE on the same items: accuracy difference with a paired 95% interval
(normal approximation on the per-item differences) and the discordant pairs (McNemar's counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

from unite_integrations import UniTEEngine
from unite_integrations.compat.datasets import load_task
from unite_integrations.compat.evaluate import run_task, score_results
from unite_integrations.defaults import DEFAULT_MEMBERS

GATES: list[float | None] = [None, 0.5, 0.7, 0.9, 0.97]


def paired(a: list[bool], b: list[bool]) -> dict[str, float]:
    """Accuracy of b minus a, its paired 95% interval, and the discordant counts."""
    d = [int(y) - int(x) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / max(n - 1, 1))
    half = 1.96 * sd / math.sqrt(n)
    return {
        "diff": mean,
        "lo": mean - half,
        "hi": mean + half,
        "only_full": d.count(-1),
        "only_gated": d.count(1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="arc")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    task = load_task(args.dataset, "test", limit=args.limit, seed=0)
    if args.max_new_tokens:
        task = dataclasses.replace(task, max_new_tokens=args.max_new_tokens)
    engine = UniTEEngine(list(DEFAULT_MEMBERS))
    rows = []
    for gate in GATES:
        t0 = time.perf_counter()
        outs = run_task(engine, task, batch_size=args.batch_size, gate=gate)
        secs = time.perf_counter() - t0
        scored = score_results(
            task, outs, system=str(gate), kind="ensemble", seconds=secs, keep_records=True
        )
        tokens = sum(o.usage.output_tokens for o in outs if o is not None)
        gated = [o.provenance.gated_share for o in outs if o is not None]
        print(
            f"gate {gate}: {scored.accuracy:.3f} in {secs:.1f} s, {tokens / secs:.1f} tok/s",
            flush=True,
        )
        rows.append(
            {
                "gate": gate,
                "accuracy": scored.accuracy,
                "correct": [r.correct for r in scored.records or []],
                "seconds": secs,
                "tokens_per_s": tokens / secs,
                "gated_share": sum(gated) / max(len(gated), 1),
            }
        )
    full = rows[0]
    print(f"{task.title}, n={len(task.items)}")
    print("gate   acc    d(acc) vs full [95% CI]     full-only/gated-only  tok/s  speed-up  gated")
    for r in rows:
        cmp = paired(full["correct"], r["correct"])
        r["vs_full"] = cmp
        print(
            f"{r['gate']!s:6} {r['accuracy']:.3f}  {cmp['diff']:+.3f} [{cmp['lo']:+.3f}, "
            f"{cmp['hi']:+.3f}]   {cmp['only_full']:3d}/{cmp['only_gated']:<3d}"
            f"               {r['tokens_per_s']:6.1f}  {r['tokens_per_s'] / full['tokens_per_s']:.2f}x"
            f"     {r['gated_share']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": task.name, "n": len(task.items), "rows": rows}, f, indent=1)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            c = r["vs_full"]
            x = r["tokens_per_s"] / full["tokens_per_s"]
            ax.errorbar(
                x,
                r["accuracy"],
                yerr=[[c["diff"] - c["lo"]], [c["hi"] - c["diff"]]],
                fmt="o",
                capsize=3,
            )
            ax.annotate("full" if r["gate"] is None else f"gate {r['gate']}", (x, r["accuracy"]))
        ax.set_xlabel("speed vs full UniTE (tokens/s ratio)")
        ax.set_ylabel(f"accuracy ({task.title}, n={len(task.items)})")
        fig.tight_layout()
        fig.savefig(args.plot)


if __name__ == "__main__":
    main()
