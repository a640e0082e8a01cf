"""The compatibility check as a tool for agents and chains: the framework-neutral part.

The tool's name, description, argument schema (``CompatibilityCheckInput``), settings
(``ToolSettings``) and the check behind it (``run_compatibility_check``) live here; the
framework tools live with their adapters and are importable from here too:

* ``UniTECompatibilityTool`` (``unite_integrations.langchain.tools``): a LangChain ``BaseTool``.
* ``compatibility_function_tool()`` (``unite_integrations.llama_index.tools``): a LlamaIndex
  ``FunctionTool``.

LangChain and LlamaIndex are optional: this module imports neither; naming one of the two
framework tools imports its framework (and says what to install when it is missing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .compat.check import check_compatibility
from .compat.report import CompatibilityReport, Thresholds
from .errors import UniteError

if TYPE_CHECKING:
    from .langchain.tools import UniTECompatibilityTool
    from .llama_index.tools import compatibility_function_tool

__all__ = [
    "TOOL_DESCRIPTION",
    "TOOL_NAME",
    "CalibrationTask",
    "CompatibilityCheckInput",
    "ToolSettings",
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


class ToolSettings(BaseModel):
    """How a tool runs the check: its limits and where the members run."""

    max_items: int = Field(default=50, ge=1, description="Cap on calibration items per call.")
    allow_measured: bool = Field(
        default=True, description="Allow calls with a task (which generate); else quick only."
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    top_k: int = Field(default=10, ge=1)
    device: str = "cpu"
    cache_dir: str | None = None
    data_dir: str | None = None


def run_compatibility_check(
    args: CompatibilityCheckInput,
    settings: ToolSettings | None = None,
    *,
    progress: bool = False,
    **limits: Any,
) -> CompatibilityReport:
    """The check behind both tools, with the tool's limits applied (``settings``, or its
    fields as keyword arguments: ``max_items=``, ``allow_measured=``, ``top_k=`` ...)."""
    from .engine.config import MemberSpec

    s = settings or ToolSettings(**{k: v for k, v in limits.items() if v is not None})
    if args.task is not None and not s.allow_measured:
        raise UniteError("this tool is configured for quick checks only: omit 'task'")
    return check_compatibility(
        [MemberSpec(source=m, device=s.device) for m in args.members],
        mode="measured" if args.task else "quick",
        task=args.task,
        scores=args.scores,
        n_items=min(args.n_items, s.max_items),
        thresholds=s.thresholds,
        top_k=s.top_k,
        progress=progress,
        data_dir=s.data_dir,
        cache_dir=s.cache_dir,
    )


#: The framework tools, imported from their adapters on first access.
_LAZY = {
    "UniTECompatibilityTool": ("langchain", "langchain-core"),
    "compatibility_function_tool": ("llama_index", "llama-index-core"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        package, install = _LAZY[name]
        try:
            module = importlib.import_module(f".{package}.tools", __package__)
        except ImportError as e:
            raise ImportError(f"{name} needs {package}: pip install {install}") from e
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
