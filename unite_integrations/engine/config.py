"""Typed configuration: what a member is and how the ensemble combines members.

These are pydantic models so that LangChain and LlamaIndex adapters (themselves pydantic) can carry
them as fields, and so that a bad value fails when it is written, not deep inside a decode loop.
How they validate (strict numbers, a ``ConfigError`` naming the field and the fix) is
:mod:`.validation`'s, shared with the options of one call (:mod:`.generation_options`;
``GenerationOptions`` and ``stop_strings`` are importable from here too, as they always were).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import ConfigError
from .generation_options import SEED_MAX, GenerationOptions, stop_strings
from .inputs import check_text
from .prefix import check_size
from .validation import Give, StrictModel, short_repr

__all__ = [
    "SEED_MAX",
    "EnsembleConfig",
    "GenerationOptions",
    "MemberSpec",
    "check_seeds",
    "ensemble_config",
    "stop_strings",
]

DType = Literal["auto", "float32", "float16", "bfloat16"]

QUANTIZATIONS = ("int8", "int4")
"""The short quantization names a member takes (anything else is a transformers config)."""

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""accelerate's placement strategies, as ``from_pretrained(device_map=...)`` takes them."""


class MemberSpec(StrictModel):
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
                f"quantization={short_repr(v)} is not known; give None, 'int8', 'int4' or a "
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


class EnsembleConfig(StrictModel):
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
                f"seeds[{n}] is {short_repr(seed)}; each seed is None or an int from 0 to 2**64 - 1",
                param=f"seeds[{n}]",
            )
    return tuple(seeds)


def member_specs(members: object) -> list[MemberSpec]:
    """``members`` as a non-empty list of ``MemberSpec``; a ``ConfigError`` for anything else."""
    if isinstance(members, (str, os.PathLike, MemberSpec, Mapping)):
        members = [members]
    if not isinstance(members, (list, tuple)):
        raise ConfigError(
            f"members={short_repr(members)}: give a non-empty list of members (aliases such as "
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
                f"member {n} is {type(m).__name__} {short_repr(m)}; give an alias or path "
                "(a string) or a MemberSpec"
            )
    return specs


def _placed(backend: object, specs: Sequence[MemberSpec]) -> list[MemberSpec]:
    """``backend``, the shorthand: "ray" places every member on Ray (``placement``, the one
    switch the engine reads); "local" leaves each member's placement as it is."""
    if backend not in ("local", "ray"):
        raise ConfigError(
            f"backend={short_repr(backend)}: give 'local' or 'ray' (every member in a Ray actor)",
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
                f"weights={short_repr(weights)}: give a list of numbers, one per member, or None"
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


def _fspath(value: object) -> Any:
    """A path as its string; anything else unchanged (for the field's own check to refuse)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value
