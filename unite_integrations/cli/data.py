"""The options ``unite check`` and ``unite eval`` share beside the members: where the data is,
how many prompts go together, torch's threads, the progress bar."""

from __future__ import annotations

import argparse

from .members import add_member_options

__all__ = ["add_data_options", "set_threads"]


def add_data_options(
    p: argparse.ArgumentParser, *, weights: bool = False, prefix_cache: bool = False
) -> None:
    """The member options (``add_member_options``), then the data and batching options."""
    add_member_options(p, weights=weights, prefix_cache=prefix_cache)
    p.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default: $UNITE_DATA_DIR, else the data/ folder of the repository checkout)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def set_threads(args: argparse.Namespace) -> None:
    """``--threads``: torch's CPU threads for this process (unset: torch's own choice)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
