"""``compatibility_function_tool()``: the compatibility check as a LlamaIndex ``FunctionTool``.

Its output's ``content`` is the verdict, reasons and recommendation, and ``raw_output`` the
``CompatibilityReport``; the function's schema, the settings and the check are the neutral ones
of ``unite_integrations.tools``.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.tools import FunctionTool

from .. import tools as neutral
from ..compat.report import CompatibilityReport, Thresholds

__all__ = ["compatibility_function_tool"]


def compatibility_function_tool(
    *,
    max_items: int = 50,
    allow_measured: bool = True,
    thresholds: Thresholds | None = None,
    top_k: int = 10,
    device: str = "cpu",
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> FunctionTool:
    """The compatibility check as a LlamaIndex ``FunctionTool`` (needs ``llama-index-core``)."""
    settings = neutral.ToolSettings(
        max_items=max_items,
        allow_measured=allow_measured,
        thresholds=thresholds or Thresholds(),
        top_k=top_k,
        device=device,
        cache_dir=cache_dir,
        data_dir=data_dir,
    )

    def unite_compatibility_check(
        members: list[str],
        scores: dict[str, float] | None = None,
        task: neutral.CalibrationTask | None = None,
        n_items: int = 20,
    ) -> CompatibilityReport:
        args = neutral.CompatibilityCheckInput(
            members=members, scores=scores, task=task, n_items=n_items
        )
        return neutral.run_compatibility_check(args, settings)

    def as_text(report: Any) -> Any:
        return report.summary() if isinstance(report, CompatibilityReport) else None

    return FunctionTool.from_defaults(
        fn=unite_compatibility_check,
        name=neutral.TOOL_NAME,
        description=neutral.TOOL_DESCRIPTION,
        fn_schema=neutral.CompatibilityCheckInput,
        callback=as_text,
    )
