"""Data loaders, prompt formats and answer scoring of `unite eval` (no models)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from unite_integrations import ConfigError
from unite_integrations.compat.answers import (
    extract_choice,
    extract_number,
    first_line,
    normalize_answer,
)
from unite_integrations.compat.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    bundled_data_dir,
    default_data_dir,
    load_task,
    resolve_task_name,
)
from unite_integrations.compat.tasks import CalibrationExample, Item, custom_task

REAL_DATA = default_data_dir()  # the repository's data/ folder: present in every checkout
ABCD = tuple((c, f"option {c}") for c in "ABCD")


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        (" B", "B"),
        ("C.", "C"),
        (" (D) because", "D"),
        ("Answer: A", "A"),
        ("The answer is C", "C"),
        ("\nB. option B", "B"),
        (" d", "D"),  # a lone lower-case letter
        ("option C is right", "C"),  # the first letter standing alone
        ("", None),
        ("I do not know", None),
        ("E", None),  # not an option here
    ],
)
def test_extract_choice_letters(text, letter):
    assert extract_choice(text, ABCD) == letter


def test_extract_choice_by_option_text():
    choices = (("A", "dry palms"), ("B", "wet palms"))
    assert extract_choice(" wet palms, since", choices) == "B"
    assert extract_choice(" dry", choices) == "A"


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("So 3 + 4 = 7.\nThe answer is \\boxed{7}", 7),
        ("He pays $1,250 in total. The answer is 1,250.", 1250),
        ("18 - 3 = 15 eggs, so 15", 15),
        ("the answer is -3", -3),
        ("half is 2.5", 2.5),
        ("no numbers here", None),
    ],
)
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_normalize_and_first_line():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("George V.") == "george v"
    assert normalize_answer("Sunset Blvd.") == normalize_answer("sunset blvd")
    assert first_line("\n  Paris.\nQuestion: next") == "Paris."
    assert first_line("   ") == ""


def test_task_scoring_per_kind(tmp_path):
    text = custom_task([{"question": "Capital of France?", "answer": ["Paris", "Paris, France"]}])
    item = text.items[0]
    assert text.kind == "text"
    assert text.is_correct(" paris.\nQuestion: x", item)
    assert not text.is_correct(" Lyon", item)
    num = custom_task([{"question": "2+2?", "answer": "4"}])
    assert num.kind == "number" and num.is_correct("2 + 2 = 4. The answer is 4", num.items[0])
    assert not num.is_correct("5", num.items[0])
    mc = custom_task([{"question": "Pick", "answer": "b", "choices": {"a": "x", "b": "y"}}])
    assert mc.kind == "choice" and mc.items[0].answers == ("B",)
    assert mc.is_correct(" B", mc.items[0]) and not mc.is_correct(" A", mc.items[0])
    assert mc.chance == 0.5
    assert "Answer with A or B." in mc.text(mc.items[0])
    chat = custom_task([{"question": "q", "answer": "a"}], chat=True)
    assert chat.prompt(chat.items[0]) == [{"role": "user", "content": chat.text(chat.items[0])}]


def test_custom_task_errors():
    with pytest.raises(ConfigError):
        custom_task([])
    with pytest.raises(ConfigError):
        CalibrationExample(question="q", answer="")
    with pytest.raises(ConfigError):
        CalibrationExample(question="q", answer="a", extra=1)
    with pytest.raises(ConfigError):
        custom_task([{"question": "q", "answer": "A"}], kind="choice")


def test_task_names_and_errors():
    assert resolve_task_name("ARC-Challenge") == "arc"
    assert resolve_task_name("GSM") == "gsm8k"
    assert resolve_task_name("NaturalQuestions") == "nq"
    assert resolve_task_name("short-answer") == "short-answer"
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_task_name("squad")
    with pytest.raises(ConfigError, match="no 'train' split"):
        load_task("triviaqa", "train", data_dir=bundled_data_dir())
    with pytest.raises(ConfigError, match=DATA_DIR_ENV):
        load_task("arc", "test", data_dir="/nonexistent")


def test_bundled_calibration_formats_work_without_the_data_folder(tmp_path):
    for name, kind, shots in (
        ("multiple-choice", "choice", 0),
        ("short-answer", "text", 5),
        ("math", "number", 4),
    ):
        task = load_task(name, data_dir=tmp_path, limit=10)  # tmp_path has no data: bundled
        assert task.kind == kind and task.shots == shots
        assert task.available == 100 and len(task.items) == 10
        assert task.split in ("train", "dev")
        prompt = task.text(task.items[0])
        assert task.items[0].question in prompt
    gsm = load_task("math", data_dir=tmp_path, limit=1)
    assert gsm.text(gsm.items[0]).count("Question:") == 5  # 4 shots + the question
    assert gsm.text(gsm.items[0]).endswith("Let's think step by step\n")
    tqa = load_task("short-answer", data_dir=tmp_path, limit=1, shots=2)
    assert tqa.text(tqa.items[0]).startswith("Answer the question, and only return")
    assert tqa.text(tqa.items[0]).count("Question:") == 3


def test_limit_is_a_seeded_sample_in_file_order(tmp_path):
    a = load_task("multiple-choice", data_dir=tmp_path, limit=20, seed=1)
    b = load_task("multiple-choice", data_dir=tmp_path, limit=20, seed=1)
    c = load_task("multiple-choice", data_dir=tmp_path, limit=20, seed=2)
    ids = [it.id for it in a.items]
    assert ids == [it.id for it in b.items] and ids != [it.id for it in c.items]
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("/", 1)[1]))
    with pytest.raises(ConfigError):
        load_task("multiple-choice", data_dir=tmp_path, limit=0)


def test_env_var_sets_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_arc_numeric_labels_and_empty_options(tmp_path):
    _write(
        tmp_path / "ARC-challenge" / "test.jsonl",
        [
            {"question": "q1", "A": "a", "B": "b", "C": "c", "D": "d", "answer": "2"},
            {"question": "q2", "A": "", "B": "", "C": "", "D": "", "answer": "1"},
        ],
    )
    task = load_task("arc", "test", data_dir=tmp_path)
    assert [it.answers for it in task.items] == [("B",)]


def test_triviaqa_test_excludes_dev_questions(tmp_path):
    _write(tmp_path / "TriviaQA" / "wikipedia-dev-1900.jsonl", [{"question": "a", "answer": ["x"]}])
    _write(
        tmp_path / "TriviaQA" / "wikipedia-test-6000.jsonl",
        [{"question": "a", "answer": ["x"]}, {"question": "b", "answer": ["y"]}],
    )
    task = load_task("triviaqa", "test", shots=0, data_dir=tmp_path)
    assert [it.question for it in task.items] == ["b"]
    assert "minus" in task.note


@pytest.mark.parametrize(
    ("name", "split", "kind", "at_least"),
    [
        ("arc", "test", "choice", 1100),
        ("arc", "train", "choice", 1000),
        ("piqa", "test", "choice", 1800),
        ("mmlu", "test", "choice", 14000),
        ("mmlu", "dev", "choice", 1500),
        ("gsm8k", "test", "number", 1300),
        ("gsm8k", "train", "number", 300),
        ("triviaqa", "test", "text", 4100),
        ("triviaqa", "dev", "text", 1900),
        ("nq", "test", "text", 3600),
        ("nq", "dev", "text", 1600),
    ],
)
def test_real_data_loads(name, split, kind, at_least):
    task = load_task(name, split, limit=None)
    assert task.kind == kind and len(task.items) >= at_least
    assert all(it.answers for it in task.items)
    if kind == "choice":
        assert all(it.answers[0] in dict(it.choices) for it in task.items)
        assert 0.24 < task.chance <= 0.5
    if kind == "number":
        assert all(extract_number(it.answers[0]) is not None for it in task.items)
    prompt = task.text(task.items[0])
    assert prompt.rstrip().endswith(("Answer:", "step by step"))


def test_real_data_prompts_follow_the_paper():
    mmlu = load_task("mmlu", "test", limit=3)
    first = mmlu.items[0]
    text = mmlu.text(first)
    assert mmlu.shots == 5 and text.count("Question:") == 6  # five shots of the same subject
    gsm = load_task("gsm8k", "test", limit=1)
    assert gsm.text(gsm.items[0]).count("\\boxed") == 4
    nq = load_task("nq", "test", limit=1)
    assert nq.text(nq.items[0]).count("Question:") == 6
    arc = load_task("arc", "test", limit=1)
    assert arc.shots == 0 and "Answer with A, B, C or D." in arc.text(arc.items[0])


def test_every_dataset_spec_is_consistent():
    for spec in DATASETS.values():
        assert "test" in spec.files
        assert spec.max_new_tokens > 0
    assert Item("x", "q", ("a",)).choices == ()


def test_the_checkout_carries_every_data_set():
    checkout_data = Path(__file__).resolve().parents[1] / "data"
    assert checkout_data == REAL_DATA or "UNITE_DATA_DIR" in os.environ
    for name in DATASETS:
        task = load_task(name, "test", limit=3, data_dir=REAL_DATA)
        assert len(task.items) == 3 and task.available >= 1000, name


def test_missing_data_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"data/ folder of the unite-integrations repository"):
        load_task("arc", "test", data_dir=tmp_path / "nowhere")
