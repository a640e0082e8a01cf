"""Reading answers out of generations, and comparing them with the gold answers.

* multiple choice: the first option letter standing alone, else the option whose text the answer
  starts with (:func:`extract_choice`);
* math: the ``\\boxed{}`` number, else the number after "the answer is", else the last number
  (:func:`extract_number`);
* short answers: the first line (:func:`first_line`), compared after SQuAD/TriviaQA normalisation
  (:func:`normalize_answer`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

__all__ = ["extract_choice", "extract_number", "first_line", "normalize_answer", "to_number"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—"}


def normalize_answer(text: str) -> str:
    """SQuAD/TriviaQA normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The answer part of a short-answer generation: its first non-empty line."""
    for line in text.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


_LETTER_AT_START = re.compile(r"^\W*(?:answer\s*(?:is)?\s*:?\s*)?\(?([A-E])(?:\W|$)", re.I)


def extract_choice(text: str, choices: Sequence[tuple[str, str]]) -> str | None:
    """The letter a multiple-choice answer picks, or None.

    The first option letter standing alone (``"B"``, ``" (C)"``, ``"Answer: D."``, ``"The answer
    is A"``); else, when the answer starts with an option's text, that option.
    """
    letters = "".join(letter for letter, _ in choices)
    stripped = text.strip()
    m = _LETTER_AT_START.match(stripped)
    if m and m.group(1).upper() in letters and (m.group(1).isupper() or len(stripped) <= 3):
        return m.group(1).upper()
    m = re.search(rf"\b([{letters}])\b", stripped)
    if m:
        return m.group(1)
    norm = normalize_answer(stripped)
    if norm:
        for letter, option in choices:
            opt = normalize_answer(option)
            if opt and (norm.startswith(opt) or opt.startswith(norm)):
                return letter
    return None


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)", re.I)


def to_number(text: str) -> float | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The final number of a worked answer: ``\\boxed{}``, else "the answer is N", else the last."""
    for pattern in (_BOXED, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            nums = _NUMBER.findall(found[-1])
            if nums:
                return to_number(nums[-1])
    nums = _NUMBER.findall(text)
    return to_number(nums[-1]) if nums else None
