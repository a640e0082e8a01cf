"""Every failure as OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``.

Clients (the ``openai`` package, LangChain, LlamaIndex) turn the status code into their own
exception classes (400 ``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``,
413, 429 ``RateLimitError``, 500/503), so the code matters as much as the message. The package's
typed errors map here: bad options and inputs are the client's fault (400), a prompt over the
context window is 400 with OpenAI's ``context_length_exceeded`` code, an overloaded engine is 429
(at once: nothing was queued) and a closed one (shutting down) 503.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from ..errors import (
    ConfigError,
    ContextWindowError,
    EngineClosedError,
    InputError,
    OverloadedError,
    UniteError,
)
from .schemas import UniteOptions

__all__ = ["APIError", "from_exception", "from_validation"]


class APIError(Exception):
    """An HTTP error with OpenAI's body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def from_validation(error: ValidationError) -> APIError:
    """A body that does not fit the request model: 400 naming the bad field in OpenAI's spelling
    (``messages[0].content``). A value of the wrong type (``max_tokens: "12"``) is OpenAI's
    ``invalid_type`` error: ``Invalid type for 'max_tokens': expected an integer, but got a
    string instead.``"""
    errors = error.errors()
    # A union (``stop``: a string or a list of strings) reports one error per alternative; the
    # one that got furthest into the value names the field best.
    where = [_where(e["loc"]) for e in errors]
    first = max(range(len(errors)), key=lambda i: (where[i].count(".") + where[i].count("["), -i))
    param = where[first] or None
    if errors[first]["type"] in _EXPECTED:
        expected = _alternatives(
            [_EXPECTED[e["type"]] for e, w in zip(errors, where) if w == where[first]]
        )
        message = (
            f"Invalid type for '{param or 'body'}': expected {expected}, but got "
            f"{_json_kind(errors[first]['input'])} instead."
        )
        return APIError(400, message, param=param, code="invalid_type")
    if errors[first]["type"] == "missing":
        return APIError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    problems = "; ".join(f"{w or 'body'}: {e['msg']}" for e, w in zip(errors[:5], where))
    return APIError(400, f"invalid request: {problems}", param=param, code="invalid_body")


#: pydantic's type errors -> what OpenAI's message says was expected.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "a boolean",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "an array",
}


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as OpenAI spells a field (``messages[0].content``), without the
    labels pydantic gives a union's alternatives (``str``, ``list[str]``, ``ChatMessage``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_LABEL.search(part):
            out += f".{part}" if out else part
    return out


_UNION_LABEL = re.compile(r"^(str|int|float|bool|none|[A-Z]\w*)$|\[")


def _alternatives(kinds: list[str]) -> str:
    kinds = list(dict.fromkeys(kinds))
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " or " + kinds[-1]


def _json_kind(value: object) -> str:
    """What a JSON value is, in OpenAI's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def from_exception(error: BaseException) -> APIError:
    """The HTTP error for an exception raised while serving a request."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValidationError):
        return from_validation(error)
    if isinstance(error, OverloadedError):
        return APIError(
            429, f"the ensemble is overloaded: {error}", type="server_overloaded", code="overloaded"
        )
    if isinstance(error, EngineClosedError):
        return APIError(
            503, f"the server is shutting down: {error}", type="server_error", code="shutting_down"
        )
    if isinstance(error, ContextWindowError):
        return APIError(
            400, str(error), param=error.param or "messages", code="context_length_exceeded"
        )
    if isinstance(error, InputError):
        return APIError(400, str(error), param=_body_field(error), code="invalid_input")
    if isinstance(error, ConfigError):
        return APIError(400, str(error), param=_body_field(error), code="invalid_value")
    if isinstance(error, UniteError):
        return APIError(500, str(error), type="server_error", code="unite_error")
    return APIError(
        500, f"internal error: {type(error).__name__}: {error}", type="server_error", code=None
    )


def _body_field(error: UniteError) -> str | None:
    """The request body's field an error is about (``error.param``, set where it was raised):
    a call option's name is its field's, but for the options in the ``unite`` object."""
    if error.param in _UNITE_OPTIONS:
        return f"unite.{error.param}"
    return error.param


#: The chat core's options the body carries in its ``unite`` extension object.
_UNITE_OPTIONS = frozenset(UniteOptions.model_fields)
