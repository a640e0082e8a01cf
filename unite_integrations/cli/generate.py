"""``unite generate``: an ensemble's answer to one prompt, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .command import Command
from .members import add_member_options, announce

if TYPE_CHECKING:
    from ..engine.config import MemberSpec
    from ..engine.results import GenerationResult

__all__ = ["COMMAND"]


def _arguments(gen: argparse.ArgumentParser) -> None:
    gen.add_argument("prompt", help="the prompt (raw text, or a user message with --chat)")
    gen.add_argument(
        "--chat",
        action="store_true",
        help="treat the prompt as a user message; each member applies its template",
    )
    gen.add_argument("--system", default=None, help="a system message (implies --chat)")
    add_member_options(gen, prefix_cache=True)
    gen.add_argument("-n", "--max-new-tokens", type=int, default=128)
    gen.add_argument("-t", "--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument(
        "--gate",
        type=float,
        default=None,
        help="gated ensembling: take the primary member's token alone where its top-1 "
        "probability is >= GATE (0..1; default: full UniTE)",
    )
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument(
        "--provenance",
        action="store_true",
        help="after the answer, show which member proposed each token",
    )


def _print_provenance(result: GenerationResult) -> None:
    prov = result.provenance
    names = prov.members
    width = max(len(n) for n in names)
    err = sys.stderr
    print("\n\nprovenance (token | winner | proposed by | each member's probability)", file=err)
    for t in prov.tokens:
        probs = "  ".join(f"{t.probs[n]:.2f}" for n in names)
        proposers = ",".join(str(names.index(p)) for p in t.proposers) or "-"
        print(f"{t.text!r:>14} | {t.winner:<{width}} | {proposers:<5} | {probs}", file=err)
    print("members: " + ", ".join(f"{i}={n}" for i, n in enumerate(names)), file=err)
    print(
        f"agreement rate {prov.agreement_rate:.0%}; won: "
        + ", ".join(f"{n} {s:.0%}" for n, s in prov.win_share.items()),
        file=err,
    )
    u = result.usage
    print(
        f"tokens: {u.input_tokens} in, {u.output_tokens} out; finish: {result.finish_reason}",
        file=err,
    )


def _run(args: argparse.Namespace, specs: list[MemberSpec]) -> int:
    from ..engine.engine import UniTEEngine  # torch is slow to import; keep --help fast

    announce("loading", specs)
    engine = UniTEEngine(
        specs, top_k=args.top_k, cache_dir=args.cache_dir, prefix_cache=args.prefix_cache
    )
    if args.chat or args.system:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        prompt: object = [*messages, {"role": "user", "content": args.prompt}]
    else:
        prompt = args.prompt
    result = None
    for chunk in engine.stream(
        prompt,  # type: ignore[arg-type]
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        gate=args.gate,
        stop=args.stop,
    ):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
        result = chunk.result or result
    sys.stdout.write("\n")
    if args.provenance and result is not None:
        _print_provenance(result)
    return 0


COMMAND = Command(
    name="generate",
    help="generate text with an ensemble, streamed",
    arguments=_arguments,
    run=_run,
)
