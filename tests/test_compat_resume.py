"""`unite eval --json PATH` writes after every pair (and every N items), whole; `--resume` goes on.

The kill test runs the CLI in a child process that stops itself for good after its third write
(one pair done, half of the next), waits for the file to hold exactly that, kills the child with
SIGKILL, resumes in this process and compares with an uninterrupted run: equal but for timings.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_compat_eval import _members, data_dir  # noqa: F401  (data_dir: a fixture)

from unite_integrations.cli import main
from unite_integrations.cli.evaluate import _warn_unfinished
from unite_integrations.compat import load_task
from unite_integrations.compat.evaluate import ENSEMBLE, EvalReport, evaluate
from unite_integrations.errors import ConfigError

# The module (``unite_integrations.compat.evaluate`` is also the name of the function).
evaluate_module = importlib.import_module("unite_integrations.compat.evaluate")

#: Fields that say when and where a run ran, not what it found.
TIMING = ("started", "seconds", "machine", "resumed_at")


def _untimed(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k not in TIMING}
    out["datasets"] = [
        {**d, "results": [{k: v for k, v in r.items() if k != "seconds"} for r in d["results"]]}
        for d in data["datasets"]
    ]
    return out


def _args(tiny_dirs, data_dir, cache_dir, path: Path) -> list[str]:  # noqa: F811
    return [
        "eval",
        *_members(tiny_dirs),
        "-d",
        "arc,nq",
        "--limit",
        "4",
        "--shots",
        "0",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--records",
        "--no-progress",
        "--data-dir",
        str(data_dir),
        "--cache-dir",
        str(cache_dir),
        "-k",
        "5",
        "--json",
        str(path),
    ]


#: The child: the CLI, whose fourth write never comes (it waits there until it is killed).
CHILD = """
import importlib, sys, threading
from unite_integrations.cli import main
evaluate = importlib.import_module("unite_integrations.compat.evaluate")
writes, write = [], evaluate.write_atomic
def stop_after_three(path, text):
    if len(writes) == 3:
        print("stopped", file=sys.stderr, flush=True)
        threading.Event().wait()
    writes.append(write(path, text))
    return writes[-1]
evaluate.write_atomic = stop_after_three
sys.exit(main(sys.argv[1:]))
"""


def _wait_for(path: Path, child: subprocess.Popen[str], ready: Any, limit: float = 300) -> dict:
    """The file's content once ``ready(content)``; fails if the child ends first."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the child ended ({child.returncode}) first: {child.stderr.read()}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet (a write is never seen half done)
            data = None
        if data is not None and ready(data):
            return data
        time.sleep(0.05)
    pytest.fail(f"{path} never held the expected state")


def test_resume_after_a_killed_run_equals_an_uninterrupted_run(
    tiny_dirs,
    data_dir,  # noqa: F811
    cache_dir,
    tmp_path,
    capsys,
):
    whole, cut = tmp_path / "whole.json", tmp_path / "cut" / "eval.json"
    assert main(_args(tiny_dirs, data_dir, cache_dir, whole)) == 0
    reference = json.loads(whole.read_text())
    assert reference["complete"] is True and reference["pending"] is None
    assert reference["resumed_at"] == [] and reference["settings"]["limit"] == 4
    capsys.readouterr()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *_args(tiny_dirs, data_dir, cache_dir, cut)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Third write: the first member's ARC pair done, two of the second member's four items.
        partial = _wait_for(
            cut, child, lambda d: d["pending"] is not None and d["datasets"][0]["results"]
        )
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    first, second = reference["members"]
    assert partial["complete"] is False and len(partial["datasets"]) == 1
    assert [r["system"] for r in partial["datasets"][0]["results"]] == [first]
    assert partial["pending"]["system"] == second and len(partial["pending"]["outputs"]) == 2
    # What the cut file holds is what the whole run found for the same items.
    assert (
        _untimed(partial)["datasets"][0]["results"][0]
        == (_untimed(reference)["datasets"][0]["results"][0])
    )
    assert not [p for p in cut.parent.iterdir() if p.name != cut.name]  # no temporary file left

    assert main([*_args(tiny_dirs, data_dir, cache_dir, cut), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "resuming" in err and f"2 item(s) of {second}" in err
    resumed = json.loads(cut.read_text())
    assert _untimed(resumed) == _untimed(reference)
    assert resumed["started"] == partial["started"] and len(resumed["resumed_at"]) == 1
    assert resumed["seconds"] >= partial["seconds"]
    assert "ARC-Challenge (free), test" in out and "NaturalQuestions, test" in out

    # Resuming a finished report runs nothing and leaves the file as it is.
    before = cut.read_bytes()
    assert main([*_args(tiny_dirs, data_dir, cache_dir, cut), "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    assert cut.read_bytes() == before


def test_the_json_is_a_whole_report_after_every_write(
    hetero,
    data_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    path, seen = tmp_path / "e.json", []
    write = evaluate_module.write_atomic

    def checked(p: Path, text: str) -> Path:
        out = write(p, text)
        seen.append(EvalReport.model_validate_json(Path(p).read_text(encoding="utf-8")))
        return out

    monkeypatch.setattr(evaluate_module, "write_atomic", checked)
    final = evaluate(
        hetero,
        ["arc", "nq"],
        limit=4,
        shots=0,
        batch_size=2,
        checkpoint_every=2,
        progress=False,
        data_dir=data_dir,
        json_path=path,
    )
    # Six pairs of two batches: a write within each pair and one after it, then the final one.
    assert len(seen) == 13
    pairs = [sum(len(d.results) for d in r.datasets) for r in seen]
    assert pairs == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert [r.pending is not None for r in seen[:12]] == [True, False] * 6
    assert all(not r.complete for r in seen[:12]) and seen[-1].complete
    assert [d.dataset for d in seen[7].datasets] == ["arc", "nq"]  # nq begun: its first pair done
    assert seen[-1] == final and final.settings is not None
    assert [len(r.pending.outputs) for r in seen if r.pending is not None] == [2] * 6
    assert [r.system for r in final.datasets[1].results] == [*hetero.member_names, ENSEMBLE]
    # checkpoint_every=0: after each pair only.
    seen.clear()
    evaluate(
        hetero,
        ["arc"],
        limit=4,
        shots=0,
        batch_size=2,
        checkpoint_every=0,
        progress=False,
        data_dir=data_dir,
        json_path=path,
    )
    assert [r.pending for r in seen] == [None] * 4 and [r.complete for r in seen][-1]


def test_a_resume_with_other_settings_is_refused(
    hetero,
    tiny_dirs,
    data_dir,  # noqa: F811
    cache_dir,
    tmp_path,
    capsys,
):
    path = tmp_path / "e.json"
    base = ["eval", *_members(tiny_dirs), "-d", "piqa", "--shots", "0", "--no-progress"]
    base += ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "-k", "5"]
    assert main([*base, "--limit", "2", "--ensemble-only", "--json", str(path)]) == 0
    written = path.read_bytes()
    capsys.readouterr()

    def refused(extra: list[str]) -> str:
        assert main([*base, *extra, "--json", str(path), "--resume"]) == 2
        err = capsys.readouterr().err
        assert "\nunite: error: cannot resume" in err and path.read_bytes() == written
        return err

    err = refused(["--limit", "3", "--ensemble-only", "--seed", "1"])
    assert "limit: 2 in the file, 3 now" in err and "seed: 0 in the file, 1 now" in err
    assert "data:" not in err  # the items differ because of those two, which are named
    err = refused(["--limit", "2"])  # the members alone too
    assert "members_alone: false in the file, true now" in err
    assert "-k" not in err and "top_k" not in err
    err = refused(["--limit", "2", "--ensemble-only", "-k", "4", "--gate", "0.9"])
    assert "top_k: 5 in the file, 4 now" in err and "gate: null in the file, 0.9 now" in err
    err = refused(["--limit", "2", "--ensemble-only", "-w", "2", "-w", "1"])
    assert "member 0 weight: 0.5 in the file, 0.6666" in err

    # The Python API refuses alike, before loading anything, with the typed error.
    task = load_task("piqa", "test", limit=2, shots=0, data_dir=data_dir)
    task.items[0] = type(task.items[0])("other", "Keep it warm", ("A",), task.items[0].choices)
    with pytest.raises(ConfigError, match="data: the items or prompts of piqa changed"):
        evaluate(hetero, [task], members_alone=False, json_path=path, resume=True, limit=2, shots=0)

    # A file that is no report, or a report of an older version, is refused too.
    path.write_text("{not json")
    assert main([*base, "--limit", "2", "--json", str(path), "--resume"]) == 2
    assert "is not a `unite eval` report" in capsys.readouterr().err
    old = {k: v for k, v in json.loads(written).items() if k != "settings"}
    path.write_text(json.dumps(old))
    assert main([*base, "--limit", "2", "--ensemble-only", "--json", str(path), "--resume"]) == 2
    assert "records no settings" in capsys.readouterr().err
    assert main([*base, "--limit", "2", "--resume"]) == 2
    assert "--resume needs --json PATH" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="checkpoint_every"):
        evaluate(hetero, ["piqa"], checkpoint_every=-1, data_dir=data_dir)

    # Without --resume an unfinished file is replaced, and the CLI says so first.
    path.write_text(json.dumps({**json.loads(written), "complete": False}))
    _warn_unfinished(str(path))
    assert "holds an unfinished evaluation" in capsys.readouterr().err
