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
    """A body that does not fit the request model: 400 naming the first bad field."""
    first = error.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()[:5]
    )
    return APIError(400, f"invalid request: {problems}", param=param, code="invalid_body")


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
        return APIError(400, str(error), param="messages", code="context_length_exceeded")
    if isinstance(error, InputError):
        return APIError(400, str(error), param=_param(str(error)), code="invalid_input")
    if isinstance(error, ConfigError):
        return APIError(400, str(error), param=_param(str(error)), code="invalid_value")
    if isinstance(error, UniteError):
        return APIError(500, str(error), type="server_error", code="unite_error")
    return APIError(
        500, f"internal error: {type(error).__name__}: {error}", type="server_error", code=None
    )


#: The chat core's option names (in its messages) -> the request fields they come from.
_PARAMS = {
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "gate": "unite.gate",
    "stop": "stop",
    "tool_choice": "tool_choice",
    "tool": "tools",
    "response_format": "response_format",
    "role": "messages",
    "conversation": "messages",
}


def _param(message: str) -> str | None:
    """The request field a core error is about, from the first option name its message names."""
    found = [
        (m.start(), field)
        for name, field in _PARAMS.items()
        if (m := re.search(rf"(?<!\w){name}(?!\w)", message))
    ]
    return min(found)[1] if found else None
