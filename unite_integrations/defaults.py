"""Defaults every command-line entry point shares (``unite generate``, ``unite check``,
``unite eval``): one place, so the subcommands need not import each other."""

from __future__ import annotations

__all__ = ["DEFAULT_MEMBERS"]

#: The ensemble used when no ``--member`` is given: the two offline built-in models.
DEFAULT_MEMBERS = ("smollm2-135m-instruct", "gemma-3-270m")
