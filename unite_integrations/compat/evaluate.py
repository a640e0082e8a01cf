"""``unite eval``: each member alone and the ensemble, on the same prompts, scored the same way.

Members alone run as one-member engines that *share* the ensemble's loaded models (see
:func:`member_engines`), so nothing is loaded twice. Prompts go through ``engine.generate`` in
batches (sorted by length so rows of a batch pad little), greedy. The result is a typed report
with accuracy, its Wilson 95% interval and the number of items per system and data set, and the
ensemble against its best member *paired on the same items* (difference with Newcombe's interval,
exact McNemar p-value; see :mod:`.stats`), printable as a table, JSON, or a bar chart with
interval whiskers.

Two answer modes for multiple choice (``mode``):

* ``free`` (the paper's): the system writes freely and the first option letter is read from it;
  small members that ignore the format score below chance, which measures format-following;
* ``constrained``: every system (each member alone and the ensemble alike) decodes under a grammar
  that allows only an option letter (``Constraint.regex``), so the score measures the choice.

``both`` runs each multiple-choice data set in both modes (other formats have one mode: free).

With ``json_path`` the report is written after every (system, data set) pair and every
``checkpoint_every`` items within one, each time whole (see :mod:`.resume`); ``resume`` continues
the run that file holds instead of starting again.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..engine.config import EnsembleConfig, MemberSpec, ensemble_config
from ..engine.constraints import Constraint
from ..engine.engine import UniTEEngine
from ..engine.results import GenerationResult
from ..errors import ConfigError, ContextWindowError
from .datasets import load_task
from .formatting import text_table
from .resume import (
    EvalSettings,
    ItemOutput,
    PendingPair,
    check_settings,
    eval_settings,
    write_atomic,
)
from .stats import Interval, PairedComparison, compare_paired, wilson_interval
from .tasks import Task

__all__ = [
    "DatasetResult",
    "EvalReport",
    "EvalSettings",
    "ItemOutput",
    "ItemRecord",
    "MachineInfo",
    "Mode",
    "PendingPair",
    "SystemResult",
    "choice_constraint",
    "ensemble_vs_best",
    "evaluate",
    "evaluate_task",
    "member_engines",
    "read_report",
    "resolve_engine",
    "run_task",
]

ENSEMBLE = "ensemble"
Mode = Literal["free", "constrained", "both"]
AnswerMode = Literal["free", "constrained"]


# -- one-member views over a loaded ensemble -------------------------------------------------------


def member_engines(engine: UniTEEngine) -> dict[str, UniTEEngine]:
    """Each member of ``engine`` as its own one-member engine, sharing the loaded model
    (``UniTEEngine.member_engine``: no second load; cached and closed with the ensemble)."""
    return {name: engine.member_engine(n) for n, name in enumerate(engine.member_names)}


def resolve_engine(
    members: UniTEEngine | EnsembleConfig | Sequence[str | MemberSpec] | str,
    *,
    top_k: int = 10,
    weights: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
) -> UniTEEngine:
    """An engine for ``members``: given as is, else the process's shared one (``get_engine``)."""
    if isinstance(members, UniTEEngine):
        return members
    from ..engine.registry import get_engine

    if isinstance(members, EnsembleConfig):
        return get_engine(members)
    config = ensemble_config(members, top_k=top_k, weights=weights, cache_dir=cache_dir)
    return get_engine(config)


# -- results ---------------------------------------------------------------------------------------


class ItemRecord(BaseModel):
    id: str
    output: str
    extracted: str | None
    correct: bool
    finish_reason: str


class SystemResult(BaseModel):
    """One system (a member alone, or the ensemble) on one data set."""

    system: str
    kind: Literal["member", "ensemble"]
    correct: int
    n: int
    accuracy: float
    seconds: float
    median_response_chars: float
    median_response_tokens: float
    truncated_share: float = Field(description="Share of answers cut by max_new_tokens.")
    no_answer: int = Field(description="Answers from which nothing could be read.")
    too_long: int = Field(
        default=0, description="Items whose prompt did not fit a member's context (wrong)."
    )
    answer_counts: dict[str, int] | None = Field(
        default=None, description="Multiple choice: how often each letter was answered."
    )
    interval: Interval | None = Field(
        default=None, description="Wilson 95% interval of the accuracy."
    )
    item_correct: list[bool] = Field(
        default_factory=list,
        description="Per item (in the data set's order): right or wrong; for paired comparisons.",
    )
    records: list[ItemRecord] | None = None

    def accuracy_text(self) -> str:
        """``"41.2 [38.1, 44.3]"``: percent with the 95% interval."""
        iv = self.interval or wilson_interval(self.correct, self.n)
        return iv.text()


class DatasetResult(BaseModel):
    dataset: str
    title: str
    split: str
    kind: str
    shots: int
    n: int
    available: int = Field(description="Items in the split before --limit.")
    chance: float
    max_new_tokens: int
    chat: bool = False
    mode: AnswerMode = Field(
        default="free",
        description="free: read the letter from free text; constrained: letters only.",
    )
    note: str = ""
    prompt_example: str = ""
    results: list[SystemResult]
    comparison: PairedComparison | None = Field(
        default=None,
        description="The ensemble against the best member alone, paired on the same items.",
    )

    @property
    def label(self) -> str:
        """The title, with the answer mode for multiple choice."""
        return f"{self.title} ({self.mode})" if self.kind == "choice" else self.title

    def result(self, system: str) -> SystemResult:
        for r in self.results:
            if r.system == system:
                return r
        raise KeyError(system)


class MachineInfo(BaseModel):
    platform: str
    processor: str
    cpus: int
    torch_threads: int
    torch: str
    transformers: str
    python: str
    devices: list[str]
    load_average: list[float] | None = None

    @classmethod
    def current(cls, engine: UniTEEngine | None = None) -> MachineInfo:
        import torch
        import transformers

        devices = sorted({str(m.model.device) for m in engine.members}) if engine else []
        try:
            load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = None
        return cls(
            platform=platform.platform(),
            processor=platform.machine()
            + (f" ({platform.processor()})" if platform.processor() else ""),
            cpus=os.cpu_count() or 0,
            torch_threads=torch.get_num_threads(),
            torch=torch.__version__,
            transformers=transformers.__version__,
            python=platform.python_version(),
            devices=devices,
            load_average=load,
        )


class EvalReport(BaseModel):
    members: list[str]
    sources: list[str]
    weights: list[float]
    top_k: int
    batch_size: int
    limit: int | None
    seed: int
    mode: Mode = "free"
    datasets: list[DatasetResult]
    gate: float | None = None  # the ensemble's gate (None: full UniTE)
    machine: MachineInfo
    started: str
    seconds: float
    resumed_at: list[str] = Field(
        default_factory=list,
        description="When each run that resumed this report (--resume) started; empty when one "
        "run made it. ``started`` is the first run's start, ``seconds`` the runs' time together.",
    )
    complete: bool = Field(
        default=True, description="False while the evaluation is still running (or was cut)."
    )
    pending: PendingPair | None = Field(
        default=None,
        description="An unfinished report: the answers so far of the pair in progress.",
    )
    settings: EvalSettings | None = Field(
        default=None, description="What the answers depend on; --resume needs them equal."
    )

    def table(self) -> str:
        """Accuracy per data set (rows) and system (columns), with items and chance."""
        systems = [*self.members, ENSEMBLE] if self.datasets else []
        present = [s for s in systems if any(_has(d, s) for d in self.datasets)]
        rows = []
        for d in self.datasets:
            row = [f"{d.label}, {d.split}", str(d.n), f"{100 * d.chance:.1f}"]
            for s in present:
                r = next((x for x in d.results if x.system == s), None)
                row.append("-" if r is None else r.accuracy_text())
            rows.append(row)
        compared = [d for d in self.datasets if d.comparison is not None]
        lines = [
            text_table(
                ["data set", "items", "chance %", *[f"{s} % [95% CI]" for s in present]], rows
            ),
            "",
        ]
        if compared:
            lines += [
                text_table(
                    ["data set", "ensemble vs", "ens only", "best only", "difference (points)"],
                    [
                        [
                            d.label,
                            d.comparison.second,
                            str(d.comparison.first_only),
                            str(d.comparison.second_only),
                            d.comparison.text(),
                        ]
                        for d in compared
                        if d.comparison is not None
                    ],
                ),
                "(paired on the same items: Newcombe 95% interval of the difference, "
                "exact McNemar test)",
                "",
            ]
        lines += [
            text_table(
                ["data set", "system", "correct", "no answer", "median chars", "cut", "seconds"],
                [
                    [
                        d.label,
                        r.system,
                        f"{r.correct}/{r.n}",
                        str(r.no_answer),
                        f"{r.median_response_chars:.0f}",
                        f"{100 * r.truncated_share:.0f}%",
                        f"{r.seconds:.1f}",
                    ]
                    for d in self.datasets
                    for r in d.results
                ],
            ),
            "",
            f"{self.seconds:.0f} s in all on {self.machine.processor}, {self.machine.cpus} CPUs, "
            f"torch {self.machine.torch} ({self.machine.torch_threads} threads), "
            f"devices {', '.join(self.machine.devices) or '-'}",
        ]
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A grouped bar chart of accuracy (one group per data set), chance as a dashed line."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        systems = [s for s in [*self.members, ENSEMBLE] if any(_has(d, s) for d in self.datasets)]
        n_sys = max(len(systems), 1)
        width = 0.8 / n_sys
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(self.datasets) * n_sys / 2 + 2), 4))
        for j, s in enumerate(systems):
            xs, ys, lo, hi = [], [], [], []
            for i, d in enumerate(self.datasets):
                r = next((x for x in d.results if x.system == s), None)
                if r is not None:
                    iv = r.interval or wilson_interval(r.correct, r.n)
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(100 * r.accuracy)
                    lo.append(100 * (r.accuracy - iv.low))
                    hi.append(100 * (iv.high - r.accuracy))
            bars = ax.bar(xs, ys, width, label=s, yerr=[lo, hi], capsize=2, ecolor="#444")
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        for i, d in enumerate(self.datasets):
            if d.chance > 0:
                ax.hlines(100 * d.chance, i - 0.45, i + 0.45, colors="grey", linestyles="dashed")
        ax.set_xticks(range(len(self.datasets)))
        ax.set_xticklabels([f"{d.label}\n(n={d.n})" for d in self.datasets])
        ax.set_ylabel("accuracy (%), whiskers: Wilson 95% interval")
        ax.set_title("members alone and the UniTE ensemble (dashed: chance)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def _has(d: DatasetResult, system: str) -> bool:
    return any(r.system == system for r in d.results)


# -- running ---------------------------------------------------------------------------------------

Progress = Callable[[int], None]


def choice_constraint(letters: Sequence[str]) -> Constraint:
    """Only one of ``letters``, optionally after one space (``" B"`` follows ``"Answer:"``)."""
    if not letters or not all(len(c) == 1 and c.isalpha() for c in letters):
        raise ConfigError(f"option letters must be single letters, got {list(letters)!r}")
    return Constraint.regex(f" ?[{''.join(sorted(set(letters)))}]")


def _batches(keys: Sequence[tuple[Any, ...]], batch_size: int) -> list[list[int]]:
    """Item indices in batches of equal ``key[0]`` (the constraint), sorted by the rest."""
    order = sorted(range(len(keys)), key=lambda i: (*keys[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < batch_size and keys[out[-1][0]][0] == keys[i][0]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def run_task(
    engine: UniTEEngine,
    task: Task,
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
    constrained: bool = False,
    gate: float | None = None,
) -> list[GenerationResult | None]:
    """Generate every item's answer (greedy), in batches of similar prompt length; item order.

    ``constrained`` (multiple choice only): each answer is decoded under a grammar that allows
    only the item's option letters; items with different option sets go in different batches.
    An item whose prompt does not fit a member's context window gets None (scored as wrong and
    counted in ``too_long``).
    """
    plan = _batch_plan(task, batch_size, constrained, gate)
    prompts = [task.prompt(it) for it in task.items]
    out: list[GenerationResult | None] = [None] * len(prompts)
    for chunk, options in plan:
        for i, r in zip(chunk, _answer_batch(engine, [prompts[i] for i in chunk], options)):
            out[i] = r
        if progress is not None:
            progress(len(chunk))
    return out


def _check_run(task: Task, batch_size: int, constrained: bool) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if constrained and task.kind != "choice":
        raise ConfigError(
            f"{task.title}: constrained answers need a multiple-choice task, not {task.kind!r}"
        )


def _batch_plan(
    task: Task, batch_size: int, constrained: bool, gate: float | None
) -> list[tuple[list[int], dict[str, Any]]]:
    """A run's batches in the order they run (item indices), each with its generate options.
    The plan depends only on the task and these arguments, so a resumed run has the same."""
    _check_run(task, batch_size, constrained)
    letters = ["".join(c for c, _ in it.choices) if constrained else "" for it in task.items]
    keys = [(letters[i], len(task.text(it))) for i, it in enumerate(task.items)]
    options: dict[str, Any] = {
        "max_new_tokens": task.max_new_tokens,
        "temperature": 0.0,
        "stop": list(task.stop),
        "gate": gate,
    }
    plan = []
    for chunk in _batches(keys, batch_size):
        extra = {"constraint": choice_constraint(letters[chunk[0]])} if constrained else {}
        plan.append((chunk, {**options, **extra}))
    return plan


def _answer_batch(
    engine: UniTEEngine, prompts: Sequence[Any], options: Mapping[str, Any]
) -> list[GenerationResult | None]:
    """One batch's answers; a prompt too long for a member's context gets None."""
    try:
        return list(engine.generate(list(prompts), **options))
    except ContextWindowError:  # some prompt is too long for a member: the others still run
        results: list[GenerationResult | None] = []
        for p in prompts:
            try:
                results.append(engine.generate([p], **options)[0])
            except ContextWindowError:
                results.append(None)
        return results


def score_results(
    task: Task,
    results: Sequence[GenerationResult | ItemOutput | None],
    *,
    system: str,
    kind: Literal["member", "ensemble"],
    seconds: float,
    keep_records: bool = False,
) -> SystemResult:
    """Accuracy, lengths and answer statistics of one system's answers."""
    outputs = [None if r is None else ItemOutput.of(r) for r in results]
    correct = 0
    no_answer = 0
    letters: Counter[str] = Counter()
    records: list[ItemRecord] = []
    item_correct: list[bool] = []
    too_long = 0
    for item, r in zip(task.items, outputs):
        if r is None:
            too_long += 1
            no_answer += 1
            item_correct.append(False)
            if keep_records:
                records.append(
                    ItemRecord(
                        id=item.id, output="", extracted=None, correct=False, finish_reason="length"
                    )
                )
            continue
        got = task.extract(r.text, item)
        ok = task.is_correct(r.text, item)
        correct += ok
        item_correct.append(ok)
        no_answer += got is None
        if task.kind == "choice" and got is not None:
            letters[got] += 1
        if keep_records:
            records.append(
                ItemRecord(
                    id=item.id,
                    output=r.text,
                    extracted=got,
                    correct=ok,
                    finish_reason=r.finish_reason,
                )
            )
    n = len(outputs)
    done = [r for r in outputs if r is not None]
    chars = [len(r.text.strip()) for r in done]
    tokens = [r.output_tokens for r in done]
    cut = sum(r.finish_reason == "length" for r in done)
    return SystemResult(
        system=system,
        kind=kind,
        correct=correct,
        n=n,
        accuracy=correct / n if n else 0.0,
        seconds=seconds,
        median_response_chars=float(statistics.median(chars)) if chars else 0.0,
        median_response_tokens=float(statistics.median(tokens)) if tokens else 0.0,
        truncated_share=cut / len(done) if done else 0.0,
        no_answer=no_answer,
        too_long=too_long,
        answer_counts=dict(sorted(letters.items())) if task.kind == "choice" else None,
        interval=wilson_interval(correct, n),
        item_correct=item_correct,
        records=records if keep_records else None,
    )


def ensemble_vs_best(results: Sequence[SystemResult]) -> PairedComparison | None:
    """The ensemble against the most accurate member (first on ties), paired on the items."""
    members = [r for r in results if r.kind == "member"]
    ens = next((r for r in results if r.kind == "ensemble"), None)
    if ens is None or not members:
        return None
    best = max(members, key=lambda r: r.correct)  # max keeps the first of equals
    if len(best.item_correct) != ens.n or len(ens.item_correct) != ens.n:
        return None
    return compare_paired(ens.item_correct, best.item_correct, names=(ens.system, best.system))


def _bar(total: int, enabled: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="item", file=sys.stderr)


#: What ``evaluate_task`` calls to have its progress written: the data set so far (its finished
#: systems), and the pair in progress (None after a pair finishes).
Save = Callable[[DatasetResult, PendingPair | None], None]


def evaluate_task(
    engine: UniTEEngine,
    task: Task,
    *,
    members_alone: bool = True,
    ensemble: bool = True,
    batch_size: int = 16,
    progress: bool = True,
    keep_records: bool = False,
    constrained: bool = False,
    gate: float | None = None,
    previous: DatasetResult | None = None,
    pending: PendingPair | None = None,
    save: Save | None = None,
    checkpoint_every: int = 0,
) -> DatasetResult:
    """One data set: each member alone (if asked), then the ensemble (if asked, with ``gate``),
    in one answer mode (``constrained``: option letters only, multiple choice).

    Resuming: the systems of ``previous`` (this data set as a file left it) are kept, and
    ``pending``'s system answers only the items it lacks. ``save`` is called after each system
    and, within one, after every ``checkpoint_every`` items (0: never within a system)."""
    if not task.items:
        raise ConfigError(f"{task.title}: no items to evaluate")
    systems: list[tuple[str, Literal["member", "ensemble"], UniTEEngine]] = []
    if members_alone or len(engine.members) == 1:
        systems += [(name, "member", e) for name, e in member_engines(engine).items()]
    if ensemble and len(engine.members) > 1:
        systems.append((ENSEMBLE, "ensemble", engine))
    if not systems:
        raise ConfigError("nothing to evaluate: enable members_alone or ensemble")
    kept = {r.system: r for r in previous.results} if previous is not None else {}
    prompts = [task.prompt(it) for it in task.items]
    results: list[SystemResult] = []
    desc = f"{task.title} (constrained)" if constrained else task.title
    with _bar(len(task.items) * len(systems), progress, desc) as bar:
        for name, kind, eng in systems:
            if name in kept:
                results.append(kept[name])
                bar.update(len(task.items))
                continue
            bar.set_postfix_str(name)
            resumed = pending is not None and pending.system == name
            outs = dict(pending.outputs) if pending is not None and resumed else {}
            spent = pending.seconds if pending is not None and resumed else 0.0
            t0 = time.perf_counter()
            plan = _batch_plan(task, batch_size, constrained, gate if kind == "ensemble" else None)
            since = 0
            for b, (chunk, options) in enumerate(plan):
                if all(i in outs for i in chunk):  # answered before the run was cut
                    bar.update(len(chunk))
                    continue
                answers = _answer_batch(eng, [prompts[i] for i in chunk], options)
                for i, r in zip(chunk, answers):  # the answer only: no per-token provenance kept
                    outs[i] = None if r is None else ItemOutput.of(r)
                bar.update(len(chunk))
                since += len(chunk)
                if save is not None and 0 < checkpoint_every <= since and b < len(plan) - 1:
                    seconds = spent + time.perf_counter() - t0
                    save(
                        _dataset_result(task, constrained, results),
                        PendingPair(system=name, seconds=seconds, outputs=outs),
                    )
                    since = 0
            results.append(
                score_results(
                    task,
                    [outs[i] for i in range(len(task.items))],
                    system=name,
                    kind=kind,
                    seconds=spent + time.perf_counter() - t0,
                    keep_records=keep_records,
                )
            )
            if save is not None:
                save(_dataset_result(task, constrained, results), None)
    return _dataset_result(task, constrained, results)


def _dataset_result(task: Task, constrained: bool, results: list[SystemResult]) -> DatasetResult:
    return DatasetResult(
        dataset=task.name,
        title=task.title,
        split=task.split,
        kind=task.kind,
        shots=task.shots,
        n=len(task.items),
        available=task.available,
        chance=task.chance,
        max_new_tokens=task.max_new_tokens,
        note=task.note,
        chat=task.chat,
        mode="constrained" if constrained else "free",
        prompt_example=task.text(task.items[0]),
        results=list(results),
        comparison=ensemble_vs_best(results),
    )


def read_report(path: str | Path) -> EvalReport:
    """An ``EvalReport`` from a JSON file, finished or not; a ``ConfigError`` if it is not one."""
    try:
        return EvalReport.model_validate_json(Path(path).read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    except ValueError as e:  # pydantic's ValidationError (bad JSON included) is a ValueError
        first = str(e).splitlines()[:3]
        raise ConfigError(
            f"{path} is not a `unite eval` report ({' '.join(first)}); remove it or give another "
            "--json path"
        ) from e


def _config_of(
    members: UniTEEngine | EnsembleConfig | Sequence[str | MemberSpec] | str,
    *,
    top_k: int,
    weights: Sequence[float] | None,
    cache_dir: str | Path | None,
) -> EnsembleConfig:
    if isinstance(members, UniTEEngine):
        return members.config
    if isinstance(members, EnsembleConfig):
        return members
    return ensemble_config(members, top_k=top_k, weights=weights, cache_dir=cache_dir)


def evaluate(
    members: UniTEEngine | EnsembleConfig | Sequence[str | MemberSpec] | str,
    datasets: Sequence[str | Task],
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    shots: int | None = None,
    chat: bool = False,
    batch_size: int = 16,
    members_alone: bool = True,
    ensemble: bool = True,
    progress: bool = True,
    keep_records: bool = False,
    mode: Mode = "free",
    data_dir: str | Path | None = None,
    top_k: int = 10,
    weights: Sequence[float] | None = None,
    cache_dir: str | Path | None = None,
    gate: float | None = None,
    json_path: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 100,
) -> EvalReport:
    """Evaluate each member alone and the ensemble on data sets (names or prepared tasks).

    ``limit`` draws a seeded sample of that many items per data set (``seed``); ``split`` is
    ``test`` for reporting, ``dev``/``train`` for tuning. ``mode`` applies to multiple-choice
    data sets: ``free`` (the paper's), ``constrained`` (option letters only) or ``both`` (two
    results per such data set); other formats are always free-form. ``gate``: gated ensembling
    for the ensemble (``GenerationOptions.gate``; None: full UniTE).

    ``json_path``: the report is written there (whole, atomically) after every (system, data
    set) pair and every ``checkpoint_every`` items within a pair (0: after pairs only), with
    ``complete`` false until the end. ``resume``: if ``json_path`` exists, keep what it holds and
    evaluate the rest; it must have been written with the same settings (members, data sets and
    their items, limit, seed, shots, modes, options), else a ``ConfigError`` names what differs.
    """
    if not datasets:
        raise ConfigError("no data sets given")
    if mode not in ("free", "constrained", "both"):
        raise ConfigError(f"mode must be 'free', 'constrained' or 'both', got {mode!r}")
    if resume and json_path is None:
        raise ConfigError("resume needs the report's path (--json PATH) to resume from")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int):
        raise ConfigError(f"checkpoint_every must be an int >= 0, got {checkpoint_every!r}")
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    tasks = [
        d
        if isinstance(d, Task)
        else load_task(d, split, limit=limit, seed=seed, shots=shots, chat=chat, data_dir=data_dir)
        for d in datasets
    ]
    config = _config_of(members, top_k=top_k, weights=weights, cache_dir=cache_dir)
    settings = eval_settings(
        config,
        tasks,
        split=split,
        limit=limit,
        seed=seed,
        shots=shots,
        chat=chat,
        mode=mode,
        members_alone=members_alone,
        ensemble=ensemble,
        gate=gate,
        batch_size=batch_size,
        records=keep_records,
    )
    previous: EvalReport | None = None
    if resume and json_path is not None and Path(json_path).exists():
        previous = read_report(json_path)
        check_settings(previous.settings, settings, json_path)
        if previous.complete:
            print(f"{json_path} is complete: nothing to resume", file=sys.stderr)
            return previous
        pairs = sum(len(d.results) for d in previous.datasets)
        cut = previous.pending
        print(
            f"resuming {json_path}: {pairs} (system, data set) pair(s) done"
            + (f", {len(cut.outputs)} item(s) of {cut.system}" if cut is not None else ""),
            file=sys.stderr,
        )
    if isinstance(members, UniTEEngine):
        engine = members
    else:
        from ..engine.registry import get_engine

        engine = get_engine(config)
    runs: list[tuple[Task, bool]] = []
    for t in tasks:
        if t.kind != "choice" or mode == "free":
            runs.append((t, False))
        elif mode == "constrained":
            runs.append((t, True))
        else:
            runs += [(t, False), (t, True)]
    before = previous.seconds if previous is not None else 0.0

    def report(
        datasets: list[DatasetResult], pending: PendingPair | None, complete: bool
    ) -> EvalReport:
        return EvalReport(
            members=engine.member_names,
            sources=[m.spec.source for m in engine.members],
            weights=list(engine.config.weights),
            top_k=engine.config.top_k,
            batch_size=batch_size,
            limit=limit,
            seed=seed,
            mode=mode,
            datasets=datasets,
            gate=gate,
            machine=MachineInfo.current(engine),
            started=previous.started if previous is not None else started,
            seconds=before + time.perf_counter() - t0,
            resumed_at=[*previous.resumed_at, started] if previous is not None else [],
            complete=complete,
            pending=pending,
            settings=settings,
        )

    def write(r: EvalReport) -> None:
        if json_path is not None:
            write_atomic(json_path, r.model_dump_json(indent=2) + "\n")

    finished: list[DatasetResult] = []
    for n, (t, constrained) in enumerate(runs):
        held = previous.datasets[n] if previous and n < len(previous.datasets) else None
        last = previous is not None and n == len(previous.datasets) - 1
        finished.append(
            evaluate_task(
                engine,
                t,
                members_alone=members_alone,
                ensemble=ensemble,
                batch_size=batch_size,
                progress=progress,
                keep_records=keep_records,
                constrained=constrained,
                gate=gate,
                previous=held,
                pending=previous.pending if previous is not None and last else None,
                save=(lambda d, p: write(report([*finished, d], p, False))) if json_path else None,
                checkpoint_every=checkpoint_every,
            )
        )
    final = report(finished, None, True)
    write(final)
    return final
