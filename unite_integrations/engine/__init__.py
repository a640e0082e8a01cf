"""The ensemble engine: torch + transformers only; knows nothing of LangChain or LlamaIndex."""

from .config import EnsembleConfig, MemberSpec
from .engine import UniTEEngine
from .generation_options import GenerationOptions
from .metrics import EngineMetrics
from .results import Candidate, GenerationResult, Provenance, StreamChunk, TokenProvenance, Usage
from .scheduler import Delta, Done, Request

__all__ = [
    "Candidate",
    "Delta",
    "Done",
    "EngineMetrics",
    "EnsembleConfig",
    "GenerationOptions",
    "GenerationResult",
    "MemberSpec",
    "Provenance",
    "Request",
    "StreamChunk",
    "TokenProvenance",
    "UniTEEngine",
    "Usage",
]
