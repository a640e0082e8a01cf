"""``unite check``: should these models be ensembled? The compatibility check, from the shell.

Examples::

    unite check                                         # the default pair, quick (no generation)
    unite check --score smollm2-135m-instruct=0.31 --score gemma-3-270m=0.29
    unite check --task short-answer -n 50 --with-ensemble --json report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .command import Command
from .data import add_data_options, set_threads
from .members import announce

if TYPE_CHECKING:
    from ..compat.report import CompatibilityReport
    from ..engine.config import MemberSpec

__all__ = ["COMMAND", "print_members"]


def _key_value(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, float(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from e


def _arguments(check: argparse.ArgumentParser) -> None:
    """The members, what is known of them already, and what to measure."""
    add_data_options(check)
    for flag, metavar, what in (
        (
            "--score",
            "NAME=VALUE",
            "a score you already have for a member (by name or source; any scale)",
        ),
        (
            "--length",
            "NAME=CHARS",
            "a typical response length you already have for a member (characters)",
        ),
    ):
        check.add_argument(
            flag, action="append", type=_key_value, default=[], metavar=metavar, help=what
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
    mode.add_argument(
        "--members-only",
        action="store_true",
        help="only whether the members fit their devices: weights and KV cache estimated from "
        "their configs, against the free memory (no weights loaded, no check)",
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
    _verdict_arguments(check)


def _verdict_arguments(check: argparse.ArgumentParser) -> None:
    """The verdict's thresholds and where the report goes."""
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


def print_members(args: argparse.Namespace, specs: Sequence[MemberSpec]) -> None:
    """The members' section of the output: which members are checked (stderr), before any
    loads."""
    announce("checking", specs)


def _fit(args: argparse.Namespace, specs: list[MemberSpec]) -> int:
    """``--members-only``: the fit estimate (configs only, no weights read); exit status 1
    where a member would not fit, as its load would refuse."""
    from ..engine.loading import estimate_fit

    report = estimate_fit(specs, cache_dir=args.cache_dir)
    print(report)
    return 0 if report.refusal() is None else 1


def _report(args: argparse.Namespace, specs: list[MemberSpec]) -> CompatibilityReport:
    """The check itself: ``check_compatibility`` with the options as its arguments."""
    from ..compat.check import check_compatibility
    from ..compat.report import Thresholds
    from ..compat.tasks import CalibrationExample

    examples = None
    if args.examples:
        with open(args.examples, encoding="utf-8") as f:
            examples = [CalibrationExample(**json.loads(line)) for line in f if line.strip()]
    mode: Literal["auto", "quick", "measured"] = (
        "quick" if args.quick else "measured" if args.measured else "auto"
    )
    return check_compatibility(
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


def _write(path: str, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


def _run(args: argparse.Namespace, specs: list[MemberSpec]) -> int:
    set_threads(args)
    print_members(args, specs)
    if args.members_only:
        return _fit(args, specs)
    report = _report(args, specs)
    if args.json == "-":
        print(report.model_dump_json(indent=2))
    else:
        print(report.table())
        if args.json:
            _write(args.json, report.model_dump_json(indent=2))
    return 0


COMMAND = Command(
    name="check",
    help="should these models be ensembled? (performance gap, length ratio, vocabulary)",
    description="The compatibility check of Determine-Then-Ensemble: per member its score, "
    "gap to the best and typical answer length; vocabulary facts per pair; a verdict per pair "
    "and overall, and the recommended members, primary and weights. Quick mode (no --task, "
    "--examples or --measured) runs no generation.",
    arguments=_arguments,
    run=_run,
)
