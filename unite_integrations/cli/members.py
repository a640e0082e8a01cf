"""The ensemble options every ``unite`` subcommand shares, and the members they describe.

``-m/--member``, ``-w/--weight``, ``--device``, ``-k/--top-k``, ``--cache-dir`` and
``--ray-address`` mean the same in ``generate``, ``check``, ``eval`` and ``serve``: one definition,
so the commands cannot drift apart. Converting them (``member_specs``) has no side effect;
``start_ray`` is the one place the command line joins or starts Ray, when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..defaults import DEFAULT_MEMBERS

if TYPE_CHECKING:
    from ..engine.config import MemberSpec

__all__ = ["add_member_options", "announce", "member_specs", "start_ray"]


def add_member_options(
    p: argparse.ArgumentParser, *, weights: bool = True, prefix_cache: bool = False
) -> None:
    """Add the ensemble options to a subcommand (``weights=False``: no ``-w``;
    ``prefix_cache``: ``--prefix-cache``, for the commands that decode many prompts)."""
    from ..engine.sources import BUILTIN_ALIASES

    p.add_argument(
        "-m",
        "--member",
        action="append",
        dest="members",
        metavar="SOURCE",
        help="alias, directory, .gguf file or hub id; repeat for each member "
        f"(default: {' + '.join(DEFAULT_MEMBERS)}; aliases: {', '.join(BUILTIN_ALIASES)})",
    )
    if weights:
        p.add_argument(
            "-w",
            "--weight",
            action="append",
            type=float,
            dest="weights",
            help="member weight, once per --member, in the same order",
        )
    p.add_argument("--device", default="cpu", help="device for every member (cpu, cuda:0 ...)")
    p.add_argument("-k", "--top-k", type=int, default=10, help="candidates per member per step")
    p.add_argument("--cache-dir", default=None, help="cache for converted models and maps")
    if prefix_cache:
        p.add_argument(
            "--prefix-cache",
            type=_store_size,
            default="auto",
            metavar="SIZE",
            help="how much of earlier prompts' and answers' KV columns each member keeps for "
            "later prompts that begin alike (a system prompt, few-shot examples, a "
            "conversation's history): 'auto' (default: 10%% of the free memory, at most 2 GiB "
            "a member), a size such as 512MiB or 5%%, a number of ids, or 0 for none",
        )
    p.add_argument(
        "--ray-address",
        default=None,
        help="run every member in a Ray actor: 'local' (a Ray started here), 'auto' (this "
        "machine's cluster) or a cluster address such as ray://head:10001",
    )


def member_specs(args: argparse.Namespace) -> list[MemberSpec]:
    """The members the options name (the built-in pair by default), one weight each.

    ``--ray-address`` places every member on Ray (``placement="ray"``, the one switch); it
    starts nothing here: ``start_ray`` joins the cluster when the command runs."""
    from ..engine.config import MemberSpec
    from ..errors import ConfigError

    sources = args.members or list(DEFAULT_MEMBERS)
    weights = getattr(args, "weights", None) or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise ConfigError(
            f"{len(weights)} --weight for {len(sources)} members: give one --weight per --member"
        )
    placement: Literal["local", "ray"] = "local" if args.ray_address is None else "ray"
    return [
        MemberSpec(source=s, weight=w, device=args.device, placement=placement)
        for s, w in zip(sources, weights)
    ]


def start_ray(args: argparse.Namespace) -> None:
    """Join the Ray that ``--ray-address`` names ('local': start one here), once, before the
    command loads its members; without the option, nothing (the members stay in process)."""
    if args.ray_address is not None:
        from ..engine.ray_members import connect

        connect(args.ray_address)


def announce(verb: str, specs: Sequence[MemberSpec]) -> None:
    """``loading 2 member(s): a, b ...`` on stderr, before the slow part."""
    names = ", ".join(s.source for s in specs)
    print(f"{verb} {len(specs)} member(s): {names} ...", file=sys.stderr)


def _store_size(text: str) -> int | str:
    """``--prefix-cache``: a whole number counts ids; anything else is a size (checked by the
    engine's configuration, whose error names the forms it takes)."""
    return int(text) if text.strip().isdigit() else text
