"""What is evaluated and how: items, tasks (prompt format, stop, scoring), the user's examples.

A :class:`Task` is a data set in one prompt format: its items, how each is rendered into a
prompt, the generation budget and stop strings, chance level, and how an answer is scored (via
:mod:`.answers`). :func:`custom_task` builds one from the user's own examples; the benchmark
loaders are in :mod:`.datasets`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from .answers import extract_choice, extract_number, first_line, normalize_answer, to_number

__all__ = [
    "MC_INSTRUCTION",
    "CalibrationExample",
    "Item",
    "Kind",
    "Task",
    "custom_task",
    "math_renderer",
    "mc_block",
    "mc_renderer",
    "qa_renderer",
]

Kind = Literal["choice", "number", "text"]


@dataclass(frozen=True)
class Item:
    """One question with its accepted answers (a letter, a number, or aliases)."""

    id: str
    question: str
    answers: tuple[str, ...]
    choices: tuple[tuple[str, str], ...] = ()
    group: str = ""  # MMLU subject, for per-subject shots


@dataclass
class Task:
    """A data set in one prompt format: items, how to prompt, when to stop, how to score."""

    name: str
    title: str
    kind: Kind
    split: str
    items: list[Item]
    max_new_tokens: int
    stop: tuple[str, ...]
    chance: float
    render: Callable[[Item], str]
    shots: int = 0
    note: str = ""
    available: int = 0  # items in the split before --limit
    chat: bool = False  # send the prompt as one user message (each member applies its template)
    extra: dict[str, Any] = field(default_factory=dict)

    def text(self, item: Item) -> str:
        """The prompt text of an item (few-shot examples included)."""
        return self.render(item)

    def prompt(self, item: Item) -> str | list[dict[str, str]]:
        """What ``engine.generate`` gets: the text, or one user message in chat mode."""
        text = self.render(item)
        return [{"role": "user", "content": text}] if self.chat else text

    def extract(self, output: str, item: Item) -> str | None:
        """The answer read from a generation (a letter, a number as text, or the first line)."""
        if self.kind == "choice":
            return extract_choice(output, item.choices)
        if self.kind == "number":
            x = extract_number(output)
            return None if x is None else f"{x:g}"
        line = first_line(output)
        return line or None

    def is_correct(self, output: str, item: Item) -> bool:
        got = self.extract(output, item)
        if got is None:
            return False
        if self.kind == "choice":
            return got in item.answers
        if self.kind == "number":
            x = to_number(got)
            return x is not None and any(
                (g := to_number(a)) is not None and abs(g - x) < 1e-6 for a in item.answers
            )
        norm = normalize_answer(got)
        return any(norm == normalize_answer(a) for a in item.answers)


# -- prompt formats ---------------------------------------------------------------------------------

MC_INSTRUCTION = "Answer with {letters}."


def _letters_text(choices: Sequence[tuple[str, str]]) -> str:
    letters = [c for c, _ in choices]
    return ", ".join(letters[:-1]) + " or " + letters[-1] if len(letters) > 1 else letters[0]


def mc_block(item: Item, answer: str | None = None) -> str:
    opts = "\n".join(f"{letter}. {text}" for letter, text in item.choices)
    tail = f" {answer}" if answer else ""
    return f"Question: {item.question}\n{opts}\nAnswer:{tail}"


def mc_renderer(header: str, shots_by_group: Mapping[str, Sequence[Item]]) -> Callable[[Item], str]:
    def render(item: Item) -> str:
        shots = shots_by_group.get(item.group) or shots_by_group.get("", ())
        parts = [header.format(letters=_letters_text(item.choices))]
        parts += [mc_block(s, s.answers[0]) for s in shots]
        parts.append(mc_block(item))
        return "\n\n".join(parts)

    return render


def qa_renderer(prefix: str) -> Callable[[Item], str]:
    def render(item: Item) -> str:
        head = f"{prefix}\n\n" if prefix else ""
        return f"{head}Question: {item.question}\nAnswer:"

    return render


def math_renderer(prefix: str) -> Callable[[Item], str]:
    def render(item: Item) -> str:
        head = f"{prefix}\n\n\n" if prefix else ""
        return f"{head}Question: {item.question}\nLet's think step by step\n"

    return render


# -- user examples ---------------------------------------------------------------------------------


class CalibrationExample(BaseModel):
    """One of the user's own examples: a question and its accepted answer(s).

    With ``choices`` (``{"A": "...", "B": "..."}``) it is multiple choice and ``answer`` is the
    letter; with numeric answers it is scored on the final number; otherwise by normalised exact
    match of the first line against any answer.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str = Field(min_length=1)
    answer: str | list[str] = Field(description="The answer, or accepted aliases.")
    choices: dict[str, str] | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"invalid CalibrationExample: {e}") from e

    @field_validator("answer")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
            raise ValueError("an example needs an answer")
        return v

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer,) if isinstance(self.answer, str) else tuple(self.answer)


def _is_number(text: str) -> bool:
    return to_number(text) is not None


def custom_task(
    examples: Iterable[CalibrationExample | Mapping[str, Any]],
    *,
    kind: Kind | None = None,
    instruction: str | None = None,
    max_new_tokens: int | None = None,
    chat: bool = False,
    name: str = "examples",
) -> Task:
    """A task from the user's own examples (0-shot; the kind is inferred unless given)."""
    exs = [e if isinstance(e, CalibrationExample) else CalibrationExample(**e) for e in examples]
    if not exs:
        raise ConfigError("no examples given")
    if kind is None:
        if all(e.choices for e in exs):
            kind = "choice"
        elif all(all(_is_number(a) for a in e.answers) for e in exs):
            kind = "number"
        else:
            kind = "text"
    items: list[Item] = []
    for n, e in enumerate(exs):
        choices = tuple((k.strip().upper(), v) for k, v in (e.choices or {}).items())
        if kind == "choice" and len(choices) < 2:
            raise ConfigError(f"example {n} has no choices; multiple choice needs two or more")
        answers = tuple(a.strip().upper() for a in e.answers) if kind == "choice" else e.answers
        items.append(Item(f"{name}/{n}", e.question.strip(), answers, choices))
    if kind == "choice":
        header = instruction or ("The following is a multiple choice question. " + MC_INSTRUCTION)
        render = mc_renderer(header, {})
        chance = sum(1 / len(it.choices) for it in items) / len(items)
        stop: tuple[str, ...]
        default_tokens, stop = 4, ()
    elif kind == "number":
        render = math_renderer(instruction or "Solve the problem. End with 'The answer is N'.")
        chance, default_tokens, stop = 0.0, 256, ("\n\n\n", "\nQuestion:")
    else:
        render = qa_renderer(
            instruction or "Answer the question, and only return the final answer."
        )
        chance, default_tokens, stop = 0.0, 32, ("\n",)
    return Task(
        name=name,
        title=name,
        kind=kind,
        split="given",
        items=items,
        max_new_tokens=max_new_tokens or default_tokens,
        stop=stop,
        chance=chance,
        render=render,
        available=len(items),
        chat=chat,
    )
