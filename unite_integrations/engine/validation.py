"""How every configuration model validates: strictly, and failing with the package's own error.

:mod:`.config` (members, the ensemble) and :mod:`.generation_options` (one call) share this base,
so that both fail the same way and neither imports the other for it.

Numbers are strict: an int field takes an int (a ``numpy`` integer too) but not a bool, a float
or a string (``max_new_tokens=True`` is an error, not 1); a float field takes any finite real
number but not a bool, a string, ``inf`` or ``nan``. Every failure is a ``ConfigError`` whose
message names the field, the value and what to give instead (the field's :class:`Give`); a lone
surrogate in a string is an ``InputError``, as everywhere (see :mod:`.inputs`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError, ValidationInfo, field_validator

from ..errors import ConfigError, InputError, UniteError

__all__ = ["Give", "StrictModel", "short_repr"]


@dataclass(frozen=True)
class Give:
    """A field's metadata (``Annotated[int, Give("an int >= 1")]``): what a valid value looks
    like, which an error about the field adds to pydantic's complaint (the fix, not only the
    fault). Written beside its field, so no list of field names repeats the model's."""

    hint: str


class StrictModel(BaseModel):
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


def _config_error(model: type[StrictModel], e: ValidationError) -> UniteError:
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
        given = short_repr(err["input"])
        hint = model.hint(loc[0]) if loc else None
        problems.append(f"{field}={given}: {err['msg']}" + (f"; give {hint}" if hint else ""))
    return ConfigError(
        f"invalid {model.__name__}: " + "; ".join(problems), param=params[0] if params else None
    )


def short_repr(value: object) -> str:
    """``repr(value)``, cut to 60 characters: an error message quotes what it was given."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
