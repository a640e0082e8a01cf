"""``unite eval``: each member alone and the ensemble, on the same prompts, scored the same way.

Members alone run as one-member engines that *share* the ensemble's loaded models (see
:func:`member_engines`), so nothing is loaded twice. Prompts go through ``engine.generate`` in
batches (sorted by length so rows of a batch pad little), greedy. The result is a typed report
with accuracy, its Wilson 95% interval and the number of items per system and data set, and the
ensemble against its best member *paired on the same items* (difference with Newcombe's interval,
exact McNemar p-value; see :mod:`.stats`), printable as a table, JSON, or a bar chart with
interval whiskers (the report's models: :mod:`.results`; the run's options: :mod:`.options`).

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

import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ..engine.config import EnsembleConfig, MemberSpec, ensemble_config
from ..engine.constraints import Constraint
from ..engine.engine import UniTEEngine
from ..engine.results import GenerationResult
from ..errors import ConfigError, ContextWindowError
from .datasets import load_task
from .options import EvalOptions, Mode
from .results import (
    ENSEMBLE,
    DatasetResult,
    EvalReport,
    ItemRecord,
    MachineInfo,
    SystemResult,
)
from .resume import (
    EvalSettings,
    ItemOutput,
    PendingPair,
    check_settings,
    eval_settings,
    write_atomic,
)
from .stats import PairedComparison, compare_paired, wilson_interval
from .tasks import Task

__all__ = [
    "ENSEMBLE",
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
    opts = EvalOptions(
        split=split,
        limit=limit,
        seed=seed,
        shots=shots,
        chat=chat,
        batch_size=batch_size,
        members_alone=members_alone,
        ensemble=ensemble,
        progress=progress,
        keep_records=keep_records,
        mode=mode,
        data_dir=data_dir,
        gate=gate,
        json_path=json_path,
        resume=resume,
        checkpoint_every=checkpoint_every,
    )
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    tasks = [d if isinstance(d, Task) else _load(d, opts) for d in datasets]
    config = _config_of(members, top_k=top_k, weights=weights, cache_dir=cache_dir)
    settings = eval_settings(config, tasks, opts)
    previous = _previous_run(opts.json_path, settings) if opts.resume else None
    if previous is not None and previous.complete:
        return previous
    if isinstance(members, UniTEEngine):
        engine = members
    else:
        from ..engine.registry import get_engine

        engine = get_engine(config)
    run = _Run(engine, opts, settings, previous, started, t0)
    finished: list[DatasetResult] = []
    for n, (t, constrained) in enumerate(_runs(tasks, opts.mode)):
        finished.append(run.dataset(n, t, constrained, finished))
    final = run.report(finished, None, True)
    run.write(final)
    return final


def _load(name: str, opts: EvalOptions) -> Task:
    return load_task(
        name,
        opts.split,
        limit=opts.limit,
        seed=opts.seed,
        shots=opts.shots,
        chat=opts.chat,
        data_dir=opts.data_dir,
    )


def _runs(tasks: Sequence[Task], mode: Mode) -> list[tuple[Task, bool]]:
    """(task, constrained) in the order they run: multiple choice once per answer mode asked,
    other formats free."""
    runs: list[tuple[Task, bool]] = []
    for t in tasks:
        if t.kind != "choice" or mode == "free":
            runs.append((t, False))
        elif mode == "constrained":
            runs.append((t, True))
        else:
            runs += [(t, False), (t, True)]
    return runs


def _previous_run(json_path: str | Path | None, settings: EvalSettings) -> EvalReport | None:
    """The report at ``json_path`` to resume (None: there is none yet), refused unless written
    with ``settings``; says on stderr what it holds."""
    if json_path is None or not Path(json_path).exists():
        return None
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
    return previous


@dataclass(frozen=True)
class _Run:
    """One ``evaluate`` call: the engine, options and settings, the report it resumes (if any)
    and when it started; what every report it writes repeats."""

    engine: UniTEEngine
    opts: EvalOptions
    settings: EvalSettings
    previous: EvalReport | None
    started: str
    t0: float

    def report(
        self, datasets: list[DatasetResult], pending: PendingPair | None, complete: bool
    ) -> EvalReport:
        engine, opts, previous = self.engine, self.opts, self.previous
        before = previous.seconds if previous is not None else 0.0
        return EvalReport(
            members=engine.member_names,
            sources=[m.spec.source for m in engine.members],
            weights=list(engine.config.weights),
            top_k=engine.config.top_k,
            batch_size=opts.batch_size,
            limit=opts.limit,
            seed=opts.seed,
            mode=opts.mode,
            datasets=datasets,
            gate=opts.gate,
            machine=MachineInfo.current(engine),
            started=previous.started if previous is not None else self.started,
            seconds=before + time.perf_counter() - self.t0,
            resumed_at=[*previous.resumed_at, self.started] if previous is not None else [],
            complete=complete,
            pending=pending,
            settings=self.settings,
        )

    def write(self, report: EvalReport) -> None:
        """The report to ``json_path`` (if given), whole (``write_atomic``)."""
        if self.opts.json_path is not None:
            write_atomic(self.opts.json_path, report.model_dump_json(indent=2) + "\n")

    def dataset(
        self, n: int, task: Task, constrained: bool, finished: list[DatasetResult]
    ) -> DatasetResult:
        """The ``n``-th run (``task`` in one answer mode), continuing what the resumed report
        holds of it; every checkpoint writes ``finished`` and this one so far."""
        opts, previous = self.opts, self.previous
        held = previous.datasets[n] if previous and n < len(previous.datasets) else None
        last = previous is not None and n == len(previous.datasets) - 1

        def save(d: DatasetResult, p: PendingPair | None) -> None:
            self.write(self.report([*finished, d], p, False))

        return evaluate_task(
            self.engine,
            task,
            members_alone=opts.members_alone,
            ensemble=opts.ensemble,
            batch_size=opts.batch_size,
            progress=opts.progress,
            keep_records=opts.keep_records,
            constrained=constrained,
            gate=opts.gate,
            previous=held,
            pending=previous.pending if previous is not None and last else None,
            save=save if opts.json_path else None,
            checkpoint_every=opts.checkpoint_every,
        )
