"""The compatibility report for a terminal: a summary (what a tool returns) and full tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .formatting import pct, ratio_text, text_table

if TYPE_CHECKING:
    from .report import CompatibilityReport

__all__ = ["report_summary", "report_table"]


def report_summary(self: CompatibilityReport) -> str:
    """A few lines: the verdict, its reasons and the recommendation (what a tool returns)."""
    rec = self.recommendation
    lines = [f"verdict: {self.verdict}"]
    lines += [f"- {r}" for r in self.reasons]
    head = "recommendation" if rec.ranked else "recommendation (unranked: measure first)"
    if rec.use_ensemble:
        w = ", ".join(f"{n} {rec.weights[n]:.2f}" for n in rec.members)
        lines.append(f"{head}: ensemble {w}; primary {rec.primary}")
    elif rec.ranked:
        lines.append(f"{head}: use {rec.primary} alone")
    else:
        lines.append(f"{head}: keep only {rec.primary}, the first member given")
    lines += [f"- excluded {n}: {why}" for n, why in rec.excluded.items()]
    lines += [f"- {n}" for n in rec.notes]
    return "\n".join(lines)


def report_table(self: CompatibilityReport) -> str:
    """A readable report: members, pairs (with vocabulary facts), verdict, recommendation."""
    head = f"compatibility check ({self.mode} mode"
    if self.task:
        head += f", task {self.task}, {self.n_items} items"
    head += f", {self.seconds:.1f} s)"
    rows = []
    for m in self.members:
        rows.append(
            [
                m.name + (" *" if m.is_primary else ""),
                "-"
                if m.score is None
                else f"{m.score:.3f}"
                + (
                    ""
                    if m.score_interval is None
                    else f" [{m.score_interval.low:.3f}, {m.score_interval.high:.3f}]"
                ),
                m.score_source or "-",
                "-" if m.gap_to_best is None else pct(m.gap_to_best),
                "-" if m.median_response_chars is None else f"{m.median_response_chars:.0f}",
                ratio_text(m.length_ratio_to_primary),
                "-" if m.vocab_size is None else f"{m.vocab_size:,}",
                m.verdict,
            ]
        )
    out = [
        head,
        "",
        text_table(
            [
                "member",
                "score [95% CI]",
                "from",
                "gap",
                "length (chars)",
                "vs primary",
                "vocab",
                "verdict",
            ],
            rows,
        ),
    ]
    if self.primary is not None:
        out.append("(* primary: the best member)")
    if self.ensemble is not None:
        e = self.ensemble
        ci = "" if e.interval is None else f" [{e.interval.low:.3f}, {e.interval.high:.3f}]"
        out.append(
            f"ensemble score {e.score:.3f}{ci} on {e.n_items} items "
            f"({'+' if e.gain_over_best >= 0 else ''}{e.gain_over_best:.3f} over the best member)"
        )
        if e.comparison is not None:
            out.append(f"ensemble vs {e.comparison.second}, paired: {e.comparison.text()}")
    prow = []
    for p in self.pairs:
        v = p.vocabulary
        prow.append(
            [
                f"{p.members[0]} + {p.members[1]}",
                "-" if p.gap is None else pct(p.gap),
                ratio_text(p.length_ratio),
                "-"
                if v is None or v.identical_word_share is None
                else f"{pct(v.identical_word_share)} of {v.words_compared}",
                "-"
                if v is None or v.topk_overlap is None
                else f"{pct(v.topk_overlap)} (top-1 {pct(v.top1_agreement or 0.0)})",
                p.verdict,
            ]
        )
    out += [
        "",
        text_table(["pair", "gap", "length ratio", "same words", "top-k overlap", "verdict"], prow),
        "",
        report_summary(self),
    ]
    return "\n".join(out)
