"""Formatting shared by the compatibility report and the evaluation: plain-text numbers and
tables, and the one way a chart is drawn (headless) and saved."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["num", "pct", "pyplot", "ratio_text", "save_figure", "text_table"]


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def ratio_text(r: float | None) -> str:
    return "-" if r is None else "inf" if math.isinf(r) else f"{r:.2f}x"


def num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width table (no dependencies), left-aligned, with a rule under the header."""
    cols = list(zip(*([list(headers)] + [list(r) for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([line, rule, *body])


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (charts are written to files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay ``fig`` out, write it to ``path`` (its folder made) and close it; the path."""
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    return out
