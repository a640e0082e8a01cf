"""Assembling a compatibility report from measured or given numbers (pure: no models).

``recommend`` is the paper's procedure (start from the best member, add the compatible ones,
equal weights); ``build_report`` judges every member against the best and every pair, and puts
the report together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ..engine.config import MemberSpec
from ..errors import ConfigError
from .formatting import num, pct, ratio_text
from .report import (
    CompatibilityReport,
    EnsembleScore,
    MemberReport,
    PairReport,
    Recommendation,
    VocabularyFacts,
)
from .rules import (
    Judgement,
    Thresholds,
    Verdict,
    gap_verdict,
    judge,
    length_ratio,
    length_verdict,
    near_chance,
    relative_gap,
    worst,
)
from .stats import PairedComparison, compare_paired, wilson_interval

__all__ = ["build_report", "overall_verdict", "recommend"]


# -- putting it together ---------------------------------------------------------------------------


def overall_verdict(member_verdicts: Sequence[Verdict]) -> Verdict:
    """The worst member verdict against the primary (the primary itself counts as compatible)."""
    return worst(list(member_verdicts)) if member_verdicts else "unknown"


def recommend(
    names: Sequence[str],
    scores: Sequence[float | None],
    lengths: Sequence[float | None],
    th: Thresholds,
    *,
    chance: float | None = None,
    n_items: int | None = None,
) -> Recommendation:
    """The paper's procedure: start from the best member, add members within ``compatible_gap``
    whose typical length is within ``max_length_ratio`` of the primary's; equal weights.

    Without any score, or with measured scores none clearly above chance, the members cannot be
    ranked (``ranked=False``): the first is primary, the others are kept unless the length rule
    excludes them, and the notes say to measure. Members without a score (when others have one)
    are left out.
    """
    if len(names) == 0:
        raise ConfigError("no members to recommend from")
    known = [i for i, s in enumerate(scores) if s is not None]
    at_chance = chance is not None and all(
        s is not None and near_chance(s, chance, n_items) for s in (scores[i] for i in known)
    )
    if not known or at_chance:
        why = (
            f"no score is clearly above chance ({num(chance or 0.0)}): the task cannot rank the "
            "members"
            if known
            else "no scores: the members cannot be ranked"
        )
        first = names[0]
        kept = [first]
        left: dict[str, str] = {}
        for i, name in enumerate(names[1:], start=1):
            ratio = length_ratio(lengths[i], lengths[0])
            if length_verdict(ratio, th) == "incompatible":
                left[name] = f"incompatible: response length {ratio_text(ratio)} {first}'s"
            else:
                kept.append(name)
        return Recommendation(
            members=kept,
            primary=first,
            weights=dict.fromkeys(kept, 1.0 / len(kept)),
            use_ensemble=len(kept) > 1,
            ranked=False,
            excluded=left,
            notes=[
                f"{why}; the first member is primary for lack of a ranking. Give scores, or "
                "measure on a task the members can do, before relying on this recommendation."
            ],
        )
    best = max(known, key=lambda i: (scores[i], -i))
    best_score = scores[best]
    assert best_score is not None
    chosen: list[str] = []
    excluded: dict[str, str] = {}
    for i, name in enumerate(names):
        s = scores[i]
        if i == best:
            chosen.append(name)
            continue
        if s is None:
            excluded[name] = "no score"
            continue
        gap = relative_gap(s, best_score)
        gv = gap_verdict(gap, th)
        if gv != "compatible":
            excluded[name] = f"{gv}: performance gap {pct(gap)} to {names[best]}"
            continue
        ratio = length_ratio(lengths[i], lengths[best])
        if length_verdict(ratio, th) == "incompatible":
            assert ratio is not None
            excluded[name] = f"incompatible: response length {ratio_text(ratio)} {names[best]}'s"
            continue
        chosen.append(name)
    notes: list[str] = []
    if len(chosen) == 1:
        notes.append(f"no other member is compatible with the best, {names[best]}: use it alone")
    else:
        notes.append("equal weights, as in the paper; the primary breaks greedy ties")
    if any(v.startswith("risky") for v in excluded.values()):
        notes.append(
            "risky members were left out; include one only after measuring that the ensemble "
            "beats the best member on your task (unite eval)"
        )
    w = 1.0 / len(chosen)
    return Recommendation(
        members=chosen,
        primary=names[best],
        weights=dict.fromkeys(chosen, w),
        use_ensemble=len(chosen) > 1,
        excluded=excluded,
        notes=notes,
    )


def build_report(
    *,
    specs: Sequence[MemberSpec],
    names: Sequence[str],
    mode: Literal["quick", "measured"],
    scores: Sequence[float | None],
    score_sources: Sequence[Literal["measured", "given"] | None],
    lengths: Sequence[float | None],
    th: Thresholds,
    task: str | None = None,
    n_items: int | None = None,
    n_items_per_member: Sequence[int | None] | None = None,
    token_lengths: Sequence[float | None] | None = None,
    truncated: Sequence[float | None] | None = None,
    vocab_sizes: Sequence[int | None] | None = None,
    vocabulary: dict[tuple[int, int], VocabularyFacts] | None = None,
    ensemble: EnsembleScore | None = None,
    chance: float | None = None,
    item_correct: Sequence[Sequence[bool] | None] | None = None,
    seconds: float = 0.0,
) -> CompatibilityReport:
    """Assemble the report from measured or given numbers (pure: no models).

    ``chance`` applies to measured scores only (given scores may be on any scale).
    ``item_correct``: per member, its per-item correctness on the calibration sample (measured);
    it gives each score a Wilson interval and each gap a paired test (see ``judge``).
    """
    n = len(names)
    if not (len(specs) == len(scores) == len(lengths) == len(score_sources) == n):
        raise ConfigError("internal: one value per member is needed")
    known = [i for i, s in enumerate(scores) if s is not None]
    best = max(known, key=lambda i: (scores[i], -i)) if known else None
    best_score = scores[best] if best is not None else None

    all_measured = all(src == "measured" for src in score_sources)
    rec = recommend(
        names,
        scores,
        lengths,
        th,
        chance=chance if all_measured else None,
        n_items=max((k for k in (n_items_per_member or []) if k), default=None),
    )
    ranked = best is not None and rec.ranked

    per_item = list(item_correct) if item_correct is not None else [None] * n

    def _paired(i: int, j: int) -> PairedComparison | None:
        a, b = per_item[i], per_item[j]
        if a is None or b is None or len(a) != len(b) or not a:
            return None
        return compare_paired(a, b, names=(names[i], names[j]))

    def _context(i: int, j: int) -> dict[str, Any]:
        measured = score_sources[i] == "measured" and score_sources[j] == "measured"
        per = n_items_per_member or [None] * n
        return {
            "chance": chance if measured else None,
            "n_items": (per[i], per[j]) if measured else (None, None),
            "paired": _paired(i, j) if measured else None,
        }

    members: list[MemberReport] = []
    for i, name in enumerate(names):
        if best is None or i == best:
            gap = 0.0 if i == best else None
            if best is None:
                j = Judgement(
                    verdict="unknown",
                    gap=None,
                    gap_verdict="unknown",
                    length_ratio=None,
                    length_verdict="unknown",
                    reasons=["no scores: the best member (the primary) is unknown"],
                )
            else:
                j = Judgement(
                    verdict="compatible" if ranked else "unknown",
                    gap=0.0,
                    gap_verdict="compatible" if ranked else "unknown",
                    length_ratio=1.0 if lengths[i] is not None else None,
                    length_verdict="compatible",
                    reasons=[
                        "the best member: the primary"
                        if ranked
                        else "the highest score, but not clearly above chance: no primary"
                    ],
                )
        else:
            j = judge(
                (name, names[best]),
                (scores[i], best_score),
                (lengths[i], lengths[best]),
                th,
                **_context(i, best),
            )
            gap = j.gap
        members.append(
            MemberReport(
                name=name,
                spec=specs[i],
                score=scores[i],
                score_source=score_sources[i],
                n_items=n_items_per_member[i] if n_items_per_member else None,
                score_interval=(
                    wilson_interval(sum(per_item[i] or ()), len(per_item[i] or ()))
                    if per_item[i]
                    else None
                ),
                gap_to_best=gap,
                versus_best=(
                    _paired(i, best) if best is not None and i != best and per_item[i] else None
                ),
                median_response_chars=lengths[i],
                median_response_tokens=token_lengths[i] if token_lengths else None,
                truncated_share=truncated[i] if truncated else None,
                length_ratio_to_primary=j.length_ratio,
                vocab_size=vocab_sizes[i] if vocab_sizes else None,
                is_primary=ranked and i == best,
                verdict=j.verdict,
                reasons=j.reasons,
            )
        )
    pairs: list[PairReport] = []
    for a in range(n):
        for b in range(a + 1, n):
            j = judge(
                (names[a], names[b]),
                (scores[a], scores[b]),
                (lengths[a], lengths[b]),
                th,
                **_context(a, b),
            )
            pairs.append(
                PairReport(
                    members=(names[a], names[b]),
                    verdict=j.verdict,
                    gap=j.gap,
                    gap_verdict=j.gap_verdict,
                    length_ratio=j.length_ratio,
                    length_verdict=j.length_verdict,
                    reasons=j.reasons,
                    vocabulary=(vocabulary or {}).get((a, b)),
                )
            )
    others = [m for i, m in enumerate(members) if i != best]
    verdict = (
        overall_verdict([m.verdict for m in others]) if best is not None and others else "unknown"
    )
    if n == 1:
        verdict = "compatible" if best is not None else "unknown"
    reasons: list[str] = []
    if best is None:
        reasons.append("no scores given or measured: the performance gap cannot be judged")
        for p in pairs:
            if p.length_verdict == "incompatible":
                reasons.append(f"{p.members[0]} + {p.members[1]}: {p.reasons[-1]}")
        if any(p.length_verdict == "incompatible" for p in pairs):
            verdict = "incompatible"
    else:
        for m in others:
            reasons += [f"{m.name} vs {names[best]}: {r}" for r in m.reasons]
    if vocabulary:
        reasons.append("vocabulary facts are informative only (the paper: size barely matters)")
    return CompatibilityReport(
        mode=mode,
        task=task,
        n_items=n_items,
        members=members,
        pairs=pairs,
        primary=names[best] if ranked and best is not None else None,
        verdict=verdict,
        reasons=reasons,
        recommendation=rec,
        thresholds=th,
        ensemble=ensemble,
        seconds=seconds,
    )
