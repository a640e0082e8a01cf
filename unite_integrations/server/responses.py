"""OpenAI's Responses API, ``POST /v1/responses``, stateless (as vLLM's and Ollama's), on the chat core.

The endpoint is the chat endpoint behind another wire format: a Responses body is translated into
the chat endpoint's own typed body (``ChatCompletionRequest``: ``input`` items become messages,
``function_call`` / ``function_call_output`` items the assistant's tool calls and tool messages,
``instructions`` a system message first, ``text.format`` a ``response_format``, function tools the
chat spelling), which the server then checks and turns into a ``ChatRequest`` exactly as for
``/v1/chat/completions`` (``requests.check_common``, ``requests.chat_request``): one set of checks, option rules and
defaults, and the same ``ChatCore`` answers it. Its ``ChatResult`` / ``ChatChunk``s become a
``response`` object (``message`` and ``function_call`` output items, usage, the ``unite``
provenance extension) or the Responses stream of typed events.

What is the Responses API's own is here: the shape of its items, tools, tool choice and text
format (what the chat body cannot say is refused with a 400 naming the field: hosted tools,
non-text content, stored state), and the errors' field names: a check made on the chat body
names a chat field (``messages[2].tool_calls[0].function.arguments``, ``response_format``,
``max_completion_tokens``), which is renamed to the field the client sent (``input[3].arguments``,
``text.format``, ``max_output_tokens``).

Nothing is stored: ``store`` is answered ``false``; ``previous_response_id``, ``conversation``,
``background`` and stored ``prompt`` templates are refused, and the client sends the whole
conversation in ``input`` (the earlier output items included), as it does with chat messages.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..chat import ChatChunk, ChatRequest, ChatResult
from ..errors import InputError
from .answers import chat_logprobs, count_answers, extension
from .errors import APIError, from_exception
from .requests import ClientGone, Wants, chat_request, check_common, unless_disconnected
from .schemas import ChatCompletionRequest, UniteOptions

if TYPE_CHECKING:
    from .app import _Server

__all__ = ["LOGPROBS_INCLUDE", "ResponsesRequest", "TextConfig", "handle"]

#: The ``include`` entry that asks for each output text's log-probabilities.
LOGPROBS_INCLUDE = "message.output_text.logprobs"

#: Message roles of the Responses API (tool results are ``function_call_output`` items).
_ROLES = ("user", "system", "developer", "assistant")
#: Content part types whose ``text`` is read (anything else is not text: refused).
_TEXT_PARTS = ("input_text", "output_text")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # as the chat endpoint's bodies


class TextConfig(_Body):
    format: dict[str, Any] | None = None
    verbosity: str | None = None  # accepted; the members have no such control


class ResponsesRequest(_Body):
    """A ``POST /v1/responses`` body: shapes only, as ``schemas`` checks the chat body's (values
    are checked once translated, by the chat endpoint's checks and the chat core). Unknown fields
    are ignored (as vLLM does); ``reasoning``, ``include`` entries other than log-probabilities,
    ``metadata``, ``user``, ``service_tier`` and the like are accepted and change nothing."""

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: str | None = None
    # Stored state, which a stateless server has not: refused with a 400 saying so.
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None
    # The chat endpoint's options the Responses API lacks, read as there (extensions).
    seed: int | None = None
    stop: str | list[str] | None = None
    min_tokens: int | None = None
    unite: UniteOptions = Field(default_factory=UniteOptions)
    # Refused as on the chat endpoint when set.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


async def handle(server: _Server, request: Request) -> Response:
    """``POST /v1/responses``; any ``/v1/responses/{id}`` (retrieve, delete, cancel, input items)
    is a 404 saying that nothing is stored."""
    response_id = request.path_params.get("response_id")
    if response_id is not None:
        raise APIError(
            404,
            f"no response {response_id!r} is stored here: this server is stateless (it answers "
            "with store=false and keeps nothing); keep the response you got",
            param="response_id",
            code="not_found",
            type="not_found",
        )
    body: ResponsesRequest = await server.read_body(request, ResponsesRequest)
    turns = _Conversation()
    try:
        chat_body, want = _translate(body, turns)
        check_common(chat_body, server.model, server.engine.context_window)
        chat = chat_request(chat_body, want)
        if body.stream:
            return await _stream(server, request, body, chat, want, turns)
        result = await _await(server, request, server.core.ainvoke(chat))
    except Exception as e:
        renamed = _renamed(e, turns)
        if renamed is e:
            raise
        raise renamed from e
    count_answers(server.metrics, [result])
    return JSONResponse(_response(server, body, result, want, _Ids.fresh(result)))


# -- Responses body -> the chat endpoint's body ---------------------------------------------------


@dataclass
class _Origin:
    """Where one chat message came from: the Responses field its errors are about (``base``),
    each tool call's item (``calls``) and the fields renamed on the way (``fields``; ``""``: the
    field is the base itself)."""

    base: str
    calls: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Conversation:
    """The chat messages a Responses ``input`` becomes, each with its origin."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    origins: list[_Origin] = field(default_factory=list)

    def add(self, message: dict[str, Any], origin: _Origin) -> None:
        self.messages.append(message)
        self.origins.append(origin)


def _translate(body: ResponsesRequest, turns: _Conversation) -> tuple[ChatCompletionRequest, Wants]:
    """The chat endpoint's body for a Responses body (and what to send back besides the
    answer), after refusing what a stateless server cannot honour."""
    _refuse_state(body)
    if body.truncation not in (None, "disabled"):
        raise APIError(
            400,
            f"truncation={body.truncation!r} is not supported: the server never drops turns of "
            "the conversation; send 'disabled' (or leave it out) and keep the input within the "
            "context window",
            param="truncation",
            code="unsupported_value",
        )
    if body.instructions is not None:
        turns.add({"role": "system", "content": body.instructions}, _Origin("instructions"))
    if isinstance(body.input, str):
        turns.add({"role": "user", "content": body.input}, _Origin("input", fields={"content": ""}))
    else:
        _items(body.input, turns)
    logprobs = LOGPROBS_INCLUDE in (body.include or ())
    want = Wants(
        logprobs=logprobs,
        top=(body.top_logprobs or 0) if logprobs else 0,
        tokens=body.unite.token_provenance,
        usage=True,
    )
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": turns.messages,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "seed": body.seed,
        "stop": body.stop,
        "min_tokens": body.min_tokens,
        "unite": body.unite,
        "frequency_penalty": body.frequency_penalty,
        "presence_penalty": body.presence_penalty,
        "logit_bias": body.logit_bias,
        "tools": _tools(body.tools) if body.tools is not None else None,
        "tool_choice": _tool_choice(body.tool_choice),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _format(body.text.format if body.text else None),
    }
    return ChatCompletionRequest(**fields), want


def _refuse_state(body: ResponsesRequest) -> None:
    stateless = (
        "this server is stateless: it stores no responses or conversations (it answers with "
        "store=false); send the whole conversation in 'input' instead (the earlier input and "
        "output items, then the new ones)"
    )
    for name, value in (
        ("previous_response_id", body.previous_response_id),
        ("conversation", body.conversation),
    ):
        if value is not None:
            raise APIError(
                400, f"{name} is not supported: {stateless}", param=name, code="unsupported_value"
            )
    if body.background:
        raise APIError(
            400,
            "background=true is not supported: a background response is stored to be fetched "
            f"later, and {stateless}; stream the response (stream=true) instead",
            param="background",
            code="unsupported_value",
        )
    if body.prompt is not None:
        raise APIError(
            400,
            "prompt (a stored prompt template) is not supported: this server stores no prompts; "
            "send the text as 'instructions' and 'input'",
            param="prompt",
            code="unsupported_value",
        )


def _items(items: Sequence[Mapping[str, Any]], turns: _Conversation) -> None:
    """Input items as chat messages: message items one each; ``function_call`` items join the
    assistant turn before them (or start one); ``function_call_output`` items are tool messages;
    ``reasoning`` items (another model's thoughts: the members have none) are left out."""
    names: dict[str, str] = {}  # call id -> tool name, for the tool messages
    last_assistant: dict[str, Any] | None = None  # the turn a following call joins
    for i, item in enumerate(items):
        at = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            message = _message_item(item, at)
            turns.add(message, _Origin(at))
            last_assistant = message if message["role"] == "assistant" else None
        elif kind == "function_call":
            call_id = _call_id(item, at)
            name = item.get("name")
            if isinstance(name, str):
                names[call_id] = name
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": item.get("arguments")},
            }
            if last_assistant is None:
                last_assistant = {"role": "assistant", "content": None, "tool_calls": []}
                turns.add(last_assistant, _Origin(at))
            last_assistant.setdefault("tool_calls", []).append(call)
            turns.origins[-1].calls.append(at)
        elif kind == "function_call_output":
            call_id = _call_id(item, at)
            output = item.get("output")
            turns.add(
                {
                    "role": "tool",
                    "content": _text_parts(output, f"{at}.output") if output is not None else None,
                    "tool_call_id": call_id,
                    "name": names.get(call_id),
                },
                _Origin(at, fields={"content": "output", "tool_call_id": "call_id"}),
            )
            last_assistant = None
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise APIError(
                400,
                f"{at} is an item_reference: this server is stateless and stores no items to "
                "refer to; send the item itself",
                param=at,
                code="unsupported_value",
            )
        else:
            raise APIError(
                400,
                f"{at} is a {kind!r} item: the ensemble reads message, function_call and "
                "function_call_output items (it runs no hosted tools)",
                param=f"{at}.type",
                code="unsupported_value",
            )


def _message_item(item: Mapping[str, Any], at: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InputError(
            f"{at} has role {role!r}: a message item's role is {', '.join(_ROLES)} (tool results "
            "are function_call_output items)",
            param=f"{at}.role",
        )
    content = item.get("content")
    if content is not None and not isinstance(content, str):
        content = _text_parts(content, f"{at}.content")
    return {"role": role, "content": content}


def _text_parts(content: object, at: str) -> Any:
    """Content as the chat body's text parts (a string stays one); a part that is not text is
    refused here, naming it (``input[0].content[1]``): the members read text only."""
    if isinstance(content, str) or not isinstance(content, list):
        return content  # not a list: the chat body's own check names the field
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in _TEXT_PARTS:
            raise APIError(
                400,
                f"{at}[{j}] is a {kind!r} content part; the ensemble's members read text only "
                f"({' or '.join(_TEXT_PARTS)} parts)",
                param=f"{at}[{j}]",
                code="unsupported_value",
            )
        parts.append({"type": "text", "text": part.get("text")})
    return parts


def _call_id(item: Mapping[str, Any], at: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise APIError(
            400,
            f"{at} ({item.get('type')}) needs a call_id (a non-empty string): it links a call "
            "to its output",
            param=f"{at}.call_id",
            code="missing_required_parameter" if call_id is None else "invalid_value",
        )
    return call_id


def _tools(tools: Sequence[Any]) -> list[Any]:
    """Responses function tools in the chat spelling (``{"type": "function", "function":
    {...}}``); hosted tools are refused. A tool that is not a dict goes on as it is, for the
    core's check of tools to name."""
    out: list[Any] = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            out.append(tool)
            continue
        kind = tool.get("type")
        if kind != "function":
            raise APIError(
                400,
                f"tools[{i}] is a {kind!r} tool: the ensemble calls function tools only "
                "({'type': 'function', 'name': ..., 'parameters': {...}}); it runs no hosted "
                "tools (web or file search, code interpreter, MCP, computer use ...)",
                param=f"tools[{i}].type",
                code="unsupported_value",
            )
        keys = ("name", "description", "parameters", "strict")
        out.append({"type": "function", "function": {k: tool[k] for k in keys if k in tool}})
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``auto``, ``none``, ``required`` and ``{"type": "function", "name": ...}`` as they are
    (the chat core reads them); a hosted tool or an ``allowed_tools`` list is refused."""
    if isinstance(choice, dict) and choice.get("type", "function") != "function":
        raise APIError(
            400,
            f"tool_choice of type {choice.get('type')!r} is not supported: give 'auto', 'none', "
            "'required' or {'type': 'function', 'name': ...}",
            param="tool_choice",
            code="unsupported_value",
        )
    return choice


def _format(fmt: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``text.format`` as the chat body's ``response_format``."""
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        if "schema" not in fmt:
            raise APIError(
                400,
                "Missing required parameter: 'text.format.schema'.",
                param="text.format.schema",
                code="missing_required_parameter",
            )
        keys = ("name", "schema", "strict", "description")
        return {"type": kind, "json_schema": {k: fmt[k] for k in keys if k in fmt}}
    raise APIError(
        400,
        f"text.format has type {kind!r}; give 'text', 'json_object' or 'json_schema' (with a "
        "'schema')",
        param="text.format.type",
        code="invalid_value",
    )


# -- errors: the chat body's field names -> the Responses body's ---------------------------------

_MESSAGE_FIELD = re.compile(
    r"\bmessages\[(\d+)\](?:\.tool_calls\[(\d+)\](?:\.function)?)?(?:\.([A-Za-z_]+))?"
)
_RENAMES = (
    (re.compile(r"\bmessages\b"), "input"),
    (re.compile(r"\bmax_completion_tokens\b"), "max_output_tokens"),
    (re.compile(r"\bresponse_format(\.json_schema)?"), "text.format"),
    (re.compile(r"\btools\[(\d+)\]\.function\b"), r"tools[\1]"),
)


def _renamed(error: BaseException, turns: _Conversation) -> BaseException:
    """An error in the Responses body's words: the field (``param``) and the message name what the
    client sent, not the chat body it was translated into. Errors that are not the request's
    (a client gone, a 5xx) pass as they are."""
    if isinstance(error, ClientGone):
        return error
    api = from_exception(error)
    if api.status >= 500:
        return api
    param = _rename(api.param, turns) if api.param else None
    if param == "max_tokens":  # the core's name for the budget (``max_new_tokens``)
        param = "max_output_tokens"
    return APIError(
        api.status,
        _rename(api.message, turns),
        type=api.type,
        param=param,
        code=api.code,
    )


def _rename(text: str, turns: _Conversation) -> str:
    def message_field(m: re.Match[str]) -> str:
        n, call, name = int(m.group(1)), m.group(2), m.group(3)
        if n >= len(turns.origins):
            return m.group(0)
        origin = turns.origins[n]
        if call is not None and int(call) < len(origin.calls):
            base, name = origin.calls[int(call)], {"id": "call_id"}.get(name, name)
        else:
            base = origin.base
            name = origin.fields.get(name, name) if name else name
        return f"{base}.{name}" if name else base

    text = _MESSAGE_FIELD.sub(message_field, text)
    for pattern, new in _RENAMES:
        text = pattern.sub(new, text)
    return text


# -- the answer -> a response object ---------------------------------------------------------------


@dataclass
class _Ids:
    """The ids of a response and its output items (a stream gives them as items open)."""

    response: str
    message: str
    calls: list[str]

    @classmethod
    def fresh(cls, result: ChatResult | None = None) -> _Ids:
        calls = [_id("fc") for _ in (result.tool_calls if result else ())]
        return cls(_id("resp"), _id("msg"), calls)


def _response(
    server: _Server,
    body: ResponsesRequest,
    result: ChatResult | None,
    want: Wants,
    ids: _Ids,
    output: list[dict[str, Any]] | None = None,
    created: float | None = None,
) -> dict[str, Any]:
    """The ``response`` object: in progress (``result`` None), or the answer (its output items
    built from ``result``, or the ``output`` a stream gave)."""
    now = int(time.time())
    defaults = server.core.defaults
    out: dict[str, Any] = {
        "id": ids.response,
        "object": "response",
        "created_at": int(created) if created is not None else now,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": server.model,
        "output": [],
        "parallel_tool_calls": (
            defaults.parallel_tool_calls
            if body.parallel_tool_calls is None
            else body.parallel_tool_calls
        ),
        "previous_response_id": None,
        "reasoning": None,
        "store": False,  # stateless: nothing is kept, whatever the request's store says
        "temperature": defaults.temperature if body.temperature is None else body.temperature,
        "text": {"format": (body.text.format if body.text else None) or {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": list(body.tools or []),
        "top_p": defaults.top_p if body.top_p is None else body.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
        "metadata": dict(body.metadata or {}),
    }
    if result is None:
        return out
    incomplete = result.finish_reason == "length"
    out["status"] = "incomplete" if incomplete else "completed"
    if incomplete:
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    else:
        out["completed_at"] = now
    out["output"] = output if output is not None else _output(result, want, ids)
    out["usage"] = {
        "input_tokens": result.usage.input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": result.usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": result.usage.total_tokens,
    }
    out["unite"] = extension(result, want.tokens)
    return out


def _output(result: ChatResult, want: Wants, ids: _Ids) -> list[dict[str, Any]]:
    """The output items: a message with the text (unless the answer is calls only), then each
    call as a ``function_call`` item."""
    items: list[dict[str, Any]] = []
    if result.content or not result.tool_calls:
        items.append(
            _message(ids.message, result.content, _status(result), _logprobs(result, want))
        )
    for item_id, call in zip(ids.calls, result.tool_calls):
        arguments = json.dumps(call.arguments, ensure_ascii=False)
        items.append(_call(item_id, call.id, call.name, arguments, "completed"))
    return items


def _status(result: ChatResult) -> str:
    return "incomplete" if result.finish_reason == "length" else "completed"


def _logprobs(result: ChatResult, want: Wants) -> list[dict[str, Any]]:
    return list(chat_logprobs(result, want.top)["content"]) if want.logprobs else []


def _message(
    item_id: str, text: str | None, status: str, logprobs: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text, logprobs or [])]
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _call(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- streaming --------------------------------------------------------------------------------------


async def _await(server: _Server, request: Request, work: Any) -> Any:
    return await unless_disconnected(request, work, server.metrics)


async def _stream(
    server: _Server,
    request: Request,
    body: ResponsesRequest,
    chat_request: ChatRequest,
    want: Wants,
    turns: _Conversation,
) -> Response:
    """Server-sent events. As on the chat endpoint, the core's first chunk is awaited before
    the response starts, so a bad request (or an overloaded engine) is still an HTTP error."""
    chunks = await _await(server, request, server.core.astream(chat_request))
    events = _Events(server, body, want, turns)
    return StreamingResponse(
        events.run(chunks),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _Events:
    """The Responses event sequence for one streamed answer: ``response.created``,
    ``response.in_progress``; per text item ``response.output_item.added``,
    ``response.content_part.added``, ``response.output_text.delta``..., ``.output_text.done``,
    ``.content_part.done``, ``.output_item.done``; per call ``output_item.added``,
    ``function_call_arguments.delta`` / ``.done``, ``output_item.done``; then
    ``response.completed`` (or ``response.incomplete`` when the budget ran out) with usage."""

    def __init__(
        self, server: _Server, body: ResponsesRequest, want: Wants, turns: _Conversation
    ) -> None:
        self.server = server
        self.body = body
        self.want = want
        self.turns = turns
        self.ids = _Ids.fresh()
        self.created = time.time()
        self.sequence = 0
        self.output: list[dict[str, Any]] = []  # items done, in order
        self.text: str | None = None  # the open message item's text (None: none open)
        self.message_id = ""

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        payload = json.dumps(data, ensure_ascii=False)
        return f"event: {kind}\ndata: {payload}\n\n".encode()

    def snapshot(self, result: ChatResult | None = None) -> dict[str, Any]:
        output = list(self.output) if result is not None else None
        return _response(
            self.server, self.body, result, self.want, self.ids, output, created=self.created
        )

    async def run(self, chunks: Any) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield self.event("response.created", response=self.snapshot())
            yield self.event("response.in_progress", response=self.snapshot())
            async for chunk in chunks:
                for event in self.chunk(chunk):
                    yield event
                if chunk.result is not None:
                    result = chunk.result
                    for event in self.finish(result):
                        yield event
                    count_answers(self.server.metrics, [result])
                    finished = True
                    break
        except Exception as e:  # after the headers: the error goes out as events
            finished = True
            error = _renamed(e, self.turns)
            api = error if isinstance(error, APIError) else from_exception(error)
            yield self.event("error", code=api.code, message=api.message, param=api.param)
            failed = self.snapshot()
            failed["status"] = "failed"
            failed["error"] = {"code": api.code or "server_error", "message": api.message}
            yield self.event("response.failed", response=failed)
        finally:
            if not finished:
                self.server.metrics.disconnected()
            self.server.metrics.finished("responses", 200)
            await chunks.aclose()  # cancels the engine request if it is still running

    def chunk(self, chunk: ChatChunk) -> list[bytes]:
        out: list[bytes] = []
        if chunk.content:
            if self.text is None:
                out += self.open_message()
            self.text = (self.text or "") + chunk.content
            out.append(
                self.event(
                    "response.output_text.delta",
                    item_id=self.message_id,
                    output_index=len(self.output),
                    content_index=0,
                    delta=chunk.content,
                    logprobs=[],
                )
            )
        for call in chunk.tool_calls:
            out += self.close_message("completed", [])
            item_id, index = _id("fc"), len(self.output)
            self.ids.calls.append(item_id)
            added = _call(item_id, call.id, call.name, "", "in_progress")
            done = _call(item_id, call.id, call.name, call.arguments, "completed")
            out += [
                self.event("response.output_item.added", output_index=index, item=added),
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=call.arguments,
                ),
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    name=call.name,
                    arguments=call.arguments,
                ),
                self.event("response.output_item.done", output_index=index, item=done),
            ]
            self.output.append(done)
        return out

    def open_message(self) -> list[bytes]:
        # the first message keeps the response's message id; a later one (text after a call)
        # gets its own
        self.message_id = self.ids.message if not self.output else _id("msg")
        self.text = ""
        index = len(self.output)
        return [
            self.event(
                "response.output_item.added",
                output_index=index,
                item=_message(self.message_id, None, "in_progress"),
            ),
            self.event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=index,
                content_index=0,
                part=_text_part("", []),
            ),
        ]

    def close_message(self, status: str, logprobs: list[dict[str, Any]]) -> list[bytes]:
        if self.text is None:
            return []
        text, self.text = self.text, None
        index = len(self.output)
        part = _text_part(text, logprobs)
        item = {**_message(self.message_id, None, status), "content": [part]}
        self.output.append(item)
        where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
        return [
            self.event("response.output_text.done", **where, text=text, logprobs=logprobs),
            self.event("response.content_part.done", **where, part=part),
            self.event("response.output_item.done", output_index=index, item=item),
        ]

    def finish(self, result: ChatResult) -> list[bytes]:
        out: list[bytes] = []
        if self.text is None and not self.output:  # an empty answer is still one message
            out += self.open_message()
        out += self.close_message(_status(result), _logprobs(result, self.want))
        final = self.snapshot(result)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        out.append(self.event(kind, response=final))
        return out
