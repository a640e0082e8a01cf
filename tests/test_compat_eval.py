"""`unite eval` and `unite check` end to end on tiny models and a small data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unite_integrations.cli import main
from unite_integrations.compat import EvalReport, evaluate, load_task
from unite_integrations.compat.evaluate import (
    ENSEMBLE,
    _batches,
    choice_constraint,
    member_engines,
    run_task,
    score_results,
)
from unite_integrations.errors import ConfigError


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder in the paper's layout, small enough for 512-token tiny models."""
    root = tmp_path_factory.mktemp("data")
    colours = ("red", "green", "blue", "black", "white", "small")
    mc = [
        {
            "question": f"Which animal is {c}?",
            "A": "cat",
            "B": "dog",
            "C": "fox",
            "D": "bird",
            "answer": "ABCD"[n % 4],
        }
        for n, c in enumerate(colours)
    ]
    _write(root / "ARC-challenge" / "test.jsonl", mc)
    _write(root / "ARC-challenge" / "train.jsonl", mc[:3])
    _write(
        root / "PIQA" / "dev_our.jsonl",
        [
            {"question": f"Keep a {c} cup warm", "A": "lid", "B": "ice", "answer": "A"}
            for c in colours
        ],
    )
    _write(root / "MMLU" / "test" / "a.jsonl", [{**m, "domain": "x"} for m in mc[:4]])
    _write(root / "MMLU" / "dev" / "a.jsonl", [{**m, "domain": "x"} for m in mc[4:]])
    qa = [{"question": f"What colour is the {c} cat?", "answer": [c]} for c in colours]
    for folder, test in (
        ("TriviaQA", "wikipedia-test-6000.jsonl"),
        ("NaturalQuestions", "test/natural-questions.jsonl"),
    ):
        _write(root / folder / test, qa)
    (root / "NaturalQuestions" / "dev").mkdir(parents=True, exist_ok=True)
    (root / "NaturalQuestions" / "dev" / "nq_prompt.txt").write_text(
        "Question: who sings hello\nAnswer: Adele"
    )
    (root / "TriviaQA" / "prompt.txt").write_text(
        "Answer the question.\n\nQuestion: What is 2 + 3?\nAnswer: 5.\n\n"
        "Question: What colour is the sky?\nAnswer: blue."
    )
    _write(
        root / "GSM" / "test.cleand.jsonl",
        [
            {"question": f"What is {a} + 1?", "answer": f"So.\nTherefore, the answer is {a + 1}"}
            for a in range(4)
        ],
    )
    (root / "GSM" / "gsm_prompt.txt").write_text(
        "Question: What is 1 + 1?\nLet's think step by step\n1 + 1 = 2\nThe answer is \\boxed{2}"
    )
    return root


def test_evaluate_members_and_ensemble_on_the_same_prompts(hetero, data_dir):
    report = evaluate(
        hetero,
        ["arc", "triviaqa", "gsm8k"],
        shots=0,
        batch_size=4,
        progress=False,
        keep_records=True,
        data_dir=data_dir,
    )
    assert isinstance(report, EvalReport)
    assert report.members == hetero.member_names
    assert [d.dataset for d in report.datasets] == ["arc", "triviaqa", "gsm8k"]
    for d in report.datasets:
        assert [r.system for r in d.results] == [*hetero.member_names, ENSEMBLE]
        for r in d.results:
            assert r.n == d.n and 0 <= r.correct <= r.n
            assert r.accuracy == pytest.approx(r.correct / r.n)
            assert r.records is not None and len(r.records) == r.n
            assert sum(x.correct for x in r.records) == r.correct
            assert r.seconds > 0
    arc = report.datasets[0]
    assert arc.n == 6 and arc.chance == 0.25 and arc.kind == "choice"
    assert arc.prompt_example.endswith("Answer:")
    for r in arc.results:
        assert r.answer_counts is not None and sum(r.answer_counts.values()) == r.n - r.no_answer
    table = report.table()
    assert "ARC-Challenge (free), test" in table and "ensemble % [95% CI]" in table
    assert "chance %" in table and "McNemar p" in table
    for d in report.datasets:
        for r in d.results:
            assert r.interval is not None and r.interval.low <= r.accuracy <= r.interval.high
            assert r.item_correct == [x.correct for x in r.records or []]
        assert d.comparison is not None and d.comparison.n == d.n
        assert d.comparison.first == ENSEMBLE and d.comparison.second in hetero.member_names
        best = max(r.correct for r in d.results if r.kind == "member")
        assert d.comparison.difference.estimate == pytest.approx(
            (d.result(ENSEMBLE).correct - best) / d.n
        )
    assert report.model_validate_json(report.model_dump_json()) == report
    assert report.machine.cpus >= 1 and report.machine.devices == ["cpu"]


def test_ensemble_result_equals_the_engine_and_members_equal_views(hetero, data_dir):
    task = load_task("triviaqa", "test", shots=0, data_dir=data_dir)
    report = evaluate(hetero, [task], batch_size=2, progress=False, keep_records=True)
    d = report.datasets[0]
    direct = hetero.generate([task.prompt(it) for it in task.items], max_new_tokens=24, stop="\n")
    assert [x.output for x in d.result(ENSEMBLE).records or []] == [r.text for r in direct]
    for name, view in member_engines(hetero).items():
        alone = [r.text if r else None for r in run_task(view, task, batch_size=5)]
        assert [x.output for x in d.result(name).records or []] == alone


def test_members_only_ensemble_only_and_too_long_prompts(hetero, data_dir):
    only = evaluate(hetero, ["piqa"], members_alone=False, progress=False, data_dir=data_dir)
    assert [r.system for r in only.datasets[0].results] == [ENSEMBLE]
    assert only.datasets[0].chance == 0.5
    members = evaluate(hetero, ["arc"], ensemble=False, progress=False, data_dir=data_dir)
    assert [r.system for r in members.datasets[0].results] == hetero.member_names
    # A prompt longer than a member's context window counts as wrong, and is counted.
    task = load_task("arc", "test", data_dir=data_dir)
    task.items[0] = type(task.items[0])("long", "word " * 600, ("A",), task.items[0].choices)
    outs = run_task(hetero, task, batch_size=3)
    assert outs[0] is None and all(o is not None for o in outs[1:])
    r = score_results(task, outs, system="e", kind="ensemble", seconds=1.0)
    assert r.too_long == 1 and r.n == len(task.items)


def test_constrained_answers_are_option_letters_for_members_and_ensemble(hetero, data_dir):
    report = evaluate(
        hetero,
        ["arc", "piqa", "triviaqa"],
        mode="both",
        shots=0,
        progress=False,
        keep_records=True,
        data_dir=data_dir,
    )
    labels = [d.label for d in report.datasets]
    assert labels == [
        "ARC-Challenge (free)",
        "ARC-Challenge (constrained)",
        "PIQA (free)",
        "PIQA (constrained)",
        "TriviaQA",
    ]
    for d in report.datasets:
        if d.mode != "constrained":
            continue
        letters = {"arc": "ABCD", "piqa": "AB"}[d.dataset]
        for r in d.results:  # every system, the ensemble included, answers a letter and only that
            assert r.no_answer == 0
            for x in r.records or []:
                assert x.output.strip() in letters and x.extracted == x.output.strip()
    # A constrained run on a free-form task is refused where it enters.
    with pytest.raises(ConfigError, match="multiple-choice"):
        run_task(
            hetero, load_task("triviaqa", "test", shots=0, data_dir=data_dir), constrained=True
        )
    with pytest.raises(ConfigError, match="mode"):
        evaluate(hetero, ["arc"], mode="loose", data_dir=data_dir)  # type: ignore[arg-type]


def test_choice_constraint_and_batches():
    c = choice_constraint(["B", "A", "C"])
    assert c.kind == "regex" and "[ABC]" in c.lark
    with pytest.raises(ConfigError, match="single letters"):
        choice_constraint(["AB"])
    # Batches never mix constraints (option sets), and keep similar lengths together.
    keys = [("AB", 5), ("ABCD", 1), ("AB", 1), ("ABCD", 9), ("AB", 3)]
    assert _batches(keys, 2) == [[2, 4], [0], [1, 3]]


def test_plot_is_written(hetero, data_dir, tmp_path):
    report = evaluate(hetero, ["arc", "piqa"], progress=False, data_dir=data_dir)
    out = report.plot(tmp_path / "plots" / "eval.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


def _members(tiny_dirs) -> list[str]:
    return ["-m", str(tiny_dirs["bytelevel_bpe"]), "-m", str(tiny_dirs["sentencepiece_bpe"])]


def test_cli_eval_table_json_plot(tiny_dirs, data_dir, cache_dir, tmp_path, capsys):
    args = ["eval", *_members(tiny_dirs), "-d", "arc,nq", "-d", "mmlu", "--limit", "3"]
    args += ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "-k", "5"]
    args += ["--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png"), "--shots", "1"]
    assert main([*args, "--no-progress", "--records", "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    assert "ARC-Challenge (free), test" in out and "NaturalQuestions, test" in out
    assert "MMLU (free), test" in out and "ensemble" in out
    data = json.loads((tmp_path / "e.json").read_text())
    assert [d["n"] for d in data["datasets"]] == [3, 3, 3]
    assert [d["available"] for d in data["datasets"]] == [6, 6, 4]
    assert data["datasets"][0]["results"][0]["records"]
    assert (tmp_path / "e.png").exists() and "wrote" in err
    ci = data["datasets"][0]["results"][0]["interval"]
    assert ci["method"] == "wilson" and ci["low"] <= ci["estimate"] <= ci["high"]

    both = ["eval", *_members(tiny_dirs), "-d", "piqa", "--limit", "3", "--both-modes"]
    both += ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "-k", "5"]
    assert main([*both, "--no-progress", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "PIQA (free), dev" in out and "PIQA (constrained), dev" in out
    modes = [d["mode"] for d in json.loads((tmp_path / "b.json").read_text())["datasets"]]
    assert modes == ["free", "constrained"]


def test_cli_check_quick_measured_and_json(tiny_dirs, data_dir, cache_dir, tmp_path, capsys):
    a, b = str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])
    base = ["check", "-m", a, "-m", b, "--cache-dir", str(cache_dir), "-k", "5", "--no-progress"]
    assert main([*base, "--score", f"{a}=0.5", "--score", f"{b}=0.2", "--no-overlap"]) == 0
    out = capsys.readouterr().out
    assert "verdict: incompatible" in out and "60.0%" in out and "recommendation" in out

    assert main([*base, "--score", "0=0.5", "--score", "1=0.48", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "compatible" and data["mode"] == "quick"

    examples = tmp_path / "ex.jsonl"
    _write(examples, [{"question": "Which?", "answer": "A", "choices": {"A": "x", "B": "y"}}] * 3)
    path = tmp_path / "r.json"
    assert main([*base, "--examples", str(examples), "--json", str(path), "--no-overlap"]) == 0
    out = capsys.readouterr().out
    assert "measured mode" in out
    assert json.loads(path.read_text())["n_items"] == 3

    assert main([*base, "--task", "arc", "-n", "4", "--data-dir", str(data_dir)]) == 0
    # ARC's dev split is its train file; multiple choice is constrained unless --free-form.
    assert "ARC-Challenge (dev), constrained" in capsys.readouterr().out
    free = [*base, "--task", "arc", "-n", "4", "--data-dir", str(data_dir), "--free-form"]
    assert main([*free, "--no-overlap"]) == 0
    out = capsys.readouterr().out
    assert "ARC-Challenge (dev)" in out and "constrained" not in out

    assert main([*base, "--task", "squad"]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--score", "no-equals-sign"])
