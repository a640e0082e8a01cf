"""The compatibility check as a tool for agents and chains: LangChain and LlamaIndex.

* ``UniTECompatibilityTool``: a LangChain ``BaseTool`` (args schema ``CompatibilityCheckInput``).
  Its content is the verdict, the reasons and the recommendation in a few lines; with
  ``response_format="content_and_artifact"`` (the default) the full report, as a dict, is the
  artifact.
* ``compatibility_function_tool()``: the same check as a LlamaIndex ``FunctionTool``; its output's
  ``content`` is the same text and ``raw_output`` the ``CompatibilityReport``.

LangChain and LlamaIndex are optional: this module imports without LangChain (the tool class is
then missing and naming it says what to install), and LlamaIndex is imported only when the
function tool is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .compat.check import check_compatibility
from .compat.report import CompatibilityReport, Thresholds
from .errors import UniteError

if TYPE_CHECKING:
    from llama_index.core.tools import FunctionTool

__all__ = [
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "CompatibilityCheckInput",
    "UniTECompatibilityTool",
    "compatibility_function_tool",
    "run_compatibility_check",
]

TOOL_NAME = "unite_compatibility_check"
TOOL_DESCRIPTION = (
    "Check whether several open LLMs should be ensembled with UniTE (union top-k ensembling) and "
    "how. Gives a verdict (compatible, risky, incompatible, unknown) with the reasons in numbers: "
    "the performance gap to the best member (compatible within 10%, incompatible over 15%), the "
    "ratio of typical response lengths (incompatible over 2x) and vocabulary facts, plus the "
    "recommended members, primary and weights. Without a task it runs no generation and uses the "
    "scores you give; with a task it measures each member on a small calibration sample."
)

CalibrationTask = Literal[
    "multiple-choice", "short-answer", "math", "arc", "piqa", "mmlu", "gsm8k", "triviaqa", "nq"
]


class CompatibilityCheckInput(BaseModel):
    """Arguments of the compatibility check tool."""

    model_config = ConfigDict(extra="forbid")

    members: list[str] = Field(
        min_length=1,
        description="Models to consider ensembling: built-in aliases such as "
        "'smollm2-135m-instruct' and 'gemma-3-270m', local model directories, .gguf files or "
        "hub ids.",
    )
    scores: dict[str, float] | None = Field(
        default=None,
        description="Scores you already have, keyed by member (as given in members); any scale, "
        "higher is better. Omit if unknown.",
    )
    task: CalibrationTask | None = Field(
        default=None,
        description="Measure each member on a small sample of this task (takes a while: it "
        "generates). Omit for a quick check without generation.",
    )
    n_items: int = Field(
        default=20, ge=1, le=1000, description="Calibration items to measure when a task is given."
    )


def run_compatibility_check(
    args: CompatibilityCheckInput,
    *,
    max_items: int = 50,
    allow_measured: bool = True,
    thresholds: Thresholds | None = None,
    top_k: int = 10,
    device: str = "cpu",
    cache_dir: str | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> CompatibilityReport:
    """The check behind both tools, with the tool's limits applied."""
    from .engine.config import MemberSpec

    if args.task is not None and not allow_measured:
        raise UniteError("this tool is configured for quick checks only: omit 'task'")
    specs = [MemberSpec(source=s, device=device) for s in args.members]
    return check_compatibility(
        specs,
        mode="measured" if args.task else "quick",
        task=args.task,
        scores=args.scores,
        n_items=min(args.n_items, max_items),
        thresholds=thresholds,
        top_k=top_k,
        progress=progress,
        data_dir=data_dir,
        cache_dir=cache_dir,
    )


try:
    from langchain_core.callbacks import CallbackManagerForToolRun
    from langchain_core.tools import BaseTool, ToolException
except ImportError:  # pragma: no cover - LangChain is optional
    _LANGCHAIN = False
else:
    _LANGCHAIN = True

    class UniTECompatibilityTool(BaseTool):
        """LangChain tool: should these models be ensembled with UniTE, and how?

        >>> tool = UniTECompatibilityTool()
        >>> tool.invoke({"members": ["smollm2-135m-instruct", "gemma-3-270m"],
        ...              "scores": {"smollm2-135m-instruct": 0.31, "gemma-3-270m": 0.29}})
        """

        name: str = TOOL_NAME
        description: str = TOOL_DESCRIPTION
        args_schema: type[BaseModel] = CompatibilityCheckInput
        response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
        handle_tool_error: Any = True

        max_items: int = Field(default=50, ge=1, description="Cap on calibration items per call.")
        allow_measured: bool = Field(
            default=True, description="Allow calls with a task (which generate); else quick only."
        )
        thresholds: Thresholds = Field(default_factory=Thresholds)
        top_k: int = Field(default=10, ge=1)
        device: str = "cpu"
        cache_dir: str | None = None
        data_dir: str | None = None

        def _run(
            self,
            members: list[str],
            scores: dict[str, float] | None = None,
            task: CalibrationTask | None = None,
            n_items: int = 20,
            run_manager: CallbackManagerForToolRun | None = None,
        ) -> Any:
            args = CompatibilityCheckInput(
                members=members, scores=scores, task=task, n_items=n_items
            )
            try:
                report = run_compatibility_check(
                    args,
                    max_items=self.max_items,
                    allow_measured=self.allow_measured,
                    thresholds=self.thresholds,
                    top_k=self.top_k,
                    device=self.device,
                    cache_dir=self.cache_dir,
                    data_dir=self.data_dir,
                )
            except UniteError as e:
                raise ToolException(str(e)) from e
            if self.response_format == "content_and_artifact":
                return report.summary(), report.model_dump(mode="json")
            return report.summary()


def __getattr__(name: str) -> Any:
    if name == "UniTECompatibilityTool" and not _LANGCHAIN:
        raise ImportError("UniTECompatibilityTool needs LangChain: pip install langchain-core")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    """The compatibility check as a LlamaIndex ``FunctionTool`` (needs ``llama-index-core``).

    Calling it returns a ``ToolOutput`` whose ``content`` is the verdict, reasons and
    recommendation, and whose ``raw_output`` is the ``CompatibilityReport``.
    """
    try:
        from llama_index.core.tools import FunctionTool
    except ImportError as e:  # pragma: no cover - LlamaIndex is optional
        raise ImportError(
            "compatibility_function_tool needs LlamaIndex: pip install llama-index-core"
        ) from e

    def unite_compatibility_check(
        members: list[str],
        scores: dict[str, float] | None = None,
        task: CalibrationTask | None = None,
        n_items: int = 20,
    ) -> CompatibilityReport:
        args = CompatibilityCheckInput(members=members, scores=scores, task=task, n_items=n_items)
        return run_compatibility_check(
            args,
            max_items=max_items,
            allow_measured=allow_measured,
            thresholds=thresholds,
            top_k=top_k,
            device=device,
            cache_dir=cache_dir,
            data_dir=data_dir,
        )

    def as_text(report: Any) -> Any:
        return report.summary() if isinstance(report, CompatibilityReport) else None

    return FunctionTool.from_defaults(
        fn=unite_compatibility_check,
        name=TOOL_NAME,
        description=TOOL_DESCRIPTION,
        fn_schema=CompatibilityCheckInput,
        callback=as_text,
    )
