"""``check_compatibility``: should these models be ensembled, and how?

Two modes:

* **quick** (no generation): vocabulary facts of every pair (sizes, words split alike, top-k
  overlap from one forward pass over a little text) plus scores the user already has. For use while
  configuring a chain; the verdict is ``unknown`` without scores.
* **measured**: each member answers a small calibration sample (a bundled format, a data set, or the
  user's own examples with answers) through the same code as ``unite eval``, with a progress bar;
  the report then has measured scores and typical response lengths.

The default ``mode="auto"`` measures when a task or examples are given, else runs quick.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..engine.config import EnsembleConfig, MemberSpec
from ..engine.engine import UniTEEngine
from ..errors import ConfigError
from .assemble import Measurements, assemble_report
from .datasets import load_task
from .evaluate import evaluate_task, resolve_engine
from .report import CompatibilityReport, EnsembleScore, Thresholds, VocabularyFacts
from .results import ENSEMBLE, DatasetResult
from .tasks import CalibrationExample, Task, custom_task
from .vocabulary import SAMPLE_TEXTS, pair_facts

__all__ = ["DEFAULT_CALIBRATION_ITEMS", "CheckOptions", "check_compatibility"]

DEFAULT_CALIBRATION_ITEMS = 50
Mode = Literal["auto", "quick", "measured"]


@dataclass(frozen=True)
class CheckOptions:
    """What ``check_compatibility`` was asked, validated once: ``mode`` resolved to quick or
    measured (with its default task), ``examples`` read into a list, the default thresholds
    filled in. The helpers below read this instead of passing twenty keywords along; each field
    is the keyword of the same name (see ``check_compatibility``)."""

    mode: Literal["quick", "measured"]
    task: str | Task | None
    examples: list[CalibrationExample | Mapping[str, Any]] | None
    scores: Mapping[str, float] | None
    lengths: Mapping[str, float] | None
    n_items: int
    seed: int
    thresholds: Thresholds
    vocabulary: bool
    topk_overlap: bool
    sample_texts: Sequence[str] | None
    with_ensemble: bool
    constrained: bool | None
    top_k: int
    batch_size: int
    progress: bool
    data_dir: str | Path | None
    cache_dir: str | Path | None


def _lookup(
    values: Mapping[str, float] | None, names: Sequence[str], specs: Sequence[MemberSpec]
) -> list[float | None]:
    """Values keyed by member name, source or display name (or position, as "0", "1" ...)."""
    out: list[float | None] = [None] * len(names)
    if not values:
        return out
    used: set[str] = set()
    for i, (name, spec) in enumerate(zip(names, specs)):
        for key in (name, spec.source, spec.display_name, spec.name or "", str(i)):
            if key and key in values:
                v = float(values[key])
                if v != v or v < 0:
                    raise ConfigError(f"value for {name!r} must be a number >= 0, got {v}")
                out[i] = v
                used.add(key)
                break
    unknown = set(values) - used
    if unknown:
        raise ConfigError(
            f"no member named {', '.join(sorted(unknown))}; members are {', '.join(names)}"
        )
    return out


def check_compatibility(
    members: Sequence[str | MemberSpec] | EnsembleConfig | UniTEEngine,
    *,
    mode: Mode = "auto",
    task: str | Task | None = None,
    examples: Iterable[CalibrationExample | Mapping[str, Any]] | None = None,
    scores: Mapping[str, float] | None = None,
    lengths: Mapping[str, float] | None = None,
    n_items: int = DEFAULT_CALIBRATION_ITEMS,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    vocabulary: bool = True,
    topk_overlap: bool = True,
    sample_texts: Sequence[str] | None = None,
    with_ensemble: bool = False,
    constrained: bool | None = None,
    top_k: int = 10,
    batch_size: int = 16,
    progress: bool = True,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> CompatibilityReport:
    """Measure whether ``members`` should be ensembled with UniTE, and recommend how.

    Args:
        members: sources (aliases, directories, ``.gguf`` files, hub ids) or ``MemberSpec``s, an
            ``EnsembleConfig``, or a loaded ``UniTEEngine``. Models are loaded once and shared with
            the rest of the process (``get_engine``), so a chain built afterwards reuses them.
        mode: ``quick`` (no generation), ``measured``, or ``auto`` (measured when ``task`` or
            ``examples`` is given).
        task: a calibration format (``multiple-choice``, ``short-answer``, ``math``: bundled, train
            and dev splits only), a data set (``arc``, ``piqa``, ``mmlu``, ``gsm8k``, ``triviaqa``,
            ``nq``: its train/dev split), or a prepared ``Task``.
        examples: the user's own examples with answers (``CalibrationExample`` or dicts with
            ``question``, ``answer`` and optionally ``choices``); used instead of ``task``.
        scores: scores the user already has, keyed by member name or source (any scale: only
            ratios matter). Measured scores replace them for members measured.
        lengths: typical response lengths (characters) the user already has.
        n_items: calibration items to draw (seeded by ``seed``); all of ``examples`` are used.
        thresholds: the verdict thresholds (default: the paper's 10% / 15% / 2x).
        vocabulary, topk_overlap: compute vocabulary facts (the overlap needs one forward pass).
        sample_texts: text for the vocabulary facts (default: a little built-in prose, plus the
            calibration questions in measured mode).
        with_ensemble: in measured mode, also score the ensemble itself on the sample.
        constrained: decode multiple-choice answers under a grammar that allows only the option
            letters (default: on for multiple choice, so the scores measure the choice and not
            whether a member follows the answer format; see ``unite eval --constrained``).
        progress: show a progress bar while measuring.
    """
    resolved, task, examples_list = _resolve_mode(mode, task, examples, n_items)
    opts = CheckOptions(
        mode=resolved,
        task=task,
        examples=examples_list,
        scores=scores,
        lengths=lengths,
        n_items=n_items,
        seed=seed,
        thresholds=thresholds or Thresholds(),
        vocabulary=vocabulary,
        topk_overlap=topk_overlap,
        sample_texts=sample_texts,
        with_ensemble=with_ensemble,
        constrained=constrained,
        top_k=top_k,
        batch_size=batch_size,
        progress=progress,
        data_dir=data_dir,
        cache_dir=cache_dir,
    )
    return _check(members, opts)


def _resolve_mode(
    mode: Mode,
    task: str | Task | None,
    examples: Iterable[CalibrationExample | Mapping[str, Any]] | None,
    n_items: int,
) -> tuple[
    Literal["quick", "measured"],
    str | Task | None,
    list[CalibrationExample | Mapping[str, Any]] | None,
]:
    """``auto`` measures when a task or examples are given; measuring without either uses the
    short-answer format. Returns the mode, the task and the examples as a list."""
    examples_list = list(examples) if examples is not None else None
    if mode == "auto":
        mode = "measured" if (task is not None or examples_list) else "quick"
    if mode not in ("quick", "measured"):
        raise ConfigError(f"mode must be 'auto', 'quick' or 'measured', got {mode!r}")
    if mode == "measured" and task is None and not examples_list:
        task = "short-answer"
    if n_items < 1:
        raise ConfigError(f"n_items must be >= 1, got {n_items}")
    return mode, task, examples_list


def _check(
    members: Sequence[str | MemberSpec] | EnsembleConfig | UniTEEngine, opts: CheckOptions
) -> CompatibilityReport:
    """The check on validated options: load, take the given numbers, measure (measured mode),
    compare vocabularies, assemble the report."""
    t0 = time.perf_counter()
    engine = resolve_engine(members, top_k=opts.top_k, cache_dir=opts.cache_dir)
    loaded = engine.members
    names = [m.name for m in loaded]
    specs = [m.spec for m in loaded]
    given_scores = _lookup(opts.scores, names, specs)
    given_lengths = _lookup(opts.lengths, names, specs)
    texts = list(opts.sample_texts) if opts.sample_texts else list(SAMPLE_TEXTS)
    cal: _Calibration | None = None
    if opts.mode == "measured":
        cal = _calibrate(engine, opts)
        numbers = _measured(names, cal.result, vocab_sizes=[m.vocab.size for m in loaded])
        if not opts.sample_texts:
            texts += [it.question for it in cal.task.items[:8]]
    else:
        numbers = Measurements(
            names=names,
            scores=given_scores,
            score_sources=["given" if s is not None else None for s in given_scores],
            lengths=given_lengths,
            vocab_sizes=[m.vocab.size for m in loaded],
        )
    return assemble_report(
        specs,
        numbers,
        mode=opts.mode,
        th=opts.thresholds,
        task=cal.title if cal is not None else None,
        n_items=cal.result.n if cal is not None else None,
        vocabulary=_vocabulary_facts(engine, texts, opts) or None,
        ensemble=_ensemble_score(cal.result, names, opts) if cal is not None else None,
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class _Calibration:
    """A measured run on the calibration sample: the task, its title as reported, the result."""

    task: Task
    title: str
    result: DatasetResult


def _calibrate(engine: UniTEEngine, opts: CheckOptions) -> _Calibration:
    """Each member alone (and the ensemble, if asked) on the calibration sample: the user's
    examples, a prepared task, or ``n_items`` drawn from a format or data set's dev split."""
    if opts.examples:
        cal = custom_task(opts.examples)
    elif isinstance(opts.task, Task):
        cal = opts.task
    else:
        assert opts.task is not None
        cal = load_task(
            opts.task, "dev", limit=opts.n_items, seed=opts.seed, data_dir=opts.data_dir
        )
    title = cal.title if cal.split in ("given",) else f"{cal.title} ({cal.split})"
    use_constraint = cal.kind == "choice" if opts.constrained is None else opts.constrained
    if use_constraint and cal.kind == "choice":
        title += ", constrained"
    result = evaluate_task(
        engine,
        cal,
        members_alone=True,
        ensemble=opts.with_ensemble,
        batch_size=opts.batch_size,
        progress=opts.progress,
        constrained=use_constraint and cal.kind == "choice",
    )
    return _Calibration(cal, title, result)


def _measured(
    names: Sequence[str], result: DatasetResult, *, vocab_sizes: Sequence[int]
) -> Measurements:
    """Every member's measured numbers (they replace any given ones)."""
    alone = [result.result(name) for name in names]
    return Measurements(
        names=names,
        scores=[r.accuracy for r in alone],
        score_sources=["measured"] * len(alone),
        lengths=[r.median_response_chars for r in alone],
        n_items=[r.n for r in alone],
        token_lengths=[r.median_response_tokens for r in alone],
        truncated=[r.truncated_share for r in alone],
        vocab_sizes=vocab_sizes,
        item_correct=[r.item_correct for r in alone],
        chance=result.chance,
    )


def _ensemble_score(
    result: DatasetResult, names: Sequence[str], opts: CheckOptions
) -> EnsembleScore | None:
    """The ensemble's own score on the sample, against the best member (if it was measured)."""
    if not opts.with_ensemble or len(names) < 2:
        return None
    e = result.result(ENSEMBLE)
    best = max(result.result(name).accuracy for name in names)
    return EnsembleScore(
        score=e.accuracy,
        n_items=e.n,
        gain_over_best=e.accuracy - best,
        interval=e.interval,
        comparison=result.comparison,
    )


def _vocabulary_facts(
    engine: UniTEEngine, texts: Sequence[str], opts: CheckOptions
) -> dict[tuple[int, int], VocabularyFacts]:
    """Vocabulary facts of every pair of members (none unless ``opts.vocabulary``)."""
    loaded = engine.members
    if not opts.vocabulary:
        return {}
    return {
        (a, b): pair_facts(
            loaded[a], loaded[b], texts=texts, k=engine.config.top_k, overlap=opts.topk_overlap
        )
        for a in range(len(loaded))
        for b in range(a + 1, len(loaded))
    }
