"""unite-integrations: an ensemble of open LLMs used as one model (UniTE, union top-k ensembling).

The public surface is what ``__all__`` lists; everything else is private and may change.
"""

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
from .errors import (
    ConfigError,
    ContextWindowError,
    InputError,
    ModelLoadError,
    TokenizerError,
    UniteError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ContextWindowError",
    "EnsembleConfig",
    "GenerationOptions",
    "GenerationResult",
    "InputError",
    "MemberSpec",
    "ModelLoadError",
    "Provenance",
    "StreamChunk",
    "TokenProvenance",
    "TokenizerError",
    "UniTEEngine",
    "UniteError",
    "Usage",
    "__version__",
]
