"""The ensemble engine: torch + transformers only; knows nothing of LangChain or LlamaIndex."""

from .config import EnsembleConfig, GenerationOptions, MemberSpec
from .engine import UniTEEngine
from .results import GenerationResult, Provenance, StreamChunk, TokenProvenance, Usage

__all__ = [
    "EnsembleConfig",
    "GenerationOptions",
    "GenerationResult",
    "MemberSpec",
    "Provenance",
    "StreamChunk",
    "TokenProvenance",
    "UniTEEngine",
    "Usage",
]
