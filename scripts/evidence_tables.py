"""Render ``unite eval`` JSON files as one table (and plot), optionally into a docs page.

    python scripts/evidence_tables.py evidence/                       # print the table
    python scripts/evidence_tables.py evidence/ --doc docs/eval.md --plot docs/img/eval_real_pair.png

Reads every ``*.json`` in the folder (each an ``EvalReport`` of the same members), joins their data
sets in file-name order, and prints ``EvalReport.table()``: accuracy with Wilson 95% intervals, the
ensemble against its best member paired on the same items (Newcombe interval, exact McNemar), per
system answer statistics, and the machine. With ``--doc`` the text replaces what stands between
``<!-- evidence: begin -->`` and ``<!-- evidence: end -->`` in that page.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import unite_integrations  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unite_integrations.compat.evaluate import EvalReport

BEGIN, END = "<!-- evidence: begin -->", "<!-- evidence: end -->"


def merge(folder: Path) -> EvalReport:
    reports = [
        EvalReport.model_validate_json(p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.json"))
    ]
    if not reports:
        raise SystemExit(f"no *.json in {folder}")
    first = reports[0]
    return first.model_copy(
        update={
            "datasets": [d for r in reports for d in r.datasets],
            "seconds": sum(r.seconds for r in reports),
            "limit": max((r.limit or 0) for r in reports) or None,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--doc", type=Path, default=None, help="write the table into this page")
    parser.add_argument("--plot", type=Path, default=None, help="write the bar chart here")
    args = parser.parse_args()
    report = merge(args.folder)
    m = report.machine
    head = (
        f"Members {', '.join(report.members)} (top-k {report.top_k}, weights "
        f"{', '.join(f'{w:g}' for w in report.weights)}), greedy, seed {report.seed}; started "
        f"{report.started}; {m.processor}, {m.cpus} CPUs, torch {m.torch} ({m.torch_threads} "
        f"threads), devices {', '.join(m.devices) or '-'}, load average {m.load_average}."
    )
    table = report.table()
    print(head, table, sep="\n\n")
    if args.plot:
        print(f"wrote {report.plot(args.plot)}", file=sys.stderr)
    if args.doc:
        text = args.doc.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            raise SystemExit(f"{args.doc} has no {BEGIN} ... {END} block")
        block = f"{BEGIN}\n{head}\n\n```text\n{table}\n```\n{END}"
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        args.doc.write_text(text, encoding="utf-8")
        print(f"wrote {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
