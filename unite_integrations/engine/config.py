"""Typed configuration: what a member is, how the ensemble combines members, how one call decodes.

These are pydantic models so that LangChain and LlamaIndex adapters (themselves pydantic) can carry
them as fields, and so that a bad value fails when it is written, not deep inside a decode loop.

Numbers are strict: an int field takes an int (a ``numpy`` integer too) but not a bool, a float
or a string (``max_new_tokens=True`` is an error, not 1); a float field takes any finite real
number but not a bool, a string, ``inf`` or ``nan``. Every failure is a ``ConfigError`` whose
message names the field, the value and what to give instead; a lone surrogate in a stop string
is an ``InputError``, as everywhere (see :mod:`.inputs`).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..errors import ConfigError, InputError, UniteError
from .inputs import check_text
from .prefix import check_size

__all__ = ["EnsembleConfig", "GenerationOptions", "MemberSpec", "check_seeds", "ensemble_config"]

DType = Literal["auto", "float32", "float16", "bfloat16"]

SEED_MAX = 2**64 - 1
"""The largest seed torch's generator takes (seeds are 0 .. 2**64 - 1)."""


class _Config(BaseModel):
    """A pydantic model whose validation failures are the package's own ``ConfigError``.

    ``_hints`` maps a field to what a valid value looks like; the message adds it to pydantic's
    complaint, so that it says the fix, not only the fault.
    """

    _hints: ClassVar[dict[str, str]] = {}

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(type(self), e) from None

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, v: object, info: ValidationInfo) -> object:
        """Numbers as the field's type asks: no bools, numpy scalars become Python numbers."""
        name = info.field_name or ""
        annotation = cls.model_fields[name].annotation
        kinds = set(get_args(annotation)) or {annotation}
        if not kinds & {int, float}:
            return v
        if isinstance(v, bool):
            raise ConfigError(f"{name}={v!r} is a bool; give {cls._hints.get(name, 'a number')}")
        if isinstance(v, numbers.Integral) and not isinstance(v, int):
            return int(v)
        if float in kinds and isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
            return float(v)
        return v


def _config_error(model: type[_Config], e: ValidationError) -> UniteError:
    """One readable error for all of pydantic's complaints: ``field=value: problem; give ...``."""
    problems = []
    for err in e.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):  # a lone surrogate: an input problem wherever it is
            return cause
        if isinstance(cause, UniteError):  # our own validators already say field and fix
            problems.append(str(cause))
            continue
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc)
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            problems.append(f"unknown option {field!r}; {model.__name__} takes {known}")
            continue
        given = _short(err["input"])
        hint = model._hints.get(loc[0]) if loc else None
        problems.append(f"{field}={given}: {err['msg']}" + (f"; give {hint}" if hint else ""))
    return ConfigError(f"invalid {model.__name__}: " + "; ".join(problems))


class MemberSpec(_Config):
    """One ensemble member: where its weights come from and how it runs.

    ``source`` is a built-in alias (``smollm2-135m-instruct``, ``gemma-3-270m``), a local
    transformers directory, a ``.gguf`` file (converted once into the cache), or a hub id (only for
    users with network access).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    _hints: ClassVar[dict[str, str]] = {
        "source": "an alias, a local directory, a .gguf file or a hub id (a string)",
        "weight": "a finite number >= 0",
        "device": "a torch device string such as 'cpu', 'cuda:0' or 'mps'",
        "dtype": "one of 'auto', 'float32', 'float16', 'bfloat16'",
        "chat_template": "a Jinja template string, or None for the tokenizer's",
        "context_window": "an int > 0, or None for the model's own",
        "name": "a string, or None for the source's name",
        "placement": "'local' (this process) or 'ray' (a Ray actor)",
        "num_gpus": "a number >= 0 of GPUs the member's Ray actor reserves",
        "resources": "a dict of Ray custom resource name -> amount, e.g. {'node_a': 1}",
    }

    source: str = Field(description="Alias, local directory, .gguf file or hub id.")
    weight: float = Field(
        default=1.0, allow_inf_nan=False, description="Relative weight in the average; >= 0."
    )
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
    placement: Literal["local", "ray"] = Field(
        default="local", description="'ray': the member runs in a Ray actor (engine/ray_members)."
    )
    num_gpus: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="GPUs its Ray actor reserves."
    )
    resources: tuple[tuple[str, float], ...] = Field(
        default=(), description="Ray custom resources its actor needs (pins it to nodes)."
    )

    @field_validator("resources", mode="before")
    @classmethod
    def _resource_pairs(cls, v: object) -> object:
        if isinstance(v, dict):  # {name: amount}, or [[name, amount], ...] as JSON writes it
            v = list(v.items())
        if isinstance(v, (list, tuple)) and all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and isinstance(p[1], (int, float))
            and not isinstance(p[1], bool)
            and p[1] >= 0
            for p in v
        ):
            return tuple(sorted((p[0], float(p[1])) for p in v))
        return v

    @field_validator("source", mode="before")
    @classmethod
    def _source_path(cls, v: object) -> object:
        return _fspath(v)

    @field_validator("weight")
    @classmethod
    def _weight_non_negative(cls, v: float) -> float:
        if not v >= 0:
            raise ConfigError(f"member weight must be a finite number >= 0, got {v}")
        return v

    @field_validator("source")
    @classmethod
    def _source_non_empty(cls, v: str) -> str:
        if not check_text("member source", v).strip():
            raise ConfigError(
                "member source is empty: give an alias, a directory, a .gguf or a hub id"
            )
        return v

    @field_validator("device", "chat_template", "name")
    @classmethod
    def _encodable(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_text(f"member {info.field_name}", v)

    @property
    def display_name(self) -> str:
        return self.name or Path(self.source).name or self.source


class EnsembleConfig(_Config):
    """The ensemble as a whole; its JSON is the key under which one engine instance is shared."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    _hints: ClassVar[dict[str, str]] = {
        "members": "a non-empty list of aliases, paths or MemberSpec",
        "top_k": "an int >= 1 (the paper uses 10)",
        "retokenize_window": "an int >= 1",
        "prefix_cache": (
            "'auto' (the default), a size per member such as '512MiB' or '10%' of the free "
            "memory, an int of ids, or 0 for none"
        ),
        "cache_dir": "a directory path (str), or None for the default cache",
        "backend": "'local' or 'ray' (every member in a Ray actor)",
        "ray_address": "None (start or join a local Ray), 'auto', 'local' or 'ray://host:port'",
    }

    members: tuple[MemberSpec, ...] = Field(description="Members; the first is the primary.")
    top_k: int = Field(default=10, description="Candidates each member proposes per step.")
    retokenize_window: int = Field(
        default=32,
        ge=1,
        description="Tokens re-tokenized at the tail when a member cannot append one token.",
    )
    prefix_cache: int | str = Field(
        default="auto",
        description=(
            "How much each member keeps of the KV-cache columns of earlier prompts and answers, "
            "for later prompts that begin alike (a system prompt, few-shot examples, a "
            "conversation's history): 'auto' (10% of the memory free on the member's device, "
            "at most 2 GiB), a size such as '512MiB', a share such as '5%', an int of ids, or "
            "0 for none."
        ),
    )
    cache_dir: str | None = Field(
        default=None, description="Where converted GGUF models and vocabulary maps are cached."
    )
    backend: Literal["local", "ray"] = Field(
        default="local", description="'ray' places every member in a Ray actor."
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join (ray.init's address); None: local."
    )

    @field_validator("members", mode="before")
    @classmethod
    def _coerce_members(cls, v: object) -> object:
        return tuple(member_specs(v))

    @field_validator("cache_dir", mode="before")
    @classmethod
    def _cache_path(cls, v: object) -> object:
        return _fspath(v)

    @field_validator("prefix_cache")
    @classmethod
    def _prefix_size(cls, v: int | str) -> int | str:
        problem = check_size(v)
        if problem is not None:
            raise ConfigError(f"prefix_cache={v!r}: {problem}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k_positive(cls, v: int) -> int:
        if v < 1:
            raise ConfigError(f"top_k must be >= 1 (the paper uses 10), got {v}")
        return v

    @model_validator(mode="after")
    def _check_members(self) -> EnsembleConfig:
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

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    _hints: ClassVar[dict[str, str]] = {
        "max_new_tokens": "an int >= 1 (not a bool, float or string), e.g. 256",
        "min_new_tokens": "an int >= 0 and at most max_new_tokens",
        "temperature": "a finite number >= 0 (0 is greedy)",
        "top_p": "a finite number in (0, 1]",
        "seed": f"None or an int from 0 to 2**64 - 1 ({SEED_MAX})",
        "stop": "a string or a list of non-empty strings",
        "gate": "None (full UniTE) or a number in [0, 1], e.g. 0.9",
        "top_logprobs": "an int from 0 to 20",
    }

    max_new_tokens: int = Field(default=256, ge=1, description="Union steps at most.")
    min_new_tokens: int = Field(
        default=0, ge=0, description="END cannot win before this many steps (as in generate)."
    )
    temperature: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="0 is greedy.")
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus mass over the union."
    )
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="Seed for sampling; same seed, same text."
    )
    stop: tuple[str, ...] = Field(
        default=(), description="Strings that end generation (not emitted)."
    )
    gate: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=(
            "Gated ensembling: where the primary member's top-1 probability over its own "
            "candidates is >= gate (and gate < 1), its token is taken without consulting the "
            "others. None (the default) and 1.0 are full UniTE."
        ),
    )
    top_logprobs: int = Field(
        default=0,
        ge=0,
        le=20,
        description=(
            "Also report, for every chosen token, this many most likely strings of the mixed "
            "distribution it was chosen from (``TokenProvenance.top``); 0: none, and no extra "
            "work or host transfer."
        ),
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
                raise ConfigError(
                    f"stop={_short(v)}: stop strings must be non-empty strings; give a string or "
                    "a list of non-empty strings"
                )
            return tuple(check_text(f"stop string {n}", s) for n, s in enumerate(v))
        return v

    @model_validator(mode="after")
    def _min_within_max(self) -> GenerationOptions:
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens={self.min_new_tokens} is more than max_new_tokens="
                f"{self.max_new_tokens}; lower min_new_tokens or raise max_new_tokens"
            )
        return self


MemberLike = str | os.PathLike[str] | MemberSpec | Mapping[str, Any]
"""A member as a caller may give it: alias or path, ``MemberSpec``, or a dict of its fields."""


def check_seeds(seeds: object, rows: int) -> tuple[int | None, ...] | None:
    """A call's per-row seeds (``UniTEEngine.submit(seeds=...)``), checked and copied: None, or
    a list or tuple of ``rows`` seeds, each None or an int from 0 to ``SEED_MAX``."""
    if seeds is None:
        return None
    if not isinstance(seeds, (list, tuple)):
        raise ConfigError(
            f"seeds is {type(seeds).__name__}; pass a list of one seed (or None) per prompt",
            param="seeds",
        )
    if len(seeds) != rows:
        raise ConfigError(
            f"seeds has {len(seeds)} entries for {rows} prompts: pass one seed (or None) per "
            "prompt",
            param="seeds",
        )
    for n, seed in enumerate(seeds):
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX
        ):
            raise ConfigError(
                f"seeds[{n}] is {_short(seed)}; each seed is None or an int from 0 to 2**64 - 1",
                param=f"seeds[{n}]",
            )
    return tuple(seeds)


def member_specs(members: object) -> list[MemberSpec]:
    """``members`` as a non-empty list of ``MemberSpec``; a ``ConfigError`` for anything else."""
    if isinstance(members, (str, os.PathLike, MemberSpec, Mapping)):
        members = [members]
    if not isinstance(members, (list, tuple)):
        raise ConfigError(
            f"members={_short(members)}: give a non-empty list of members (aliases such as "
            "'smollm2-135m-instruct', local directories, .gguf files or MemberSpec)"
        )
    if not members:
        raise ConfigError(
            "an ensemble needs at least one member: give a non-empty list of aliases, paths "
            "or MemberSpec"
        )
    specs = []
    for n, m in enumerate(members):
        if isinstance(m, MemberSpec):
            specs.append(m)
        elif isinstance(m, (str, os.PathLike)):
            specs.append(MemberSpec(source=_fspath(m)))
        elif isinstance(m, Mapping) and all(isinstance(k, str) for k in m):
            specs.append(MemberSpec(**m))
        else:
            raise ConfigError(
                f"member {n} is {type(m).__name__} {_short(m)}; give an alias or path "
                "(a string) or a MemberSpec"
            )
    return specs


def ensemble_config(
    members: Sequence[MemberLike] | MemberLike,
    *,
    top_k: int = 10,
    weights: Sequence[float] | None = None,
    retokenize_window: int = 32,
    cache_dir: str | Path | None = None,
    backend: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    prefix_cache: int | str = "auto",
) -> EnsembleConfig:
    """The configuration for these arguments; equal arguments give equal (shareable) configs."""
    specs = member_specs(members)
    if weights is not None:
        if not isinstance(weights, (list, tuple)):
            raise ConfigError(
                f"weights={_short(weights)}: give a list of numbers, one per member, or None"
            )
        if len(weights) != len(specs):
            raise ConfigError(
                f"got {len(weights)} weights for {len(specs)} members: give one per member"
            )
        specs = [MemberSpec(**{**s.model_dump(), "weight": w}) for s, w in zip(specs, weights)]
    return EnsembleConfig(
        members=tuple(specs),
        top_k=top_k,
        retokenize_window=retokenize_window,
        prefix_cache=prefix_cache,
        cache_dir=_fspath(cache_dir),
        backend=backend,
        ray_address=ray_address,
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fspath(value: object) -> Any:
    """A path as its string; anything else unchanged (for the field's own check to refuse)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value
