"""Rerun mutmut's surviving mutants one at a time, each in a fresh pytest process.

mutmut 3.8.1 runs mutants in long-lived forked workers; in this project it reported as surviving
a mutant that a fresh ``pytest`` with ``MUTANT_UNDER_TEST`` set kills at once (``parse_tool_calls``
with ``calls = None``, which every parsing test trips on). This script is the check: for each
mutant it runs the test files mutmut's own stats map to the mutated function (or ``--tests``
only), with mutmut's pytest options, in ``mutants/``, and prints killed/survived per mutant.

    make mutation MUTANTS='unite_integrations.engine.constraints.*'
    python scripts/recheck_mutants.py                       # every survivor mutmut lists
    python scripts/recheck_mutants.py --match constraints --tests tests/test_constraints.py

Run it after ``make mutation`` (it needs ``mutants/``); a test file changed since is copied in
with ``--copy-tests``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not real and not slow"]


def survivors(match: str) -> list[str]:
    """Mutant names mutmut lists as survived, filtered by a substring."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    names = [
        ln.split(":")[0].strip() for ln in out.splitlines() if ln.rstrip().endswith("survived")
    ]
    return [n for n in names if match in n]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutant names (default: mutmut's survivors)")
    p.add_argument("--match", default="", help="only survivors whose name contains this")
    p.add_argument("--tests", help="comma-separated test files (default: mutmut's stats)")
    p.add_argument("--copy-tests", action="store_true", help="copy tests/ into mutants/ first")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant")
    p.add_argument("--json", help="write {mutant: status} here")
    a = p.parse_args()
    mutants = ROOT / "mutants"
    if not (mutants / "mutmut-stats.json").exists():
        p.error("no mutants/mutmut-stats.json: run `make mutation` first")
    if a.copy_tests:
        shutil.copytree(ROOT / "tests", mutants / "tests", dirs_exist_ok=True)
    stats = json.loads((mutants / "mutmut-stats.json").read_text())[
        "tests_by_mangled_function_name"
    ]
    names = a.names or survivors(a.match)
    status: dict[str, str] = {}
    for name in names:
        files = (
            a.tests.split(",")
            if a.tests
            else sorted(
                {t.split("::")[0] for t in stats.get(re.sub(r"__mutmut_\d+$", "", name), [])}
            )
        )
        env = dict(os.environ, MUTANT_UNDER_TEST=name, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        env["PYTHONPATH"] = str(mutants)
        try:
            rc = subprocess.run(
                [sys.executable, "-m", "pytest", *ARGS, *files],
                cwd=mutants,
                env=env,
                capture_output=True,
                timeout=a.timeout,
            ).returncode
            status[name] = {0: "survived", 1: "killed", 5: "no tests"}.get(rc, f"exit {rc}")
        except subprocess.TimeoutExpired:
            status[name] = "timeout"
        print(status[name], name, flush=True)
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    print(counts)
    if a.json:
        Path(a.json).write_text(json.dumps(status, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
