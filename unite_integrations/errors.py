"""One exception hierarchy for everything the package raises on purpose.

    UniteError
    ├── ConfigError            bad options: top_k < 1, negative or all-zero weights, bad stop ...
    ├── ModelLoadError         unknown alias, missing path, unreadable checkpoint, unavailable device
    ├── InputError             empty prompt list, empty conversation, unknown message role
    ├── ContextWindowError     a prompt that does not fit a member's context window
    ├── TokenizerError         a tokenizer the ensemble cannot represent exactly (no byte coverage)
    ├── OverloadedError        the engine's queue is full: retry later (a server answers 429/503)
    ├── MemberUnavailableError a member's remote worker (Ray actor) died or did not answer in time
    └── EngineClosedError      the engine was closed (``close()``, or the interpreter is exiting)

Every message names the member concerned (where there is one) and what to do about it, because a
user who sees these errors usually cannot read the engine to find out. Where the check knows which
field of a request is wrong, the error carries it as ``param`` in OpenAI's spelling
(``"tools[0].function.parameters"``); the server reports it as the error body's ``param``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = [
    "ConfigError",
    "ContextWindowError",
    "EngineClosedError",
    "InputError",
    "MemberUnavailableError",
    "ModelLoadError",
    "OverloadedError",
    "TokenizerError",
    "UniteError",
    "about",
]


class UniteError(Exception):
    """Base class of every error unite-integrations raises on purpose.

    ``param``: the request field the error is about, where the check knows it (else ``None``).
    """

    param: str | None = None

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        if param is not None:  # an instance attribute: it survives pickling (Ray), as __dict__
            self.param = param


class ConfigError(UniteError, ValueError):
    """An option or member specification is invalid; the message says which value to change."""


class ModelLoadError(UniteError):
    """A member could not be resolved or loaded (bad alias, missing path, device not available)."""


class InputError(UniteError, ValueError):
    """A call's input is unusable: no prompts, an empty conversation, an unknown message role."""


class ContextWindowError(UniteError, ValueError):
    """A prompt is longer than a member's context window allows."""


class TokenizerError(UniteError):
    """A member's tokenizer cannot encode arbitrary bytes, so the shared text cannot be mirrored."""


class OverloadedError(UniteError, RuntimeError):
    """The engine already holds as many waiting requests as it may; the call was not queued.

    Nothing was decoded: retry later, or raise the engine's ``max_queue``.
    """


class EngineClosedError(UniteError, RuntimeError):
    """The engine was closed (``close()``, leaving its ``with`` block, or interpreter exit), so
    the call was refused or stopped; build a new engine to go on."""


class MemberUnavailableError(UniteError, RuntimeError):
    """A member running remotely (a Ray actor) died or did not answer within its timeout.

    The requests decoding with it fail; the actor restarts (Ray ``max_restarts``) and the next
    request is served again. The message names the member.
    """


@contextlib.contextmanager
def about(param: str) -> Iterator[None]:
    """The ``UniteError``s raised inside are about the request field ``param`` unless they say
    which field (a more precise one) themselves: for checks that do not know what their value
    is called where it came from."""
    try:
        yield
    except UniteError as e:
        if e.param is None:
            e.param = param
        raise
