"""``unite eval``: each member alone and the ensemble on benchmark data, from the shell.

Examples::

    unite eval -d triviaqa -d nq -d arc --limit 300 --json eval.json --plot eval.png
    unite eval -d arc -d piqa --both-modes --limit 500     # free-form and letters-only answers
    unite eval -d mmlu --limit 500 --json mmlu.json --resume   # go on where a cut run stopped
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .command import Command
from .data import add_data_options, set_threads
from .members import announce

if TYPE_CHECKING:
    from ..engine.config import MemberSpec

__all__ = ["COMMAND"]


def _arguments(ev: argparse.ArgumentParser) -> None:
    """The members, the data and how the systems answer."""
    add_data_options(ev, weights=True, prefix_cache=True)
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
    _output_arguments(ev)


def _output_arguments(ev: argparse.ArgumentParser) -> None:
    """Where the results go, as the run goes."""
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


def _validate(args: argparse.Namespace) -> None:
    if args.resume and not args.json:
        raise ConfigError("--resume needs --json PATH: the file to resume")
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")


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


def _run(args: argparse.Namespace, specs: list[MemberSpec]) -> int:
    from ..compat.evaluate import evaluate
    from ..engine.config import ensemble_config

    set_threads(args)
    names = [n.strip() for d in args.datasets for n in d.split(",") if n.strip()]
    if args.json and not args.resume:
        _warn_unfinished(args.json)
    config = ensemble_config(
        specs, top_k=args.top_k, cache_dir=args.cache_dir, prefix_cache=args.prefix_cache
    )
    announce("loading", specs)
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


COMMAND = Command(
    name="eval",
    help="accuracy of each member alone and of the ensemble on benchmark data",
    description="Each member alone and the ensemble, on the same prompts, greedy: accuracy "
    "with the number of items, as a table, JSON and a plot. Data sets: arc, piqa, mmlu, "
    "gsm8k, triviaqa, nq (the UniTE paper's data folder layout).",
    arguments=_arguments,
    run=_run,
    validate=_validate,
)
