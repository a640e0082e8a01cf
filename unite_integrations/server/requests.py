"""A request to the chat and completions endpoints, before and while it is answered.

The checks every endpoint makes of its body (``check_common``; the Responses endpoint makes them
on the chat body it translates its own into), a chat body as the chat core's ``ChatRequest``
(``chat_request``, ``call_options``, ``to_message``), what the client asked to get back besides
the answer (``Wants``), and a client that leaves before its answer is ready
(``unless_disconnected``, ``ClientGone``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from starlette.requests import Request

from ..chat import (
    ChatOptions,
    ChatRequest,
    Message,
    ResponseFormat,
    make_message,
    make_tool_call,
    response_format,
    tool_choice,
    tool_names,
)
from ..errors import about
from .errors import APIError
from .metrics import Metrics
from .schemas import MAX_STOP, ChatCompletionRequest, CompletionRequest

__all__ = [
    "ClientGone",
    "Wants",
    "call_options",
    "chat_request",
    "check_common",
    "to_message",
    "unless_disconnected",
]

T = TypeVar("T")


class Wants:
    """What a request asked to get back besides the answer."""

    __slots__ = ("logprobs", "tokens", "top", "usage")

    def __init__(self, *, logprobs: bool, top: int, tokens: bool, usage: bool) -> None:
        self.logprobs = logprobs
        self.top = top  # top log-probabilities per token (``top_logprobs``, legacy ``logprobs``)
        self.tokens = tokens
        self.usage = usage


class ClientGone(Exception):
    """The client disconnected before its answer was ready (nobody reads the response)."""


def check_common(body: ChatCompletionRequest | CompletionRequest, model: str, window: int) -> None:
    """The checks every endpoint makes of a chat or completions body (the Responses endpoint's
    through the chat body it becomes): the model served, the OpenAI options the ensemble cannot
    honour, the number of stop strings, a token budget that fits the context ``window``."""
    if body.model is not None and body.model != model:
        raise APIError(
            404,
            f"the model {body.model!r} does not exist here: this server serves {model!r} "
            "(GET /v1/models lists it)",
            param="model",
            code="model_not_found",
        )
    for name in ("frequency_penalty", "presence_penalty", "logit_bias"):
        if getattr(body, name):
            raise APIError(
                400,
                f"{name} is not supported by the ensemble (its decoding rule has no "
                "penalties or biases); leave it out",
                param=name,
                code="unsupported_value",
            )
    if len(body.stops()) > MAX_STOP:
        raise APIError(400, f"at most {MAX_STOP} stop sequences are allowed", param="stop")
    budget = body.token_budget()
    if budget is not None and budget >= window:
        param = (
            "max_completion_tokens"
            if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens
            else "max_tokens"
        )
        raise APIError(
            400,
            f"{param}={budget} cannot fit: the ensemble's context window is {window} tokens "
            "(prompt and answer together); ask for fewer",
            param=param,
            code="invalid_value",
        )


def chat_request(body: ChatCompletionRequest, want: Wants) -> ChatRequest:
    """A chat body as the chat core's request (its messages, tools, tool choice, response
    format and options)."""
    messages = tuple(to_message(m, n) for n, m in enumerate(body.messages))
    tools = tuple(body.tools or ())
    names = tool_names(tools)  # a malformed tool's error names its field
    with about("tool_choice"):
        choice = tool_choice(body.tool_choice, names)
    with about("response_format"):
        fmt: ResponseFormat | None = response_format(body.response_format)
    return ChatRequest(
        messages=messages,
        options=call_options(body, want),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=fmt,
    )


def call_options(body: ChatCompletionRequest | CompletionRequest, want: Wants) -> ChatOptions:
    """A body's generation options as the chat core's (the core resolves and checks them)."""
    return ChatOptions(
        max_tokens=body.token_budget(),
        min_tokens=body.min_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        n=body.n,
        stop=tuple(body.stops()) if body.stop is not None else None,
        gate=body.unite.gate,
        token_provenance=want.logprobs or want.tokens,
        top_logprobs=want.top,
    )


async def unless_disconnected(request: Request, work: Awaitable[T], metrics: Metrics) -> T:
    """Await ``work``, cancelling it if the client disconnects first: the chat core then cancels
    the engine request, so an abandoned request stops decoding and frees its row. (Servers do
    not cancel a handler whose client left; streams are watched by Starlette itself.)"""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    metrics.disconnected()
    raise ClientGone


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def to_message(m: Any, n: int) -> Message:
    """An OpenAI message as the core's ``Message`` (text parts only)."""
    where = f"messages[{n}]"
    content = m.content
    if content is None:  # an assistant turn with tool calls only (the core says so otherwise)
        text: str | list[str] | None = None
    elif isinstance(content, str):
        text = content
    else:
        text = []
        for i, part in enumerate(content):
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                text.append(part["text"])
            elif part.get("type") == "text":
                raise APIError(
                    400,
                    f"{where}.content[{i}] is a text part whose 'text' is not a string: send "
                    "{'type': 'text', 'text': '...'}",
                    param=f"{where}.content[{i}].text",
                    code="invalid_type",
                )
            else:
                raise APIError(
                    400,
                    f"{where} has a {part.get('type')!r} content part; the ensemble's members "
                    "read text only",
                    param=f"{where}.content",
                )
    calls = []
    for i, call in enumerate(m.tool_calls or []):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            raise APIError(
                400,
                f"{where}.tool_calls[{i}] has no 'function' object: send "
                "{'type': 'function', 'function': {'name': ..., 'arguments': '...'}}",
                param=f"{where}.tool_calls[{i}].function",
            )
        at = f"{where}.tool_calls[{i}]"
        calls.append(make_tool_call(call.get("id"), fn.get("name"), fn.get("arguments"), at, at))
    return make_message(
        m.role,
        text,
        where=where,
        tool_calls=calls,
        tool_call_id=m.tool_call_id,
        name=m.name,
        param=where,
    )
