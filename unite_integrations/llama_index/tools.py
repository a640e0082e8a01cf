"""``compatibility_function_tool()``: the compatibility check as a LlamaIndex ``FunctionTool``.

Its output's ``content`` is the verdict, reasons and recommendation, and ``raw_output`` the
``CompatibilityReport``. The check itself and its argument schema are framework-neutral
(``unite_integrations.tools``).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.tools import FunctionTool

from ..compat.report import CompatibilityReport, Thresholds
from ..tools import (
    TOOL_DESCRIPTION,
    TOOL_NAME,
    CalibrationTask,
    CompatibilityCheckInput,
    ToolSettings,
    run_compatibility_check,
)

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
    settings = ToolSettings(
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
        task: CalibrationTask | None = None,
        n_items: int = 20,
    ) -> CompatibilityReport:
        args = CompatibilityCheckInput(members=members, scores=scores, task=task, n_items=n_items)
        return run_compatibility_check(args, settings)

    def as_text(report: Any) -> Any:
        return report.summary() if isinstance(report, CompatibilityReport) else None

    return FunctionTool.from_defaults(
        fn=unite_compatibility_check,
        name=TOOL_NAME,
        description=TOOL_DESCRIPTION,
        fn_schema=CompatibilityCheckInput,
        callback=as_text,
    )
