"""What ``unite eval`` reports: per system and data set, accuracy with its interval, lengths and
answer statistics, the ensemble against its best member paired on the items, and the machine;
printable as a table or a bar chart (pydantic models; running is in :mod:`.evaluate`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from ..engine.engine import UniTEEngine
from .formatting import pyplot, save_figure, text_table
from .options import Mode
from .resume import EvalSettings, PendingPair
from .stats import Interval, PairedComparison, wilson_interval

__all__ = [
    "ENSEMBLE",
    "AnswerMode",
    "DatasetResult",
    "EvalReport",
    "ItemRecord",
    "MachineInfo",
    "SystemResult",
]

#: The ensemble's name among the systems of a report (the members go by their own names).
ENSEMBLE = "ensemble"
AnswerMode = Literal["free", "constrained"]


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
        plt = pyplot()
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
        return save_figure(fig, path, dpi=120)


def _has(d: DatasetResult, system: str) -> bool:
    return any(r.system == system for r in d.results)
