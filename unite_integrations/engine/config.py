"""Typed configuration: what a member is, how the ensemble combines members, how one call decodes.

These are pydantic models so that LangChain and LlamaIndex adapters (themselves pydantic) can carry
them as fields, and so that a bad value fails when it is written, not deep inside a decode loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError

__all__ = ["EnsembleConfig", "GenerationOptions", "MemberSpec", "ensemble_config"]

DType = Literal["auto", "float32", "float16", "bfloat16"]


class _Config(BaseModel):
    """A pydantic model whose validation failures are the package's own ``ConfigError``."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"invalid {type(self).__name__}: {e}") from e


class MemberSpec(_Config):
    """One ensemble member: where its weights come from and how it runs.

    ``source`` is a built-in alias (``smollm2-135m-instruct``, ``gemma-3-270m``), a local
    transformers directory, a ``.gguf`` file (converted once into the cache), or a hub id (only for
    users with network access).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="Alias, local directory, .gguf file or hub id.")
    weight: float = Field(default=1.0, description="Relative weight in the average; >= 0.")
    device: str = Field(default="cpu", description="torch device, e.g. 'cpu', 'cuda:0', 'mps'.")
    dtype: DType = Field(
        default="float32", description="Parameter dtype ('auto' keeps the file's)."
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template overriding the tokenizer's (or giving a base model one).",
    )
    context_window: int | None = Field(
        default=None, gt=0, description="Override of the model's maximum sequence length."
    )
    name: str | None = Field(default=None, description="Display name; defaults to the source.")

    @field_validator("weight")
    @classmethod
    def _weight_non_negative(cls, v: float) -> float:
        if not v >= 0 or v != v or v == float("inf"):
            raise ConfigError(f"member weight must be a finite number >= 0, got {v}")
        return v

    @field_validator("source")
    @classmethod
    def _source_non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ConfigError(
                "member source is empty: give an alias, a directory, a .gguf or a hub id"
            )
        return v

    @property
    def display_name(self) -> str:
        return self.name or Path(self.source).name or self.source


class EnsembleConfig(_Config):
    """The ensemble as a whole; its JSON is the key under which one engine instance is shared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    members: tuple[MemberSpec, ...] = Field(description="Members; the first is the primary.")
    top_k: int = Field(default=10, description="Candidates each member proposes per step.")
    retokenize_window: int = Field(
        default=32,
        ge=1,
        description="Tokens re-tokenized at the tail when a member cannot append one token.",
    )
    cache_dir: str | None = Field(
        default=None, description="Where converted GGUF models and vocabulary maps are cached."
    )

    @field_validator("members", mode="before")
    @classmethod
    def _coerce_members(cls, v: object) -> object:
        if isinstance(v, (str, MemberSpec, dict)):
            v = [v]
        if isinstance(v, (list, tuple)):
            return tuple(MemberSpec(source=m) if isinstance(m, str) else m for m in v)
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k_positive(cls, v: int) -> int:
        if v < 1:
            raise ConfigError(f"top_k must be >= 1 (the paper uses 10), got {v}")
        return v

    @model_validator(mode="after")
    def _check_members(self) -> EnsembleConfig:
        if not self.members:
            raise ConfigError("an ensemble needs at least one member")
        if sum(m.weight for m in self.members) <= 0:
            raise ConfigError(
                "member weights are all zero: give at least one member a positive weight"
            )
        return self

    @property
    def weights(self) -> list[float]:
        total = sum(m.weight for m in self.members)
        return [m.weight / total for m in self.members]


class GenerationOptions(_Config):
    """Options of one call; every engine entry point takes them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(default=256, ge=1, description="Union steps at most.")
    min_new_tokens: int = Field(
        default=0, ge=0, description="END cannot win before this many steps (as in generate)."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus mass over the union.")
    seed: int | None = Field(default=None, description="Seed for sampling; same seed, same text.")
    stop: tuple[str, ...] = Field(
        default=(), description="Strings that end generation (not emitted)."
    )

    @field_validator("stop", mode="before")
    @classmethod
    def _coerce_stop(cls, v: object) -> object:
        if v is None:
            return ()
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            if any(not isinstance(s, str) or s == "" for s in v):
                raise ConfigError("stop strings must be non-empty strings")
            return tuple(v)
        return v


def ensemble_config(
    members: Sequence[str | MemberSpec] | str | MemberSpec,
    *,
    top_k: int = 10,
    weights: Sequence[float] | None = None,
    retokenize_window: int = 32,
    cache_dir: str | Path | None = None,
) -> EnsembleConfig:
    """The configuration for these arguments; equal arguments give equal (shareable) configs."""
    given = [members] if isinstance(members, (str, MemberSpec)) else list(members)
    specs = [MemberSpec(source=m) if isinstance(m, str) else m for m in given]
    if weights is not None:
        if len(weights) != len(specs):
            raise ConfigError(
                f"got {len(weights)} weights for {len(specs)} members: give one per member"
            )
        specs = [MemberSpec(**{**s.model_dump(), "weight": w}) for s, w in zip(specs, weights)]
    return EnsembleConfig(
        members=tuple(specs),
        top_k=top_k,
        retokenize_window=retokenize_window,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
