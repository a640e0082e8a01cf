"""unite-integrations: an ensemble of open LLMs used as one model (UniTE, union top-k ensembling).

The public surface is what ``__all__`` lists; everything else is private and may change.
"""

from typing import TYPE_CHECKING, Any

from .engine import (
    EnsembleConfig,
    GenerationOptions,
    GenerationResult,
    MemberSpec,
    Provenance,
    StreamChunk,
    TokenProvenance,
    UniTEEngine,
    Usage,
)
from .engine.registry import get_engine
from .errors import (
    ConfigError,
    ContextWindowError,
    EngineClosedError,
    InputError,
    ModelLoadError,
    OverloadedError,
    TokenizerError,
    UniteError,
)

if TYPE_CHECKING:
    from .compat import check_compatibility
    from .langchain import UniTEChatModel
    from .llama_index import UniTELLM

__version__ = "0.1.0"

# The adapters import LangChain / LlamaIndex, which are optional: load them on first access.
_LAZY = {
    "UniTEChatModel": ".langchain",
    "UniTELLM": ".llama_index",
    "check_compatibility": ".compat",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'unite_integrations' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "ContextWindowError",
    "EngineClosedError",
    "EnsembleConfig",
    "GenerationOptions",
    "GenerationResult",
    "InputError",
    "MemberSpec",
    "ModelLoadError",
    "OverloadedError",
    "Provenance",
    "StreamChunk",
    "TokenProvenance",
    "TokenizerError",
    "UniTEChatModel",
    "UniTEEngine",
    "UniTELLM",
    "UniteError",
    "Usage",
    "__version__",
    "check_compatibility",
    "get_engine",
]
