"""Gated ensembling on the real pair: accuracy and speed at several gates, in one run.

    python benchmarks/bench_gate.py --dataset nq,triviaqa --limit 200 --json gate.json --plot gate.png

For each gate in {0.5, 0.7, 0.9, 0.97, None (full UniTE)} the ensemble answers the same seeded
sample of each data set (``unite eval``'s prompts and scoring, greedy). The timing is side by
side: the items are cut into chunks and every gate answers each chunk in turn, so a change in the
machine's load hits every gate alike. Each gated setting is compared with full UniTE on the same
items with the project's statistics (``unite_integrations.compat.stats``): accuracy with its
Wilson interval, the paired difference with Newcombe's interval and the exact McNemar p-value.
Speed is reported two ways: output tokens/s, and the wall-time ratio on the same items (full
UniTE's seconds over the gated seconds), which does not reward shorter answers. With
``--prefix-cache``, every gate's run of a chunk starts with an empty store: it reuses what its own
run stored (the chunk's shared few-shot beginnings), never another gate's prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from typing import Any

import torch

from unite_integrations import UniTEEngine
from unite_integrations.compat.datasets import load_task
from unite_integrations.compat.evaluate import run_task, score_results
from unite_integrations.compat.stats import compare_paired, wilson_interval
from unite_integrations.compat.tasks import Task
from unite_integrations.defaults import DEFAULT_MEMBERS

GATES: list[float | None] = [None, 0.5, 0.7, 0.9, 0.97]


def _name(gate: float | None) -> str:
    return "full" if gate is None else f"gate {gate}"


def run_interleaved(
    engine: UniTEEngine,
    task: Task,
    gates: list[float | None],
    chunk: int,
    batch_size: int,
    constrained: bool,
) -> dict[str, dict[str, Any]]:
    """Every gate answers every chunk of ``task`` in turn; per gate: records, seconds, tokens."""
    acc: dict[str, dict[str, Any]] = {
        _name(g): {"gate": g, "outs": [], "seconds": 0.0} for g in gates
    }
    items = list(task.items)
    for start in range(0, len(items), chunk):
        part = dataclasses.replace(task, items=items[start : start + chunk])
        for g in gates:
            engine.reset_prefix_cache()  # no gate takes what another's run of the items stored
            t0 = time.perf_counter()
            outs = run_task(engine, part, batch_size=batch_size, gate=g, constrained=constrained)
            acc[_name(g)]["seconds"] += time.perf_counter() - t0
            acc[_name(g)]["outs"].extend(outs)
        done = min(start + chunk, len(items))
        print(f"  {task.title}: {done}/{len(items)} items", flush=True)
    rows = {}
    for name, a in acc.items():
        outs = a["outs"]
        scored = score_results(
            task, outs, system=name, kind="ensemble", seconds=a["seconds"], keep_records=True
        )
        gated = [o.provenance.gated_share for o in outs if o is not None]
        rows[name] = {
            "gate": a["gate"],
            "correct": [bool(r.correct) for r in scored.records or []],
            "seconds": a["seconds"],
            "tokens": sum(o.usage.output_tokens for o in outs if o is not None),
            "gated_share": sum(gated) / max(len(gated), 1),
        }
    return rows


def summarize(title: str, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Print one table (gated vs full UniTE on the same items) and return its rows."""
    full = rows["full"]
    n = len(full["correct"])
    print(f"\n{title}, n={n} items (95% intervals; McNemar exact)")
    print(
        f"{'setting':9} {'accuracy [Wilson]':22} {'vs full [Newcombe]':24} {'p':>7} "
        f"{'tok/s':>6} {'tok/s x':>7} {'time x':>6} {'gated':>5}"
    )
    out = []
    for name, r in rows.items():
        acc = wilson_interval(sum(r["correct"]), n)
        cmp = compare_paired(r["correct"], full["correct"], names=(name, "full"))
        tps = r["tokens"] / r["seconds"]
        tps_x = tps / (full["tokens"] / full["seconds"])
        time_x = full["seconds"] / r["seconds"]
        d = cmp.difference
        print(
            f"{name:9} {acc.text():22} {100 * d.estimate:+5.1f} [{100 * d.low:+5.1f}, "
            f"{100 * d.high:+5.1f}]{'':6} {cmp.p_value:7.3f} {tps:6.1f} {tps_x:6.2f}x "
            f"{time_x:5.2f}x {r['gated_share']:5.2f}"
        )
        out.append(
            {
                "setting": name,
                "gate": r["gate"],
                "n": n,
                "accuracy": acc.model_dump(),
                "vs_full": cmp.model_dump(),
                "verdict_vs_full": cmp.verdict(),
                "seconds": r["seconds"],
                "output_tokens": r["tokens"],
                "tokens_per_s": tps,
                "tokens_per_s_ratio": tps_x,
                "time_ratio": time_x,
                "gated_share": r["gated_share"],
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="nq,triviaqa", help="comma-separated data sets")
    ap.add_argument("--limit", type=int, default=100, help="seeded sample per data set")
    ap.add_argument("--gates", default=None, help="comma-separated gates (default 0.5..0.97)")
    ap.add_argument("--chunk", type=int, default=32, help="items per interleaved chunk")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override the task's")
    ap.add_argument("--shots", type=int, default=None, help="override the task's few-shot count")
    ap.add_argument("--constrained", action="store_true", help="multiple choice: letters only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--prefix-cache",
        type=lambda v: int(v) if v.isdigit() else v,
        default=0,
        help="the prefix store: 0 (none), ids, a size ('512MiB', '5%%') or 'auto'",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gates = GATES if args.gates is None else [None] + [float(g) for g in args.gates.split(",")]
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )
    engine = UniTEEngine(list(DEFAULT_MEMBERS), prefix_cache=args.prefix_cache)
    pooled: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {"datasets": {}, "machine": platform.platform()}
    for name in args.dataset.split(","):
        task = load_task(name, "test", limit=args.limit, seed=0, shots=args.shots)
        if args.max_new_tokens:
            task = dataclasses.replace(task, max_new_tokens=args.max_new_tokens)
        rows = run_interleaved(engine, task, gates, args.chunk, args.batch_size, args.constrained)
        report["datasets"][name] = summarize(task.title, rows)
        for k, r in rows.items():
            p = pooled.setdefault(k, {**r, "correct": [], "seconds": 0.0, "tokens": 0, "w": []})
            p["correct"] += r["correct"]
            p["seconds"] += r["seconds"]
            p["tokens"] += r["tokens"]
            p["w"].append((r["gated_share"], len(r["correct"])))
    for p in pooled.values():
        p["gated_share"] = sum(s * n for s, n in p["w"]) / sum(n for _, n in p["w"])
    report["pooled"] = summarize("All data sets pooled", pooled)
    stores = engine._ens.stores
    if stores:
        report["prefix_cache"] = [{"stored": s.stored, "reused": s.reused} for s in stores]
        print("prefix cache (ids per member):", report["prefix_cache"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report["pooled"], args.plot)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Accuracy (Wilson interval) against the wall-time speed-up; full UniTE's interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    full = next(r for r in rows if r["gate"] is None)["accuracy"]
    ax.axhspan(full["low"], full["high"], color="0.9", label="full UniTE, 95% interval")
    for r in rows:
        a = r["accuracy"]
        ax.errorbar(
            r["time_ratio"],
            a["estimate"],
            yerr=[[a["estimate"] - a["low"]], [a["high"] - a["estimate"]]],
            fmt="o",
            capsize=3,
        )
        ax.annotate(
            r["setting"],
            (r["time_ratio"], a["estimate"]),
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel("speed-up over full UniTE (wall time, same items)")
    ax.set_ylabel(f"accuracy (n={rows[0]['n']})")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
