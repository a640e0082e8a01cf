"""Option defaults and their resolution: one rule for every front end.

A front end's fields (``UniTEChatModel(max_tokens=...)``, ``UniTELLM(max_new_tokens=...)``) are
its ``ChatDefaults``; a call's options (``ChatOptions``) override them one by one. The rules:

* ``stop``: a bare string is one stop string (never a list of characters); a call's ``stop``
  *replaces* the default stop strings; forced tool calls and structured output ignore ``stop``,
  because their grammar decides where the output ends.
* ``parallel_tool_calls``: off unless asked for (small members tend to repeat a call until the
  token budget ends).
* ``token_provenance`` keeps each token's provenance in the result (``ChatResult.tokens``);
  ``top_logprobs`` > 0 asks the engine for that many alternatives per token and implies it.
* ``n`` choices (1..``MAX_CHOICES``): with a ``seed``, choice 0 samples with the seed itself
  and choice i > 0 with ``choice_seed(seed, i)``, a seed derived from both, so the whole answer
  is reproducible and its first choice is the ``n=1`` answer; without a seed each choice draws
  from a fresh generator of its own.
* a bad value is a ``ConfigError`` naming the option, raised before anything is decoded.
"""

from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, fields
from typing import Any

from ..engine.generation_options import GenerationOptions, stop_strings
from ..errors import ConfigError
from .types import ChatOptions

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_CHOICES",
    "OPTION_NAMES",
    "ChatDefaults",
    "chat_name",
    "choice_seed",
    "engine_name",
    "engine_options",
    "keeps_tokens",
    "n_choices",
    "no_bool_for_int",
    "stop_strings",
]

#: Tokens generated when neither the front end nor the call says otherwise.
DEFAULT_MAX_TOKENS = 256

#: Most choices one call may ask for (``n``): they are rows of one batch, decoded together.
MAX_CHOICES = 16


@dataclass(frozen=True)
class ChatDefaults:
    """A front end's defaults (its fields); every call starts from these."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    min_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    gate: float | None = None
    token_provenance: bool = False
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    parallel_tool_calls: bool = False
    n: int = 1
    max_json_string_length: int | None = 512
    """Longest string the grammar lets the members write in a call's arguments or a structured
    output, where the schema does not bound it itself; ``None``: unbounded."""

    @classmethod
    def from_fields(cls, owner: object, **renamed: str) -> ChatDefaults:
        """The defaults a front end's fields give: each attribute of ``owner`` named as a field
        here (``renamed`` maps the ones named otherwise, e.g. ``max_tokens="max_new_tokens"``);
        ``None`` where a value is needed keeps the default; ``stop`` as ``stop_strings`` reads
        it."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = renamed.get(f.name, f.name)
            if not hasattr(owner, name):
                continue
            value = getattr(owner, name)
            if value is None and f.name in _NEEDED:
                continue
            values[f.name] = stop_strings(value) if f.name == "stop" else value
        return cls(**values)


#: Defaults that must have a value (``None`` for them means "the default").
_NEEDED = frozenset(
    {
        "max_tokens",
        "min_tokens",
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "token_provenance",
        "top_logprobs",
        "n",
    }
)


def no_bool_for_int(value: object) -> object:
    """A front end's whole-number setting: ``True`` is refused (pydantic would read it as 1)."""
    if isinstance(value, bool):
        raise ConfigError(f"got {value!r} where a whole number is due; give an int")
    return value


def engine_options(
    defaults: ChatDefaults, options: ChatOptions, *, forced: bool = False
) -> GenerationOptions:
    """The engine's options for a call, validated once, here: a bad value is a ``ConfigError``
    whose ``param`` is the call's option (``ChatOptions``' name: ``max_tokens``, not the
    engine's ``max_new_tokens``).

    ``forced``: the output is a forced tool call or structured output, so ``stop`` is not applied.
    """
    values = {
        engine_name(f.name): _pick(getattr(options, f.name), getattr(defaults, f.name))
        for f in fields(ChatOptions)
        if f.name in OPTION_NAMES
    }
    if forced:
        values["stop"] = ()
    try:
        return GenerationOptions(**values)
    except ConfigError as e:
        e.param = chat_name(e.param) if e.param else None
        raise


def engine_name(option: str) -> str:
    """The engine's (``GenerationOptions``') name of a call option (``max_tokens`` ->
    ``max_new_tokens``)."""
    return _ENGINE_NAMES.get(option, option)


def chat_name(field: str) -> str:
    """A call option's name for a ``GenerationOptions`` field (``max_new_tokens`` ->
    ``max_tokens``): the name every front end's call and the OpenAI API use."""
    return _CHAT_NAMES.get(field, field)


#: The options whose call name is not the engine's field name; every other name is the same.
_ENGINE_NAMES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
_CHAT_NAMES = {v: k for k, v in _ENGINE_NAMES.items()}

#: The one list of generation options, in call spelling: ``GenerationOptions``' fields. Front
#: ends derive theirs from it (LangChain's call keywords, LlamaIndex's, the server's fields).
OPTION_NAMES: tuple[str, ...] = tuple(chat_name(f) for f in GenerationOptions.model_fields)


def keeps_tokens(defaults: ChatDefaults, options: ChatOptions) -> bool:
    """Whether a call keeps per-token provenance in its result (``token_provenance``, or top
    log-probabilities, which live in it); a ``ConfigError`` for a value that is not a bool."""
    keep = _pick(options.token_provenance, defaults.token_provenance)
    if not isinstance(keep, bool):
        raise ConfigError(
            f"token_provenance={keep!r}: give True or False (or None for the default)"
        )
    return keep or bool(_pick(options.top_logprobs, defaults.top_logprobs))


def n_choices(defaults: ChatDefaults, options: ChatOptions) -> int:
    """How many choices a call asks for (``n``): a whole number from 1 to ``MAX_CHOICES``, else
    a ``ConfigError`` naming ``n``."""
    n = _pick(options.n, defaults.n)
    if isinstance(n, numbers.Integral) and not isinstance(n, bool) and 1 <= int(n) <= MAX_CHOICES:
        return int(n)
    raise ConfigError(
        f"n={n!r}: give a whole number of choices from 1 to {MAX_CHOICES} (each is a row "
        "decoded beside the others; ask again for more)",
        param="n",
    )


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed choice ``choice`` of an ``n``-choice call samples with: the call's own for
    choice 0 (so it is the ``n=1`` answer), for the others one derived from (seed, choice) by a
    hash (BLAKE2b, 64 bits), the same on every machine and Python; ``None`` stays ``None`` (each
    choice draws from a fresh generator)."""
    if seed is None or choice == 0:
        return seed
    digest = hashlib.blake2b(f"unite-choice:{seed}:{choice}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")  # 0 .. 2**64 - 1: every seed the engine takes


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value
