"""``unite check`` and ``unite eval``: the compatibility check and the evaluation, from the shell.

Examples::

    unite check                                         # the default pair, quick (no generation)
    unite check --score smollm2-135m-instruct=0.31 --score gemma-3-270m=0.29
    unite check --task short-answer -n 50 --with-ensemble --json report.json
    unite eval -d triviaqa -d nq -d arc --limit 300 --json eval.json --plot eval.png
    unite eval -d arc -d piqa --both-modes --limit 500     # free-form and letters-only answers
    unite eval -d mmlu --limit 500 --json mmlu.json --resume   # go on where a cut run stopped
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from ..cli_members import add_member_options, member_specs
from ..errors import ConfigError

__all__ = ["add_subcommands"]


def _member_options(
    p: argparse.ArgumentParser, *, weights: bool = False, prefix_cache: bool = False
) -> None:
    add_member_options(p, weights=weights, prefix_cache=prefix_cache)
    p.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default: $UNITE_DATA_DIR, else the data/ folder of the repository checkout)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _key_value(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from e


def add_subcommands(subparsers: Any) -> None:
    """Register ``check`` and ``eval`` on the ``unite`` parser's subparsers; each sets ``handler``."""
    check = subparsers.add_parser(
        "check",
        help="should these models be ensembled? (performance gap, length ratio, vocabulary)",
        description="The compatibility check of Determine-Then-Ensemble: per member its score, "
        "gap to the best and typical answer length; vocabulary facts per pair; a verdict per pair "
        "and overall, and the recommended members, primary and weights. Quick mode (no --task, "
        "--examples or --measured) runs no generation.",
    )
    _member_options(check)
    check.add_argument(
        "--score",
        action="append",
        type=_key_value,
        default=[],
        metavar="NAME=VALUE",
        help="a score you already have for a member (by name or source; any scale)",
    )
    check.add_argument(
        "--length",
        action="append",
        type=_key_value,
        default=[],
        metavar="NAME=CHARS",
        help="a typical response length you already have for a member (characters)",
    )
    check.add_argument(
        "--task",
        default=None,
        help="measure on a calibration task: multiple-choice, short-answer, math (bundled), or "
        "arc, piqa, mmlu, gsm8k, triviaqa, nq (their train/dev split)",
    )
    check.add_argument(
        "--examples",
        default=None,
        metavar="FILE",
        help="measure on your own examples: JSON lines with question, answer, optional choices",
    )
    mode = check.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="no generation (vocabulary + scores)")
    mode.add_argument(
        "--measured", action="store_true", help="measure (default task: short-answer)"
    )
    check.add_argument("-n", "--n-items", type=int, default=50, help="calibration items (50)")
    check.add_argument("--seed", type=int, default=0, help="seed of the calibration sample")
    check.add_argument(
        "--with-ensemble", action="store_true", help="also score the ensemble on the sample"
    )
    check.add_argument(
        "--free-form",
        action="store_true",
        help="multiple choice: read the letter from free answers (default: decode under a "
        "grammar that allows only the option letters)",
    )
    check.add_argument("--compatible-gap", type=float, default=0.10, help="(0.10)")
    check.add_argument("--incompatible-gap", type=float, default=0.15, help="(0.15)")
    check.add_argument("--max-length-ratio", type=float, default=2.0, help="(2.0)")
    check.add_argument(
        "--no-overlap", action="store_true", help="skip the top-k overlap (no forward pass)"
    )
    check.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="write the report as JSON to PATH (or to stdout instead of the table)",
    )
    check.set_defaults(handler=run_check)

    ev = subparsers.add_parser(
        "eval",
        help="accuracy of each member alone and of the ensemble on benchmark data",
        description="Each member alone and the ensemble, on the same prompts, greedy: accuracy "
        "with the number of items, as a table, JSON and a plot. Data sets: arc, piqa, mmlu, "
        "gsm8k, triviaqa, nq (the UniTE paper's data folder layout).",
    )
    _member_options(ev, weights=True, prefix_cache=True)
    ev.add_argument(
        "-d",
        "--dataset",
        action="append",
        dest="datasets",
        required=True,
        metavar="NAME",
        help="arc, piqa, mmlu, gsm8k, triviaqa, nq (repeat, or comma-separate)",
    )
    ev.add_argument("--split", default="test", help="test (report) or dev/train (tune)")
    ev.add_argument("--limit", type=int, default=None, help="a seeded sample of N items per set")
    ev.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    ev.add_argument("--shots", type=int, default=None, help="few-shot examples (paper's default)")
    ev.add_argument(
        "--chat",
        action="store_true",
        help="send each prompt as a user message (each member applies its chat template)",
    )
    answers = ev.add_mutually_exclusive_group()
    answers.add_argument(
        "--constrained",
        action="store_true",
        help="multiple choice: decode every system's answer under a grammar that allows only the "
        "option letters (members alone and the ensemble alike); other formats stay free-form",
    )
    answers.add_argument(
        "--both-modes",
        action="store_true",
        help="multiple choice: report free-form and constrained answers side by side",
    )
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--members-only", action="store_true", help="skip the ensemble")
    which.add_argument("--ensemble-only", action="store_true", help="skip the members alone")
    ev.add_argument(
        "--gate",
        type=float,
        default=None,
        help="gated ensembling for the ensemble (0..1; default: full UniTE)",
    )
    ev.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the results as JSON: after every (system, data set) pair and every "
        "--checkpoint-every items, each time whole (a cut run leaves what it finished)",
    )
    ev.add_argument(
        "--resume",
        action="store_true",
        help="if the --json file exists, keep what it holds and evaluate the rest (it must have "
        "been written with the same members, data sets and options)",
    )
    ev.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="also write --json within a pair every N items (100; 0: after each pair only)",
    )
    ev.add_argument("--plot", default=None, metavar="PATH", help="write a bar chart (PNG, SVG)")
    ev.add_argument(
        "--records", action="store_true", help="keep every answer in the JSON (for inspection)"
    )
    ev.set_defaults(handler=run_eval)


def _setup(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _write(path: str, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


def _warn_unfinished(path: str) -> None:
    """Say so when --json (without --resume) is about to replace an unfinished evaluation."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("complete") is False:
        print(
            f"note: {path} holds an unfinished evaluation; it will be replaced (stop now and "
            "add --resume to go on with it instead)",
            file=sys.stderr,
        )


def run_check(args: argparse.Namespace) -> int:
    from .check import check_compatibility
    from .report import Thresholds
    from .tasks import CalibrationExample

    _setup(args)
    specs = member_specs(args)
    examples = None
    if args.examples:
        with open(args.examples, encoding="utf-8") as f:
            examples = [CalibrationExample(**json.loads(line)) for line in f if line.strip()]
    mode: Literal["auto", "quick", "measured"] = (
        "quick" if args.quick else "measured" if args.measured else "auto"
    )
    print(
        f"checking {len(specs)} member(s): {', '.join(s.source for s in specs)} ...",
        file=sys.stderr,
    )
    report = check_compatibility(
        specs,
        mode=mode,
        task=args.task,
        examples=examples,
        scores=dict(args.score) or None,
        lengths=dict(args.length) or None,
        n_items=args.n_items,
        seed=args.seed,
        thresholds=Thresholds(
            compatible_gap=args.compatible_gap,
            incompatible_gap=args.incompatible_gap,
            max_length_ratio=args.max_length_ratio,
        ),
        topk_overlap=not args.no_overlap,
        with_ensemble=args.with_ensemble,
        constrained=False if args.free_form else None,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
    )
    if args.json == "-":
        print(report.model_dump_json(indent=2))
    else:
        print(report.table())
        if args.json:
            _write(args.json, report.model_dump_json(indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..engine.config import ensemble_config
    from .evaluate import evaluate

    if args.resume and not args.json:
        raise ConfigError("--resume needs --json PATH: the file to resume")
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    _setup(args)
    specs = member_specs(args)
    names = [n.strip() for d in args.datasets for n in d.split(",") if n.strip()]
    if args.json and not args.resume:
        _warn_unfinished(args.json)
    config = ensemble_config(
        specs, top_k=args.top_k, cache_dir=args.cache_dir, prefix_cache=args.prefix_cache
    )
    print(
        f"loading {len(specs)} member(s): {', '.join(s.source for s in specs)} ...", file=sys.stderr
    )
    report = evaluate(
        config,
        names,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        shots=args.shots,
        chat=args.chat,
        batch_size=args.batch_size,
        members_alone=not args.ensemble_only,
        ensemble=not args.members_only,
        progress=not args.no_progress,
        keep_records=args.records,
        mode="both" if args.both_modes else "constrained" if args.constrained else "free",
        data_dir=args.data_dir,
        gate=args.gate,
        json_path=args.json,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    print(report.table())
    if args.json:
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        print(f"wrote {report.plot(args.plot)}", file=sys.stderr)
    return 0
