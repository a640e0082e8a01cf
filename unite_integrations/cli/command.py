"""What every ``unite`` subcommand is: a name, its options and what it runs.

One shape for all of them, so that ``main`` knows none by name: it parses, asks the subcommand to
refuse bad arguments, converts the member options (no side effect), starts Ray if asked, then runs
the subcommand. A new subcommand is one module that builds a ``Command`` and one line in
``cli/__init__.py``'s ``COMMANDS``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.config import MemberSpec

__all__ = ["Command"]


def _accept(args: argparse.Namespace) -> None:
    """The default ``validate``: every combination the parser lets through can run."""


@dataclass(frozen=True)
class Command:
    """One subcommand. ``arguments`` adds its options to its parser; ``validate`` raises a
    ``ConfigError`` for arguments that cannot run, before anything loads or starts (it has no
    side effect); ``run`` gets the parsed arguments and the members they name, and returns the
    exit status."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, list[MemberSpec]], int]
    description: str | None = None
    validate: Callable[[argparse.Namespace], None] = _accept

    def register(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        """Add this subcommand's parser to the ``unite`` parser's subparsers."""
        parser = subparsers.add_parser(self.name, help=self.help, description=self.description)
        self.arguments(parser)
