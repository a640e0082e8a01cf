"""The six benchmarks: where their files are, how their items are read, their prompt formats.

The data sets are read from the JSON-lines layout of the UniTE paper's repository, which the
project's repository carries in its ``data/`` folder (see ``data/README.md`` and ``data/NOTICE``):
``$UNITE_DATA_DIR`` or ``--data-dir``, else ``data/`` of the checkout the package runs from. A
small calibration sample of three formats (multiple choice from ARC-Challenge *train*, short
answers from TriviaQA *dev*, math word problems from GSM8K *train*) ships with the package, so the
compatibility check works without the data directory.

Formats (as the paper evaluates them; answers are read by :mod:`.answers`):

* **multiple choice** (ARC-Challenge, PIQA, MMLU): the question and lettered options, "Answer with
  A, B, C or D", greedy, a few tokens; the first option letter of the answer counts (if the answer
  has no letter but starts with one option's text, that option). MMLU is 5-shot from ``dev/``.
* **math** (GSM8K): the 4-shot chain-of-thought prompt; the answer is the ``\\boxed{}`` number,
  else the number after "the answer is", else the last number.
* **short answer** (TriviaQA, NaturalQuestions): the 5-shot prompt; exact match of the first line,
  normalised (lower case, no punctuation or articles), against any alias.

Splits: tune on ``train``/``dev``/``val``, report on ``test``. TriviaQA's test file contains every
dev question, so its ``test`` split here is the test file *minus* the dev questions (4,100 items).
PIQA ships only a dev file; its ``test`` split is that file (there is nothing else to report on).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .tasks import MC_INSTRUCTION, Item, Kind, Task, math_renderer, mc_renderer, qa_renderer

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "GENERIC_TASKS",
    "DatasetSpec",
    "bundled_data_dir",
    "default_data_dir",
    "load_task",
    "resolve_task_name",
]

DATA_DIR_ENV = "UNITE_DATA_DIR"
Split = Literal["train", "dev", "test"]
LETTERS = "ABCDE"


#: Where the data files come from, for users without a checkout of the repository.
DATA_SOURCE = "the data/ folder of the unite-integrations repository (git clone it)"


def default_data_dir() -> Path:
    """``$UNITE_DATA_DIR``, else the ``data/`` folder of the checkout this package runs from,
    else ``data/`` in the working directory (what a pip-installed user gets pointed at)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "data"
    if checkout.is_dir():
        return checkout
    return Path.cwd() / "data"


def bundled_data_dir() -> Path:
    """The calibration sample shipped with the package (same layout, small train/dev subsets)."""
    return Path(__file__).resolve().parent / "calibration"


# -- loaders ---------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _mc_item(d: Mapping[str, Any], id_: str) -> Item | None:
    letters = [c for c in LETTERS if c in d and isinstance(d[c], str)]
    choices = tuple((c, str(d[c]).strip()) for c in letters)
    if len(choices) < 2 or not all(text for _, text in choices):
        return None  # a few ARC items have empty options in this copy: unanswerable, skipped
    answer = str(d["answer"]).strip()
    if answer.isdigit() and 1 <= int(answer) <= len(choices):  # ARC's numeric labels
        answer = choices[int(answer) - 1][0]
    group = str(d.get("domain", ""))
    return Item(id_, str(d["question"]).strip(), (answer,), choices, group)


def _gold_number(solution: str) -> str:
    m = re.search(r"answer is\s*(.*)$", solution.strip(), re.I | re.S)
    return (m.group(1) if m else solution).strip().replace(",", "").rstrip(".")


def _aliases(answer: object) -> tuple[str, ...]:
    if isinstance(answer, str):
        return (answer,)
    if isinstance(answer, list):
        return tuple(str(a) for a in answer)
    raise ConfigError(f"an answer must be a string or a list of strings, got {answer!r}")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a data set's files are and how its items look."""

    name: str
    title: str
    folder: str
    kind: Kind
    files: Mapping[str, str]  # split -> file or folder (MMLU) inside ``folder``
    max_new_tokens: int
    stop: tuple[str, ...]
    default_shots: int
    chance: float | None  # None: computed from the items (e.g. 1 / number of options)
    prompt_file: str | None = None
    aliases: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    "arc": DatasetSpec(
        "arc",
        "ARC-Challenge",
        "ARC-challenge",
        "choice",
        {"train": "train.jsonl", "dev": "train.jsonl", "test": "test.jsonl"},
        max_new_tokens=4,
        stop=(),
        default_shots=0,
        chance=None,
        aliases=("arc-challenge", "arc-c", "arc_challenge"),
    ),
    "piqa": DatasetSpec(
        "piqa",
        "PIQA",
        "PIQA",
        "choice",
        {"dev": "dev_our.jsonl", "test": "dev_our.jsonl"},
        max_new_tokens=4,
        stop=(),
        default_shots=0,
        chance=None,
    ),
    "mmlu": DatasetSpec(
        "mmlu",
        "MMLU",
        "MMLU",
        "choice",
        {"train": "dev", "dev": "val", "test": "test"},
        max_new_tokens=4,
        stop=(),
        default_shots=5,
        chance=None,
    ),
    "gsm8k": DatasetSpec(
        "gsm8k",
        "GSM8K",
        "GSM",
        "number",
        {
            "train": "train_sample300_seed42.cleand.jsonl",
            "dev": "train_sample300_seed42.cleand.jsonl",
            "test": "test.cleand.jsonl",
        },
        max_new_tokens=256,
        stop=("\n\n\n", "\nQuestion:"),
        default_shots=4,
        chance=0.0,
        prompt_file="gsm_prompt.txt",
        aliases=("gsm", "math"),
    ),
    "triviaqa": DatasetSpec(
        "triviaqa",
        "TriviaQA",
        "TriviaQA",
        "text",
        {"dev": "wikipedia-dev-1900.jsonl", "test": "wikipedia-test-6000.jsonl"},
        max_new_tokens=24,
        stop=("\n",),
        default_shots=5,
        chance=0.0,
        prompt_file="prompt.txt",
        aliases=("trivia", "tqa"),
    ),
    "nq": DatasetSpec(
        "nq",
        "NaturalQuestions",
        "NaturalQuestions",
        "text",
        {
            "dev": "dev/v1.0-simplified_simplified-nq-train.simpled_dev_100000_sample1600_seed42.jsonl",
            "test": "test/natural-questions.jsonl",
        },
        max_new_tokens=24,
        stop=("\n",),
        default_shots=5,
        chance=0.0,
        prompt_file="dev/nq_prompt.txt",
        aliases=("naturalquestions", "natural-questions"),
    ),
}

#: Task names for the bundled calibration formats -> (data set, split used for calibration).
GENERIC_TASKS: dict[str, tuple[str, Split]] = {
    "multiple-choice": ("arc", "train"),
    "short-answer": ("triviaqa", "dev"),
    "math": ("gsm8k", "train"),
}


def resolve_task_name(name: str) -> str:
    """The canonical data-set name for a name or alias (case-insensitive)."""
    key = name.strip().lower()
    if key in DATASETS or key in GENERIC_TASKS:
        return key
    for spec in DATASETS.values():
        if key in spec.aliases or key == spec.title.lower():
            return spec.name
    known = ", ".join([*DATASETS, *GENERIC_TASKS])
    raise ConfigError(f"unknown task {name!r}; use one of {known}")


def _split_path(spec: DatasetSpec, split: str, root: Path) -> Path:
    if split not in spec.files:
        raise ConfigError(
            f"{spec.title} has no {split!r} split here; use one of {', '.join(spec.files)}"
        )
    return root / spec.folder / spec.files[split]


def _load_items(spec: DatasetSpec, split: str, root: Path) -> list[Item]:
    path = _split_path(spec, split, root)
    if not path.exists():
        raise ConfigError(
            f"{spec.title} {split} data not found at {path}; the data sets are in "
            f"{DATA_SOURCE}: pass --data-dir (data_dir=) or set {DATA_DIR_ENV} to that folder"
        )
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.is_dir():  # MMLU: one file per subject
        for f in sorted(path.glob("*.jsonl")):
            rows += [(f"{f.stem}/{n}", d) for n, d in enumerate(_read_jsonl(f))]
    else:
        rows = [(str(n), d) for n, d in enumerate(_read_jsonl(path))]
    items: list[Item] = []
    for n, d in rows:
        id_ = f"{spec.name}/{split}/{n}"
        if spec.kind == "choice":
            item = _mc_item(d, id_)
            if item is not None:
                items.append(item)
        elif spec.kind == "number":
            items.append(Item(id_, str(d["question"]).strip(), (_gold_number(str(d["answer"])),)))
        else:
            items.append(Item(id_, str(d["question"]).strip(), _aliases(d["answer"])))
    if spec.name == "triviaqa" and split == "test":
        # The test file contains every dev question: report on the rest only.
        dev_path = _split_path(spec, "dev", root)
        if dev_path.exists():
            dev = {str(d["question"]).strip() for d in _read_jsonl(dev_path)}
            items = [it for it in items if it.question not in dev]
    return items


def _sample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded sample of ``limit`` items, kept in file order (all items when no limit)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def load_task(
    name: str,
    split: str = "test",
    *,
    limit: int | None = None,
    seed: int = 0,
    shots: int | None = None,
    chat: bool = False,
    data_dir: str | Path | None = None,
) -> Task:
    """A data set in its prompt format; ``limit`` draws a seeded sample (file order kept).

    ``name`` is a data set (``arc``, ``piqa``, ``mmlu``, ``gsm8k``, ``triviaqa``, ``nq``) or a
    calibration format (``multiple-choice``, ``short-answer``, ``math``), which reads the train/dev
    split from the data directory, or from the sample bundled with the package if that is missing.
    ``shots``: examples in the prompt (default: the paper's). Few-shot examples come from the
    prompt files (GSM8K, TriviaQA, NQ), MMLU's ``dev`` split (same subject) or ARC's train split.
    ``chat``: send each prompt as one user message, which each member renders with its own chat
    template (instruction-tuned members often answer raw prompts with an immediate end token).
    """
    key = resolve_task_name(name)
    generic = key in GENERIC_TASKS
    if generic:
        key, split = GENERIC_TASKS[key]
    spec = DATASETS[key]
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if generic and not _split_path(spec, split, root).exists():
        root = bundled_data_dir()
    items = _load_items(spec, split, root)
    available = len(items)
    items = _sample(items, limit, seed)
    n_shots = spec.default_shots if shots is None else shots
    if n_shots < 0:
        raise ConfigError(f"shots must be >= 0, got {n_shots}")
    note = ""
    if spec.name == "piqa":
        split = "dev"  # the only file: say so wherever the split is shown
        note = "PIQA has only a dev file: reported on it, prompts not tuned on it"
    if spec.name == "triviaqa" and split == "test":
        note = "test file minus the 1,900 dev questions it contains"
    if spec.kind == "choice":
        render = _choice_renderer(spec, root, n_shots, seed)
        chance = (
            spec.chance
            if spec.chance is not None
            else (sum(1 / len(it.choices) for it in items) / len(items) if items else 0.0)
        )
    else:
        prefix = _few_shot_prefix(spec, root, n_shots) if n_shots else ""
        render = math_renderer(prefix) if spec.kind == "number" else qa_renderer(prefix)
        chance = spec.chance or 0.0
    return Task(
        name=spec.name,
        title=spec.title,
        kind=spec.kind,
        split=split,
        items=items,
        max_new_tokens=spec.max_new_tokens,
        stop=spec.stop,
        chance=chance,
        render=render,
        shots=n_shots,
        note=note,
        available=available,
        chat=chat,
    )


def _choice_renderer(
    spec: DatasetSpec, root: Path, n_shots: int, seed: int
) -> Callable[[Item], str]:
    """The multiple-choice prompt with ``n_shots`` examples from the train split: MMLU's of the
    item's subject, the others' a seeded sample."""
    header = "The following is a multiple choice question. " + MC_INSTRUCTION
    shots_by_group: dict[str, list[Item]] = {}
    if n_shots:
        shot_split = "train"
        pool = _load_items(spec, shot_split, root) if shot_split in spec.files else []
        if not pool:
            raise ConfigError(f"{spec.title} has no train split for few-shot examples")
        if spec.name == "mmlu":
            header = "The following are multiple choice questions (with answers). " + (
                MC_INSTRUCTION
            )
            for it in pool:
                shots_by_group.setdefault(it.group, [])
                if len(shots_by_group[it.group]) < n_shots:
                    shots_by_group[it.group].append(it)
        else:
            shots_by_group[""] = _sample(pool, n_shots, seed + 1)
    return mc_renderer(header, shots_by_group)


def _few_shot_prefix(spec: DatasetSpec, root: Path, n_shots: int) -> str:
    """The first ``n_shots`` worked examples of the data set's prompt file."""
    assert spec.prompt_file is not None
    path = root / spec.folder / spec.prompt_file
    if not path.exists():
        raise ConfigError(f"{spec.title} prompt file not found at {path}")
    text = path.read_text(encoding="utf-8").strip()
    # Blocks start at "Question:"; the instruction line before the first one is kept.
    parts = re.split(r"\n\s*\n(?=Question:)", text)
    head = [] if parts[0].startswith("Question:") else [parts.pop(0).strip()]
    blocks = [p.strip() for p in parts]
    if n_shots > len(blocks):
        raise ConfigError(f"{spec.title} has {len(blocks)} few-shot examples; asked for {n_shots}")
    sep = "\n\n\n" if spec.kind == "number" else "\n\n"
    return sep.join(head + blocks[:n_shots])
