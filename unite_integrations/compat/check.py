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
from pathlib import Path
from typing import Any, Literal

from ..engine.config import EnsembleConfig, MemberSpec
from ..engine.engine import UniTEEngine
from ..errors import ConfigError
from .assemble import build_report
from .datasets import load_task
from .evaluate import ENSEMBLE, evaluate_task, resolve_engine
from .report import CompatibilityReport, EnsembleScore, Thresholds, VocabularyFacts
from .tasks import CalibrationExample, Task, custom_task
from .vocabulary import SAMPLE_TEXTS, pair_facts

__all__ = ["DEFAULT_CALIBRATION_ITEMS", "check_compatibility"]

DEFAULT_CALIBRATION_ITEMS = 50
Mode = Literal["auto", "quick", "measured"]


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
    t0 = time.perf_counter()
    th = thresholds or Thresholds()
    examples_list = list(examples) if examples is not None else None
    if mode == "auto":
        mode = "measured" if (task is not None or examples_list) else "quick"
    if mode not in ("quick", "measured"):
        raise ConfigError(f"mode must be 'auto', 'quick' or 'measured', got {mode!r}")
    if mode == "measured" and task is None and not examples_list:
        task = "short-answer"
    if n_items < 1:
        raise ConfigError(f"n_items must be >= 1, got {n_items}")

    engine = resolve_engine(members, top_k=top_k, cache_dir=cache_dir)
    loaded = engine.members
    names = [m.name for m in loaded]
    specs = [m.spec for m in loaded]
    given_scores = _lookup(scores, names, specs)
    given_lengths = _lookup(lengths, names, specs)

    score_vals: list[float | None] = list(given_scores)
    sources: list[Literal["measured", "given"] | None] = [
        "given" if s is not None else None for s in given_scores
    ]
    length_vals: list[float | None] = list(given_lengths)
    token_lengths: list[float | None] | None = None
    truncated: list[float | None] | None = None
    per_member_n: list[int | None] | None = None
    task_name: str | None = None
    n_used: int | None = None
    ensemble_score: EnsembleScore | None = None
    chance: float | None = None
    per_item: list[Sequence[bool] | None] | None = None
    texts = list(sample_texts) if sample_texts else list(SAMPLE_TEXTS)

    if mode == "measured":
        if examples_list:
            cal = custom_task(examples_list)
        elif isinstance(task, Task):
            cal = task
        else:
            assert task is not None
            cal = load_task(task, "dev", limit=n_items, seed=seed, data_dir=data_dir)
        task_name = cal.title if cal.split in ("given",) else f"{cal.title} ({cal.split})"
        use_constraint = cal.kind == "choice" if constrained is None else constrained
        if use_constraint and cal.kind == "choice":
            task_name += ", constrained"
        result = evaluate_task(
            engine,
            cal,
            members_alone=True,
            ensemble=with_ensemble,
            batch_size=batch_size,
            progress=progress,
            constrained=use_constraint and cal.kind == "choice",
        )
        n_used = result.n
        chance = result.chance
        token_lengths, truncated, per_member_n, per_item = [], [], [], []
        for i, name in enumerate(names):
            r = result.result(name)
            per_item.append(r.item_correct)
            score_vals[i] = r.accuracy
            sources[i] = "measured"
            length_vals[i] = r.median_response_chars
            token_lengths.append(r.median_response_tokens)
            truncated.append(r.truncated_share)
            per_member_n.append(r.n)
        if with_ensemble and len(names) > 1:
            e = result.result(ENSEMBLE)
            best = max(s for s in score_vals if s is not None)
            ensemble_score = EnsembleScore(
                score=e.accuracy,
                n_items=e.n,
                gain_over_best=e.accuracy - best,
                interval=e.interval,
                comparison=result.comparison,
            )
        if not sample_texts:
            texts += [it.question for it in cal.items[:8]]

    facts: dict[tuple[int, int], VocabularyFacts] = {}
    if vocabulary:
        for a in range(len(loaded)):
            for b in range(a + 1, len(loaded)):
                facts[(a, b)] = pair_facts(
                    loaded[a], loaded[b], texts=texts, k=engine.config.top_k, overlap=topk_overlap
                )

    return build_report(
        specs=specs,
        names=names,
        mode=mode,
        scores=score_vals,
        score_sources=sources,
        lengths=length_vals,
        th=th,
        task=task_name,
        n_items=n_used,
        n_items_per_member=per_member_n,
        token_lengths=token_lengths,
        truncated=truncated,
        vocab_sizes=[m.vocab.size for m in loaded],
        vocabulary=facts or None,
        ensemble=ensemble_score,
        chance=chance,
        item_correct=per_item,
        seconds=time.perf_counter() - t0,
    )
