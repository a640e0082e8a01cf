"""When does ensembling help? Two tiny experts that know different facts, and a negative control.

    python examples/when_ensembling_helps.py                   # print the tables (cached members)
    python examples/when_ensembling_helps.py --write-docs      # also refresh the docs page + plot

Builds an invented fact set (entities with a city and a favourite colour), trains three tiny
models in-process (a minute or two on two CPUs the first time; then cached in the unite cache
directory like the real models), and measures on every fact:

1. two experts with tokenizers of different families (byte-level BPE, SentencePiece BPE), each
   trained on a different half of the facts: each alone, and their greedy UniTE ensemble;
2. the half-0 expert with a member trained far less on the same half (the negative control).

For each case: accuracy with Wilson 95% intervals, the ensemble against each member paired on the
same facts (Newcombe interval of the difference, exact McNemar p-value), and ``check_compatibility``
on the facts, both halves alike. See docs/when_ensembling_helps.md.

The demonstration itself (the facts, training, the two cases) is ``tests/synthetic_experts.py``:
it trains models, which the library does not do, and shares its tokenizer builders with the test
suite's tiny models, so it runs from a checkout of the repository.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    import unite_integrations  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The demonstration and the tiny models' tokenizer builders it uses.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic_experts import run_demonstration

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "when_ensembling_helps.md"
PLOT = ROOT / "docs" / "img" / "when_ensembling_helps.png"
BEGIN, END = "<!-- measured: begin -->", "<!-- measured: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=120, help="invented entities (120)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per expert (200)")
    parser.add_argument("--weak-steps", type=int, default=15, help="steps of the weak member (15)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (1)")
    parser.add_argument("--cache-dir", default=None, help="where trained members are cached")
    parser.add_argument("--plot", default=None, help="write the plot here (PNG)")
    parser.add_argument(
        "--write-docs", action="store_true", help=f"refresh the table in {DOC.name} and the plot"
    )
    args = parser.parse_args()

    demo = run_demonstration(
        n_entities=args.entities,
        steps=args.steps,
        weak_steps=args.weak_steps,
        threads=args.threads,
        cache_dir=args.cache_dir,
        progress=True,
    )
    table = demo.markdown()
    print(table)
    if args.plot:
        print(f"wrote {demo.plot(args.plot)}", file=sys.stderr)
    if args.write_docs:
        text = DOC.read_text(encoding="utf-8")
        block = f"{BEGIN}\n{table}\n{END}"
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC} and {demo.plot(PLOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
