"""The options of one call (:class:`GenerationOptions`) and the stop-string rule.

Apart from :mod:`.config` because the two change for different reasons: a configuration says
which members an engine loads (and is the key it is shared under), options say how one call
decodes; every engine entry point and every front end builds options, few build members.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError
from .inputs import check_text
from .validation import Give, StrictModel, short_repr

__all__ = ["SEED_MAX", "GenerationOptions", "stop_strings"]

SEED_MAX = 2**64 - 1
"""The largest seed torch's generator takes (seeds are 0 .. 2**64 - 1)."""


class GenerationOptions(StrictModel):
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
                f"stop={short_repr(v)}: stop strings must be non-empty strings; give a string or "
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
        f"{field}={short_repr(value)}: give a string or a list of strings (stop strings)",
        param=field,
    )
