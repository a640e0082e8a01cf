"""``unite``: the command line. ``unite generate`` streams an ensemble's answer to the terminal.

Examples::

    unite generate "The capital of France is"
    unite generate --chat "Tell me a joke" --member smollm2-135m-instruct --member gemma-3-270m
    unite generate "Once upon a time" --provenance --max-new-tokens 24
    unite serve -m smollm2-135m-instruct -m gemma-3-270m --port 8000

Each subcommand is a ``Command`` in a module of its own (``generate``, ``check``, ``evaluate``,
``serve``); ``main`` runs them all the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..defaults import DEFAULT_MEMBERS
from ..errors import UniteError
from . import check, evaluate, generate, serve
from .command import Command
from .members import member_specs, start_ray

__all__ = ["COMMANDS", "DEFAULT_MEMBERS", "Command", "main"]

#: The subcommands, in the order ``unite --help`` lists them.
COMMANDS: tuple[Command, ...] = (generate.COMMAND, check.COMMAND, evaluate.COMMAND, serve.COMMAND)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, refuse arguments that cannot run, convert the member options, start Ray if
    ``--ray-address`` asks, run. A ``UniteError`` prints one ``unite: error:`` line: status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parser().parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        command.validate(args)
        specs = member_specs(args)
        start_ray(args)
        return command.run(args, specs)
    except UniteError as e:
        print(f"unite: error: {e}", file=sys.stderr)
        return 2
