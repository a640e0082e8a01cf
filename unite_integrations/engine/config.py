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

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

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

__all__ = [
    "EnsembleConfig",
    "GenerationOptions",
    "MemberSpec",
    "ensemble_config",
    "stop_strings",
]

DType = Literal["auto", "float32", "float16", "bfloat16"]

QUANTIZATIONS = ("int8", "int4")
"""The short quantization names a member takes (anything else is a transformers config)."""

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placement strategies, as ``from_pretrained(device_map=...)`` takes them."""

SEED_MAX = 2**64 - 1
"""The largest seed torch's generator takes (seeds are 0 .. 2**64 - 1)."""


@dataclass(frozen=True)
class Give:
    """A field's metadata (``Annotated[int, Give("an int >= 1")]``): what a valid value looks
    like, which an error about the field adds to pydantic's complaint (the fix, not only the
    fault). Written beside its field, so no list of field names repeats the model's."""

    hint: str


class _Config(BaseModel):
    """A pydantic model whose validation failures are the package's own ``ConfigError``, each
    carrying its field (``param``) and, where the field has one, its ``Give`` hint."""

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
            raise ConfigError(
                f"{name}={v!r} is a bool; give {cls.hint(name) or 'a number'}", param=name
            )
        if isinstance(v, numbers.Integral) and not isinstance(v, int):
            return int(v)
        if float in kinds and isinstance(v, numbers.Real) and not isinstance(v, (int, float)):
            return float(v)
        return v

    @classmethod
    def hint(cls, name: str) -> str | None:
        """What a valid value of field ``name`` looks like (its ``Give``), if it says."""
        field = cls.model_fields.get(name)
        gives = [m for m in field.metadata if isinstance(m, Give)] if field else []
        return gives[0].hint if gives else None


def _config_error(model: type[_Config], e: ValidationError) -> UniteError:
    """One readable error for all of pydantic's complaints: ``field=value: problem; give ...``.

    It carries the field of the first complaint as its ``param`` (pydantic's ``loc``, or the
    ``param`` our own validator gave), so no one has to find the field in the message."""
    problems = []
    params: list[str] = []
    for err in e.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):  # a lone surrogate: an input problem wherever it is
            return cause
        loc = [str(p) for p in err["loc"]]
        if isinstance(cause, UniteError):  # our own validators already say field and fix
            problems.append(str(cause))
            params += [p for p in (cause.param, loc[0] if loc else None) if p]
            continue
        field = ".".join(loc)
        params += loc[:1]
        if err["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields)
            problems.append(f"unknown option {field!r}; {model.__name__} takes {known}")
            continue
        given = _short(err["input"])
        hint = model.hint(loc[0]) if loc else None
        problems.append(f"{field}={given}: {err['msg']}" + (f"; give {hint}" if hint else ""))
    return ConfigError(
        f"invalid {model.__name__}: " + "; ".join(problems), param=params[0] if params else None
    )


class MemberSpec(_Config):
    """One ensemble member: where its weights come from and how it runs.

    ``source`` is a built-in alias (``smollm2-135m-instruct``, ``gemma-3-270m``), a local
    transformers directory, a ``.gguf`` file (converted once into the cache), or a hub id (only for
    users with network access).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    source: Annotated[
        str, Give("an alias, a local directory, a .gguf file or a hub id (a string)")
    ] = Field(description="Alias, local directory, .gguf file or hub id.")
    weight: Annotated[float, Give("a finite number >= 0")] = Field(
        default=1.0, allow_inf_nan=False, description="Relative weight in the average; >= 0."
    )
    device: Annotated[
        str,
        Give(
            "a torch device string such as 'cpu', 'cuda:0' or 'mps', or 'auto' (spread over "
            "the GPUs by accelerate)"
        ),
    ] = Field(
        default="cpu",
        description="torch device, e.g. 'cpu', 'cuda:0', 'mps'; 'auto': device_map='auto'.",
    )
    dtype: Annotated[DType, Give("one of 'auto', 'float32', 'float16', 'bfloat16'")] = Field(
        default="auto",
        description=(
            "Parameter dtype. 'auto': float32 on CPU; on a GPU the checkpoint's own half "
            "precision where it states one the device supports, else bfloat16 (float16 where "
            "the device lacks bfloat16). The union step is float32 whatever the members' dtype."
        ),
    )
    quantization: Annotated[
        str | None, Give("None, 'int8', 'int4', or a transformers quantization config")
    ] = Field(
        default=None,
        description=(
            "'int8' or 'int4' (bitsandbytes on CUDA, torchao where bitsandbytes is missing and "
            "on CPU for int8), or a transformers quantization config (kept as its JSON). "
            "Pre-quantized checkpoints (GPTQ, AWQ, ...) need nothing here."
        ),
    )
    device_map: Annotated[
        str | tuple[tuple[str, str | int], ...] | None,
        Give(
            "None, 'auto', 'balanced', 'balanced_low_0', 'sequential', or a dict of module "
            "name -> device ('cpu', 'cuda:1', or a GPU index)"
        ),
    ] = Field(
        default=None,
        description=(
            "accelerate's placement of the member's layers over several devices: a strategy "
            "('auto', 'balanced', ...) or module name -> device; the union step runs on the "
            "device of its first layers."
        ),
    )
    chat_template: Annotated[
        str | None, Give("a Jinja template string, or None for the tokenizer's")
    ] = Field(
        default=None,
        description="Jinja chat template overriding the tokenizer's (or giving a base model one).",
    )
    context_window: Annotated[int | None, Give("an int > 0, or None for the model's own")] = Field(
        default=None, gt=0, description="Override of the model's maximum sequence length."
    )
    name: Annotated[str | None, Give("a string, or None for the source's name")] = Field(
        default=None, description="Display name; defaults to the source."
    )
    placement: Annotated[
        Literal["local", "ray"], Give("'local' (this process) or 'ray' (a Ray actor)")
    ] = Field(
        default="local", description="'ray': the member runs in a Ray actor (engine/ray_members)."
    )
    num_gpus: Annotated[float, Give("a number >= 0 of GPUs the member's Ray actor reserves")] = (
        Field(default=0.0, ge=0.0, allow_inf_nan=False, description="GPUs its Ray actor reserves.")
    )
    resources: Annotated[
        tuple[tuple[str, float], ...],
        Give("a dict of Ray custom resource name -> amount, e.g. {'node_a': 1}"),
    ] = Field(default=(), description="Ray custom resources its actor needs (pins it to nodes).")

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

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization_json(cls, v: object) -> object:
        """A transformers quantization config (or a dict of one) as its JSON, so that the spec
        stays hashable and its JSON (the engine's sharing key) says everything."""
        to_dict = getattr(v, "to_dict", None)
        if callable(to_dict) and not isinstance(v, Mapping):
            v = to_dict()
        if isinstance(v, Mapping):
            return json.dumps(dict(v), sort_keys=True, default=str)
        return v

    @field_validator("quantization")
    @classmethod
    def _quantization_known(cls, v: str | None) -> str | None:
        if v is None or v in QUANTIZATIONS:
            return v
        try:
            parsed = json.loads(v)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict) or "quant_method" not in parsed:
            raise ConfigError(
                f"quantization={_short(v)} is not known; give None, 'int8', 'int4' or a "
                "transformers quantization config (e.g. BitsAndBytesConfig, TorchAoConfig)"
            )
        return v

    @field_validator("device_map", mode="before")
    @classmethod
    def _device_map_pairs(cls, v: object) -> object:
        if isinstance(v, Mapping):  # {module: device}, or [[module, device], ...] as JSON has it
            v = list(v.items())
        if isinstance(v, (list, tuple)) and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in v
        ):
            return tuple((p[0], p[1]) for p in v)
        return v

    @field_validator("device_map")
    @classmethod
    def _device_map_known(
        cls, v: str | tuple[tuple[str, str | int], ...] | None
    ) -> str | tuple[tuple[str, str | int], ...] | None:
        if isinstance(v, str) and v not in DEVICE_MAP_STRATEGIES:
            raise ConfigError(
                f"device_map={v!r} is not one of accelerate's strategies; give one of "
                f"{', '.join(DEVICE_MAP_STRATEGIES)}, or a dict of module name -> device"
            )
        if isinstance(v, tuple) and not v:
            raise ConfigError("device_map is empty; give None, a strategy or module -> device")
        return v

    @model_validator(mode="after")
    def _one_placement(self) -> MemberSpec:
        if self.device_map is not None and self.device not in ("cpu", "auto"):
            raise ConfigError(
                f"device={self.device!r} and device_map are both given; give one: device_map "
                "places every layer itself (leave device at its default)"
            )
        return self

    @property
    def placement_map(self) -> str | dict[str, str | int] | None:
        """What ``from_pretrained(device_map=...)`` gets: None for a member on one device."""
        if self.device_map is None:
            return "auto" if self.device == "auto" else None
        return self.device_map if isinstance(self.device_map, str) else dict(self.device_map)

    @property
    def gpus(self) -> float:
        """GPUs the member's Ray actor reserves: ``num_gpus`` where given, else one per GPU its
        explicit device map names (indices count from 0 in the actor), one for a member on a
        GPU or spread by a strategy, none on CPU."""
        if self.num_gpus:
            return self.num_gpus
        if isinstance(self.device_map, tuple):
            cuda = [_gpu_index(d) for _, d in self.device_map]
            named = [i for i in cuda if i is not None]
            return float(max(named) + 1) if named else 0.0
        if self.device_map is not None or self.device == "auto":
            return 1.0
        return 1.0 if self.device.startswith("cuda") else 0.0

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

    members: Annotated[
        tuple[MemberSpec, ...], Give("a non-empty list of aliases, paths or MemberSpec")
    ] = Field(description="Members; the first is the primary.")
    top_k: Annotated[int, Give("an int >= 1 (the paper uses 10)")] = Field(
        default=10, description="Candidates each member proposes per step."
    )
    retokenize_window: Annotated[int, Give("an int >= 1")] = Field(
        default=32,
        ge=1,
        description="Tokens re-tokenized at the tail when a member cannot append one token.",
    )
    prefix_cache: Annotated[
        int | str,
        Give(
            "'auto' (the default), a size per member such as '512MiB' or '10%' of the free memory, an int of ids, or 0 for none"
        ),
    ] = Field(
        default="auto",
        description=(
            "How much each member keeps of the KV-cache columns of earlier prompts and answers, "
            "for later prompts that begin alike (a system prompt, few-shot examples, a "
            "conversation's history): 'auto' (10% of the memory free on the member's device, "
            "at most 2 GiB), a size such as '512MiB', a share such as '5%', an int of ids, or "
            "0 for none."
        ),
    )
    cache_dir: Annotated[
        str | None, Give("a directory path (str), or None for the default cache")
    ] = Field(
        default=None, description="Where converted GGUF models and vocabulary maps are cached."
    )
    ray_address: Annotated[
        str | None, Give("None (start or join a local Ray), 'auto', 'local' or 'ray://host:port'")
    ] = Field(default=None, description="Ray cluster to join (ray.init's address); None: local.")

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: object) -> object:
        """``backend="ray"`` (the constructor's shorthand, and configs written before it was
        folded in) places every member on Ray: a member's ``placement`` is the one switch."""
        if not isinstance(data, Mapping) or "backend" not in data:
            return data
        data = dict(data)
        backend = data.pop("backend")
        placed = _placed(backend, member_specs(data["members"])) if "members" in data else None
        return data if placed is None else {**data, "members": placed}

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

    max_new_tokens: Annotated[int, Give("an int >= 1 (not a bool, float or string), e.g. 256")] = (
        Field(default=256, ge=1, description="Union steps at most.")
    )
    min_new_tokens: Annotated[int, Give("an int >= 0 and at most max_new_tokens")] = Field(
        default=0, ge=0, description="END cannot win before this many steps (as in generate)."
    )
    temperature: Annotated[float, Give("a finite number >= 0 (0 is greedy)")] = Field(
        default=0.0, ge=0.0, allow_inf_nan=False, description="0 is greedy."
    )
    top_p: Annotated[float, Give("a finite number in (0, 1]")] = Field(
        default=1.0, gt=0.0, le=1.0, allow_inf_nan=False, description="Nucleus mass over the union."
    )
    seed: Annotated[int | None, Give(f"None or an int from 0 to 2**64 - 1 ({SEED_MAX})")] = Field(
        default=None, ge=0, le=SEED_MAX, description="Seed for sampling; same seed, same text."
    )
    stop: Annotated[tuple[str, ...], Give("a string or a list of non-empty strings")] = Field(
        default=(), description="Strings that end generation (not emitted)."
    )
    gate: Annotated[float | None, Give("None (full UniTE) or a number in [0, 1], e.g. 0.9")] = (
        Field(
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
    )
    top_logprobs: Annotated[int, Give("an int from 0 to 20")] = Field(
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
        stops = stop_strings(v)
        if "" in stops:
            raise ConfigError(
                f"stop={_short(v)}: stop strings must be non-empty strings; give a string or "
                "a list of non-empty strings",
                param="stop",
            )
        return tuple(check_text(f"stop string {n}", s, "stop") for n, s in enumerate(stops))

    @model_validator(mode="after")
    def _min_within_max(self) -> GenerationOptions:
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"min_new_tokens={self.min_new_tokens} is more than max_new_tokens="
                f"{self.max_new_tokens}; lower min_new_tokens or raise max_new_tokens",
                param="min_new_tokens",
            )
        return self


def stop_strings(value: object, field: str = "stop") -> tuple[str, ...]:
    """The one stop-string rule of every front end: ``None`` is none, a bare string is *one*
    stop string (never a list of its characters), a list or tuple of strings is those strings;
    anything else is a ``ConfigError`` about ``field``."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ConfigError(
        f"{field}={_short(value)}: give a string or a list of strings (stop strings)", param=field
    )


MemberLike = str | os.PathLike[str] | MemberSpec | Mapping[str, Any]
"""A member as a caller may give it: alias or path, ``MemberSpec``, or a dict of its fields."""


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


def _placed(backend: object, specs: Sequence[MemberSpec]) -> list[MemberSpec]:
    """``backend``, the shorthand: "ray" places every member on Ray (``placement``, the one
    switch the engine reads); "local" leaves each member's placement as it is."""
    if backend not in ("local", "ray"):
        raise ConfigError(
            f"backend={_short(backend)}: give 'local' or 'ray' (every member in a Ray actor)",
            param="backend",
        )
    if backend == "local":
        return list(specs)
    return [s.model_copy(update={"placement": "ray"}) for s in specs]


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
    specs = _placed(backend, specs)
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
        ray_address=ray_address,
    )


def _gpu_index(device: str | int) -> int | None:
    """The GPU index a device-map entry names (an int, 'cuda', 'cuda:N'), or None (CPU, disk)."""
    if isinstance(device, int):
        return device
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fspath(value: object) -> Any:
    """A path as its string; anything else unchanged (for the field's own check to refuse)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value
