"""``UniTECompatibilityTool``: the compatibility check as a LangChain ``BaseTool``.

Its content is the verdict, the reasons and the recommendation in a few lines; with
``response_format="content_and_artifact"`` (the default) the full report, as a dict, is the
artifact. The check itself and its argument schema are framework-neutral
(``unite_integrations.tools``).
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from pydantic import BaseModel

from ..errors import UniteError
from ..tools import (
    TOOL_DESCRIPTION,
    TOOL_NAME,
    CalibrationTask,
    CompatibilityCheckInput,
    ToolSettings,
    run_compatibility_check,
)

__all__ = ["UniTECompatibilityTool"]


class UniTECompatibilityTool(BaseTool, ToolSettings):
    """LangChain tool: should these models be ensembled with UniTE, and how?

    Its settings (``max_items``, ``allow_measured``, ``thresholds``, ``top_k``, ``device``,
    ``cache_dir``, ``data_dir``) are ``ToolSettings``'.

    >>> tool = UniTECompatibilityTool()
    >>> tool.invoke({"members": ["smollm2-135m-instruct", "gemma-3-270m"],
    ...              "scores": {"smollm2-135m-instruct": 0.31, "gemma-3-270m": 0.29}})
    """

    name: str = TOOL_NAME
    description: str = TOOL_DESCRIPTION
    args_schema: type[BaseModel] = CompatibilityCheckInput
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: Any = True

    def _run(
        self,
        members: list[str],
        scores: dict[str, float] | None = None,
        task: CalibrationTask | None = None,
        n_items: int = 20,
        run_manager: CallbackManagerForToolRun | None = None,
    ) -> Any:
        args = CompatibilityCheckInput(members=members, scores=scores, task=task, n_items=n_items)
        settings = ToolSettings(**{k: getattr(self, k) for k in ToolSettings.model_fields})
        try:
            report = run_compatibility_check(args, settings)
        except UniteError as e:
            raise ToolException(str(e)) from e
        if self.response_format == "content_and_artifact":
            return report.summary(), report.model_dump(mode="json")
        return report.summary()
