"""Assembling a compatibility report from measured or given numbers (pure: no models).

``recommend`` is the paper's procedure (start from the best member, add the compatible ones,
equal weights); ``assemble_report`` judges every member against the best and every pair, and puts
the report together from :class:`Measurements` (``build_report``: the same, from keywords).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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

__all__ = ["Measurements", "assemble_report", "build_report", "overall_verdict", "recommend"]


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
        return _unranked(names, lengths, th, why)
    best = max(known, key=lambda i: (scores[i], -i))
    why_not = {i: _exclusion(i, best, names, scores, lengths, th) for i in known if i != best}
    why_not |= {i: "no score" for i in range(len(names)) if scores[i] is None}
    chosen = [name for i, name in enumerate(names) if why_not.get(i) is None]
    excluded = {names[i]: why for i, why in sorted(why_not.items()) if why is not None}
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
    return Recommendation(
        members=chosen,
        primary=names[best],
        weights=dict.fromkeys(chosen, 1.0 / len(chosen)),
        use_ensemble=len(chosen) > 1,
        excluded=excluded,
        notes=notes,
    )


def _length_exclusion(
    i: int, primary: int, names: Sequence[str], lengths: Sequence[float | None], th: Thresholds
) -> str | None:
    """Why member ``i`` is left out by the length rule against ``primary`` (None: it is not)."""
    ratio = length_ratio(lengths[i], lengths[primary])
    if length_verdict(ratio, th) != "incompatible":
        return None
    assert ratio is not None
    return f"incompatible: response length {ratio_text(ratio)} {names[primary]}'s"


def _exclusion(
    i: int,
    best: int,
    names: Sequence[str],
    scores: Sequence[float | None],
    lengths: Sequence[float | None],
    th: Thresholds,
) -> str | None:
    """Why member ``i`` is left out of the ensemble around ``best`` (None: it is kept)."""
    s, best_score = scores[i], scores[best]
    assert s is not None and best_score is not None
    gap = relative_gap(s, best_score)
    gv = gap_verdict(gap, th)
    if gv != "compatible":
        return f"{gv}: performance gap {pct(gap)} to {names[best]}"
    return _length_exclusion(i, best, names, lengths, th)


def _unranked(
    names: Sequence[str], lengths: Sequence[float | None], th: Thresholds, why: str
) -> Recommendation:
    """Members that cannot be ranked: the first is primary; the length rule alone excludes."""
    why_not = {i: _length_exclusion(i, 0, names, lengths, th) for i in range(1, len(names))}
    kept = [name for i, name in enumerate(names) if why_not.get(i) is None]
    left = {names[i]: why for i, why in why_not.items() if why is not None}
    return Recommendation(
        members=kept,
        primary=names[0],
        weights=dict.fromkeys(kept, 1.0 / len(kept)),
        use_ensemble=len(kept) > 1,
        ranked=False,
        excluded=left,
        notes=[
            f"{why}; the first member is primary for lack of a ranking. Give scores, or "
            "measure on a task the members can do, before relying on this recommendation."
        ],
    )


@dataclass(frozen=True)
class Measurements:
    """The numbers a report is assembled from: one entry per member, in member order (``None``:
    not known). ``chance`` applies to measured scores only (given scores may be on any scale);
    ``item_correct`` is each member's per-item correctness on the calibration sample (measured),
    which gives each score a Wilson interval and each gap a paired test (see ``judge``)."""

    names: Sequence[str]
    scores: Sequence[float | None]
    score_sources: Sequence[Literal["measured", "given"] | None]
    lengths: Sequence[float | None]
    n_items: Sequence[int | None] | None = None
    token_lengths: Sequence[float | None] | None = None
    truncated: Sequence[float | None] | None = None
    vocab_sizes: Sequence[int | None] | None = None
    item_correct: Sequence[Sequence[bool] | None] | None = None
    chance: float | None = None

    def __post_init__(self) -> None:
        n = len(self.names)
        if not (len(self.scores) == len(self.lengths) == len(self.score_sources) == n):
            raise ConfigError("internal: one value per member is needed")

    @property
    def best(self) -> int | None:
        """The member with the highest score (the first of equals); None without scores."""
        known = [i for i, s in enumerate(self.scores) if s is not None]
        return max(known, key=lambda i: (self.scores[i], -i)) if known else None

    def correct(self, i: int) -> Sequence[bool] | None:
        return self.item_correct[i] if self.item_correct is not None else None

    def paired(self, i: int, j: int) -> PairedComparison | None:
        """Members ``i`` and ``j`` compared on the same items, where both have per-item results."""
        a, b = self.correct(i), self.correct(j)
        if a is None or b is None or len(a) != len(b) or not a:
            return None
        return compare_paired(a, b, names=(self.names[i], self.names[j]))

    def judge(self, i: int, j: int, th: Thresholds) -> Judgement:
        """The verdict on members ``i`` and ``j``; chance, item counts and the paired test count
        only where both scores were measured."""
        measured = self.score_sources[i] == "measured" and self.score_sources[j] == "measured"
        per = self.n_items or [None] * len(self.names)
        return judge(
            (self.names[i], self.names[j]),
            (self.scores[i], self.scores[j]),
            (self.lengths[i], self.lengths[j]),
            th,
            chance=self.chance if measured else None,
            n_items=(per[i], per[j]) if measured else (None, None),
            paired=self.paired(i, j) if measured else None,
        )

    def recommendation(self, th: Thresholds) -> Recommendation:
        all_measured = all(src == "measured" for src in self.score_sources)
        return recommend(
            self.names,
            self.scores,
            self.lengths,
            th,
            chance=self.chance if all_measured else None,
            n_items=max((k for k in (self.n_items or []) if k), default=None),
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
    """Assemble the report from measured or given numbers (pure: no models); the keywords of
    :class:`Measurements` (``n_items_per_member`` is its ``n_items``) and of
    :func:`assemble_report`."""
    numbers = Measurements(
        names=names,
        scores=scores,
        score_sources=score_sources,
        lengths=lengths,
        n_items=n_items_per_member,
        token_lengths=token_lengths,
        truncated=truncated,
        vocab_sizes=vocab_sizes,
        item_correct=item_correct,
        chance=chance,
    )
    return assemble_report(
        specs,
        numbers,
        mode=mode,
        th=th,
        task=task,
        n_items=n_items,
        vocabulary=vocabulary,
        ensemble=ensemble,
        seconds=seconds,
    )


def assemble_report(
    specs: Sequence[MemberSpec],
    numbers: Measurements,
    *,
    mode: Literal["quick", "measured"],
    th: Thresholds,
    task: str | None = None,
    n_items: int | None = None,
    vocabulary: Mapping[tuple[int, int], VocabularyFacts] | None = None,
    ensemble: EnsembleScore | None = None,
    seconds: float = 0.0,
) -> CompatibilityReport:
    """The report on ``numbers`` (pure: no models): every member judged against the best, every
    pair judged, the overall verdict and the recommendation. ``n_items``: the calibration
    sample's size; ``vocabulary``: facts per pair of member indices (informative only)."""
    if len(specs) != len(numbers.names):
        raise ConfigError("internal: one value per member is needed")
    best = numbers.best
    rec = numbers.recommendation(th)
    ranked = best is not None and rec.ranked
    members = [_member_report(i, spec, numbers, th, ranked) for i, spec in enumerate(specs)]
    pairs = _pair_reports(numbers, th, vocabulary or {})
    verdict, reasons = _overall(numbers, members, pairs)
    if vocabulary:
        reasons.append("vocabulary facts are informative only (the paper: size barely matters)")
    return CompatibilityReport(
        mode=mode,
        task=task,
        n_items=n_items,
        members=members,
        pairs=pairs,
        primary=numbers.names[best] if ranked and best is not None else None,
        verdict=verdict,
        reasons=reasons,
        recommendation=rec,
        thresholds=th,
        ensemble=ensemble,
        seconds=seconds,
    )


def _primary_judgement(numbers: Measurements, i: int, ranked: bool) -> Judgement:
    """The best member's own judgement (or, without scores, any member's): nothing to compare."""
    if numbers.best is None:
        return Judgement(
            verdict="unknown",
            gap=None,
            gap_verdict="unknown",
            length_ratio=None,
            length_verdict="unknown",
            reasons=["no scores: the best member (the primary) is unknown"],
        )
    return Judgement(
        verdict="compatible" if ranked else "unknown",
        gap=0.0,
        gap_verdict="compatible" if ranked else "unknown",
        length_ratio=1.0 if numbers.lengths[i] is not None else None,
        length_verdict="compatible",
        reasons=[
            "the best member: the primary"
            if ranked
            else "the highest score, but not clearly above chance: no primary"
        ],
    )


def _member_report(
    i: int, spec: MemberSpec, numbers: Measurements, th: Thresholds, ranked: bool
) -> MemberReport:
    """Member ``i`` with its numbers, judged against the best member."""
    best, correct = numbers.best, numbers.correct(i)
    if best is None or i == best:
        j = _primary_judgement(numbers, i, ranked)
        gap = 0.0 if i == best else None
    else:
        j = numbers.judge(i, best, th)
        gap = j.gap
    return MemberReport(
        name=numbers.names[i],
        spec=spec,
        score=numbers.scores[i],
        score_source=numbers.score_sources[i],
        n_items=numbers.n_items[i] if numbers.n_items else None,
        score_interval=wilson_interval(sum(correct), len(correct)) if correct else None,
        gap_to_best=gap,
        versus_best=(
            numbers.paired(i, best) if best is not None and i != best and correct else None
        ),
        median_response_chars=numbers.lengths[i],
        median_response_tokens=numbers.token_lengths[i] if numbers.token_lengths else None,
        truncated_share=numbers.truncated[i] if numbers.truncated else None,
        length_ratio_to_primary=j.length_ratio,
        vocab_size=numbers.vocab_sizes[i] if numbers.vocab_sizes else None,
        is_primary=ranked and i == best,
        verdict=j.verdict,
        reasons=j.reasons,
    )


def _pair_reports(
    numbers: Measurements, th: Thresholds, vocabulary: Mapping[tuple[int, int], VocabularyFacts]
) -> list[PairReport]:
    """Every pair of members, judged against each other."""
    pairs: list[PairReport] = []
    n = len(numbers.names)
    for a in range(n):
        for b in range(a + 1, n):
            j = numbers.judge(a, b, th)
            pairs.append(
                PairReport(
                    members=(numbers.names[a], numbers.names[b]),
                    verdict=j.verdict,
                    gap=j.gap,
                    gap_verdict=j.gap_verdict,
                    length_ratio=j.length_ratio,
                    length_verdict=j.length_verdict,
                    reasons=j.reasons,
                    vocabulary=vocabulary.get((a, b)),
                )
            )
    return pairs


def _overall(
    numbers: Measurements, members: Sequence[MemberReport], pairs: Sequence[PairReport]
) -> tuple[Verdict, list[str]]:
    """The overall verdict and its reasons: the worst member against the best; without scores,
    incompatible where the length rule says so, else unknown."""
    best = numbers.best
    if best is None:
        reasons = ["no scores given or measured: the performance gap cannot be judged"]
        reasons += [
            f"{p.members[0]} + {p.members[1]}: {p.reasons[-1]}"
            for p in pairs
            if p.length_verdict == "incompatible"
        ]
        incompatible = any(p.length_verdict == "incompatible" for p in pairs)
        return ("incompatible" if incompatible else "unknown"), reasons
    others = [m for i, m in enumerate(members) if i != best]
    if len(members) == 1:
        verdict: Verdict = "compatible"
    else:
        verdict = overall_verdict([m.verdict for m in others])
    reasons = [f"{m.name} vs {numbers.names[best]}: {r}" for m in others for r in m.reasons]
    return verdict, reasons
