"""What every front end's settings share, so that an adapter only translates its framework.

An adapter (``UniTEChatModel``, ``UniTELLM``) is a pydantic model whose fields name the ensemble
(``members``, ``top_k``, ``weights``, ``cache_dir``, ``prefix_cache``) and the call defaults
(``ChatDefaults``). Here, once: how its fields are coerced (a bare member or stop string is one,
not a list of characters; no ``True`` where a whole number is due), the ``EnsembleConfig`` they
name, the checks every construction makes (a bad field is a ``ConfigError`` at once, not at the
first call), and a call's keyword options as the core's ``ChatOptions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..engine.config import EnsembleConfig, MemberSpec, ensemble_config
from ..engine.generation_options import stop_strings
from ..errors import ConfigError
from .options import ChatDefaults, engine_options, n_choices, no_bool_for_int
from .types import ChatOptions

__all__ = [
    "ENSEMBLE_FIELDS",
    "FIELD_DOCS",
    "call_options",
    "check_defaults",
    "coerce_fields",
    "constructed",
    "ensemble_of",
]

#: A front end's fields that name its ensemble (the key of its shared engine).
ENSEMBLE_FIELDS = ("members", "top_k", "weights", "cache_dir", "prefix_cache")

#: What the fields every front end shares mean (their ``Field`` descriptions), written once.
FIELD_DOCS = {
    "members": "The ensemble: built-in aliases ('smollm2-135m-instruct', 'gemma-3-270m'), local "
    "transformers directories, .gguf files, hub ids, or MemberSpec objects (weight, device, "
    "dtype, chat template, context window). The first member is the primary.",
    "top_k": "Candidates each member proposes per step (the paper uses 10).",
    "weights": "One weight per member in the average (normalised); None weighs them equally, "
    "or as their MemberSpec.weight say.",
    "cache_dir": "Where converted GGUF models and cross-vocabulary maps are cached (default: "
    "$UNITE_CACHE_DIR or the per-user cache directory).",
    "prefix_cache": "How much of earlier prompts' and answers' KV columns each member keeps, so "
    "a conversation's next turn and prompts sharing a system prompt run only what is new: "
    "'auto' (10% of the free memory on the member's device, at most 2 GiB), a size such as "
    "'512MiB' or '5%', an int of ids, or 0 for none.",
    "temperature": "Sampling temperature; 0 is greedy (deterministic).",
    "min_tokens": "Tokens to generate before the answer may end (as min_new_tokens in "
    "transformers); raise it for small members that tend to answer with nothing.",
    "top_p": "Nucleus sampling mass over the union (used when temperature > 0).",
    "seed": "Seed for sampling: the same seed gives the same text.",
    "gate": "Gated ensembling: where the primary member's top-1 probability is at least gate "
    "(and gate < 1), its token is taken without consulting the others (faster); None: full "
    "UniTE. A call's gate overrides it.",
    "stop": "Strings that end generation, of any length; never part of the output. A call's "
    "stop (a bare string is one stop string) replaces these. Not applied to forced tool calls "
    "and structured output, whose grammar decides where the output ends.",
    "max_json_string_length": "Longest string the grammar lets the members write inside a tool "
    "call's arguments or a structured output (unless the schema bounds it itself); keeps a "
    "small member from filling the whole token budget with one string. None: unbounded.",
}


def constructed(init: Callable[..., None], owner: str, data: Mapping[str, Any]) -> None:
    """Run a front end's pydantic ``__init__``: a field of the wrong type, bad members or bad
    options are a ``ConfigError`` naming the class, not the framework's ``ValidationError``."""
    from pydantic import ValidationError

    try:
        init(**data)
    except ValidationError as e:
        raise ConfigError(f"invalid {owner} settings: {e}") from e


def coerce_fields(values: dict[str, Any], whole: tuple[str, ...]) -> dict[str, Any]:
    """A front end's raw fields before pydantic reads them: ``whole`` numbers refuse ``True``
    (pydantic would take it as 1); one member or one stop string becomes a list of one."""
    for key in whole:
        no_bool_for_int(values.get(key))
    if isinstance(values.get("members"), (str, MemberSpec)):
        values = {**values, "members": [values["members"]]}
    if values.get("stop") is not None:
        values = {**values, "stop": list(stop_strings(values["stop"]))}
    return values


def ensemble_of(owner: object) -> EnsembleConfig:
    """The ensemble a front end's fields (``ENSEMBLE_FIELDS``) name; a ``ConfigError`` for bad
    members or weights."""
    members, top_k, weights, cache_dir, prefix_cache = (getattr(owner, f) for f in ENSEMBLE_FIELDS)
    return ensemble_config(
        members, top_k=top_k, weights=weights, cache_dir=cache_dir, prefix_cache=prefix_cache
    )


def check_defaults(owner: object, defaults: ChatDefaults) -> None:
    """Everything a front end's fields say, checked when it is built: the ensemble, and the
    call defaults as the engine will read them."""
    ensemble_of(owner)
    engine_options(defaults, ChatOptions())
    n_choices(defaults, ChatOptions())


def call_options(values: Mapping[str, Any], names: Mapping[str, str]) -> ChatOptions:
    """A call's keyword options as ``ChatOptions``: ``names`` maps each keyword the front end
    takes to the core's option (``{"max_new_tokens": "max_tokens", ...}``); the caller refused
    unknown keywords already."""
    return ChatOptions(**{names[k]: v for k, v in values.items() if k in names})
