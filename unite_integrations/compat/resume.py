"""What ``unite eval --json PATH --resume`` needs: the settings a report was made with, the answers
of a pair cut short, and a file written so that a reader never sees half of it.

``evaluate(json_path=...)`` writes its report after every (system, data set) pair and every
``checkpoint_every`` items within a pair; each write replaces the file whole (a temporary file in
the same folder, then ``os.replace``), so a run stopped at any moment leaves the last complete
write. ``resume=True`` reads that file back, refuses it with a :class:`ConfigError` naming every
setting that differs (:func:`check_settings`), keeps the pairs it holds, answers only the items
of the cut pair that it lacks, and goes on. Answers are greedy and the batches of a pair are
fixed by the settings, so the resumed report equals an uninterrupted one except for the timing
fields (``started``, ``seconds``, ``machine``, ``resumed_at``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..engine.config import EnsembleConfig
from ..engine.results import GenerationResult
from ..errors import ConfigError
from .options import EvalOptions, Mode
from .tasks import Task

__all__ = [
    "EvalSettings",
    "ItemOutput",
    "MemberSettings",
    "PendingPair",
    "check_settings",
    "eval_settings",
    "task_fingerprint",
    "write_atomic",
]


class ItemOutput(BaseModel):
    """What scoring reads of one answer: its text, why it stopped and its length in tokens.

    A ``GenerationResult`` also carries per-token provenance (each member's probability, the
    proposers, the bytes of every token); an evaluation keeps this instead, from the moment an
    answer arrives."""

    text: str
    finish_reason: Literal["stop", "length"]
    output_tokens: int

    @classmethod
    def of(cls, result: GenerationResult | ItemOutput) -> ItemOutput:
        if isinstance(result, ItemOutput):
            return result
        return cls(
            text=result.text,
            finish_reason=result.finish_reason,
            output_tokens=result.usage.output_tokens,
        )


class MemberSettings(BaseModel):
    """One member as far as its answers depend on it (not where its Ray actor runs)."""

    source: str
    name: str | None = None
    weight: float
    device: str
    dtype: str
    chat_template: str | None = None
    context_window: int | None = None


class EvalSettings(BaseModel):
    """Everything an evaluation's answers and report depend on; ``--resume`` needs them equal."""

    members: list[MemberSettings]
    top_k: int
    retokenize_window: int
    prefix_cache: int | str
    datasets: list[str]
    data: list[str] = Field(
        description="Per data set, a hash of its items, prompts (shots included), token budget "
        "and stop strings: a changed data file or prompt format shows here."
    )
    split: str
    limit: int | None
    seed: int
    shots: int | None
    chat: bool
    mode: Mode
    members_alone: bool
    ensemble: bool
    gate: float | None
    batch_size: int
    records: bool


class PendingPair(BaseModel):
    """The (system, data set) pair in progress at the last write: a system of the report's last
    data set, with the answers it has so far (whole batches, in the order they ran)."""

    system: str
    seconds: float = Field(description="Time spent on the pair until the write.")
    outputs: dict[int, ItemOutput | None] = Field(
        description="Item index -> answer (None: the prompt did not fit a member's context)."
    )


def task_fingerprint(task: Task) -> str:
    """A short hash of what a task asks and how it scores (items, prompts, budget, stops)."""
    h = hashlib.sha256()
    head = [task.name, task.split, task.kind, task.max_new_tokens, list(task.stop), task.chat]
    h.update(json.dumps(head).encode())
    for it in task.items:
        row = [it.id, task.text(it), list(it.answers), [list(c) for c in it.choices]]
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]


def eval_settings(config: EnsembleConfig, tasks: Sequence[Task], opts: EvalOptions) -> EvalSettings:
    """What the answers to ``tasks`` depend on: the members, the data and the run's options."""
    weights = config.weights
    return EvalSettings(
        members=[
            MemberSettings(
                source=m.source,
                name=m.name,
                weight=w,
                device=m.device,
                dtype=m.dtype,
                chat_template=m.chat_template,
                context_window=m.context_window,
            )
            for m, w in zip(config.members, weights)
        ],
        top_k=config.top_k,
        retokenize_window=config.retokenize_window,
        prefix_cache=config.prefix_cache,
        datasets=[t.name for t in tasks],
        data=[task_fingerprint(t) for t in tasks],
        split=opts.split,
        limit=opts.limit,
        seed=opts.seed,
        shots=opts.shots,
        chat=opts.chat,
        mode=opts.mode,
        members_alone=opts.members_alone,
        ensemble=opts.ensemble,
        gate=opts.gate,
        batch_size=opts.batch_size,
        records=opts.keep_records,
    )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def settings_differences(old: EvalSettings, new: EvalSettings) -> list[str]:
    """One line per setting that differs: ``"limit: 300 in the file, 200 now"``."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out: list[str] = []
    for key in b:
        if a.get(key) == b[key]:
            continue
        if key == "data" and old.datasets == new.datasets:
            if any(a[k] != b[k] for k in ("split", "limit", "seed", "shots", "chat")):
                continue  # a consequence of those, which are named
            changed = [n for n, x, y in zip(new.datasets, a[key], b[key]) if x != y]
            out.append(
                f"data: the items or prompts of {', '.join(changed)} changed "
                "(another data file, --data-dir or prompt format)"
            )
        elif key == "members" and len(a[key]) == len(b[key]):
            for n, (x, y) in enumerate(zip(a[key], b[key])):
                for field in y:
                    if x.get(field) != y[field]:
                        out.append(
                            f"member {n} {field}: {_short(x.get(field))} in the file, "
                            f"{_short(y[field])} now"
                        )
        else:
            out.append(f"{key}: {_short(a.get(key))} in the file, {_short(b[key])} now")
    return out


def check_settings(old: EvalSettings | None, new: EvalSettings, path: str | Path) -> None:
    """Refuse to resume ``path`` unless it was written with ``new``'s settings."""
    if old is None:
        raise ConfigError(
            f"cannot resume {path}: it records no settings (written by an older version, or "
            "not by `unite eval`); remove it or give another --json path"
        )
    diff = settings_differences(old, new)
    if diff:
        raise ConfigError(
            f"cannot resume {path}: it was written with other settings ("
            + "; ".join(diff)
            + "); run with the same options, or give another --json path to start afresh"
        )


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` whole or not at all: a temporary file in the same folder,
    flushed to disk, then renamed over ``path`` (``os.replace``: atomic on POSIX and Windows)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a killed run's is overwritten
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out
