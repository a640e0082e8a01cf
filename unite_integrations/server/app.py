"""The OpenAI-compatible HTTP front end: a Starlette app over the chat core.

A third thin front end, beside LangChain's ``UniTEChatModel`` and LlamaIndex's ``UniTELLM``: a
request body becomes a ``ChatRequest``, the ``ChatCore`` answers it (option resolution, tools,
structured output, tool-call parsing, usage and provenance all live there), and its
``ChatResult``/``ChatChunk``s become OpenAI's JSON and server-sent events. What is the server's
own: HTTP (body limits, the API key, status codes and OpenAI's error body), the wire format, the
``unite`` extension field with the ensemble's provenance, OpenAI's log-probability objects built
from the per-token provenance the core keeps on request, and ``/metrics``.

Concurrency comes from the engine: requests waiting at the same time are decoded together by its
scheduler. A request is checked before it waits for anything: its body, options, messages and
tools on the event loop, the engine's checks (prompt encoding, context window, grammar and token
budget) and its queueing in the chat core's pool of checking threads, which never wait for
decoding; so a malformed request is answered at once however busy the engine is. Only a queued
request gets a worker thread of its own to wait for its chunks (the core's bridge), so the event
loop never blocks. A client that disconnects closes its stream, which cancels its engine request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..chat import (
    ChatChunk,
    ChatCore,
    ChatDefaults,
    ChatOptions,
    ChatRequest,
    ChatResult,
    Message,
    ResponseFormat,
    engine_options,
    make_message,
    make_tool_call,
    response_format,
    tool_choice,
    tool_names,
)
from ..engine.engine import UniTEEngine
from ..engine.results import Candidate, TokenProvenance
from ..errors import about
from .errors import APIError, from_exception, from_validation
from .metrics import Metrics
from .schemas import MAX_STOP, ChatCompletionRequest, CompletionRequest

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

#: Largest request body accepted (413 beyond): a long conversation fits, a runaway upload not.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

_Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


#: OpenAI's log-probability for a token whose probability is 0 (or that the union did not hold).
FLOOR_LOGPROB = -9999.0

#: Why ``echo`` (the prompt's own log-probabilities) is refused, and what to do instead.
_NO_ECHO = (
    "echo=true (the prompt's tokens with their log-probabilities) is not supported: the "
    "ensemble's members split a text into different tokens, so a prompt or a continuation has "
    "no log-likelihood under the ensemble, and log-likelihood scoring (lm-evaluation-harness's "
    "multiple-choice and perplexity tasks) cannot run against it. Evaluate generation tasks "
    "(output_type: generate_until) here, and score multiple choice with `unite eval "
    "--constrained`, which decodes each answer under a grammar that allows only the option letters"
)
#: Why a prompt of token ids is refused.
_NO_TOKEN_IDS = (
    "the prompt is token ids: the ensemble's members have different vocabularies, so ids name "
    "no text; send the prompt as text (lm-evaluation-harness: tokenizer_backend=None, or "
    "tokenized_requests=False)"
)


def create_app(
    engine: UniTEEngine,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    defaults: ChatDefaults | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    close_engine: bool = False,
) -> Starlette:
    """The ASGI app serving ``engine`` (run it with uvicorn, or use ``serve``).

    Args:
        engine: the loaded ensemble.
        model_name: the id clients send as ``model`` (default: ``unite:`` and the members).
        api_key: when set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``
            (``/health`` and ``/metrics`` stay open, as in vLLM).
        defaults: option defaults for requests that leave an option out.
        max_body_bytes: larger bodies are refused with 413.
        close_engine: close the engine when the app shuts down (``serve`` does: the engine is
            its own); leave it open when the engine is shared with other code.
    """
    return _Server(engine, model_name, api_key, defaults, max_body_bytes, close_engine).app


class _Server:
    def __init__(
        self,
        engine: UniTEEngine,
        model_name: str | None,
        api_key: str | None,
        defaults: ChatDefaults | None,
        max_body_bytes: int,
        close_engine: bool,
    ) -> None:
        self.engine = engine
        self.close_engine = close_engine
        self.core = ChatCore(engine, defaults=defaults, model_name=model_name)
        engine_options(self.core.defaults, ChatOptions())  # bad defaults fail now, not per request
        self.model = self.core.model_name
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = Metrics()
        self.created = int(time.time())
        self.weights = list(engine.config.weights)
        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
            Route("/v1/models", self._guard("models", self.models), methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._guard("models", self.model_info)),
            Route(
                "/v1/chat/completions",
                self._guard("chat", self.chat),
                methods=["POST"],
            ),
            Route(
                "/v1/completions", self._guard("completions", self.completions), methods=["POST"]
            ),
            Route("/v1/responses", self._guard("responses", self.responses), methods=["POST"]),
            Route(
                "/v1/responses/{response_id:path}",  # nothing is stored: a 404 saying so
                self._guard("responses", self.responses),
                methods=["GET", "POST", "DELETE"],
            ),
        ]
        self.app = Starlette(
            routes=routes,
            exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
            lifespan=self._lifespan,
        )
        self.app.state.unite = self

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        if self.close_engine:  # requests still decoding fail (their streams end) and rows free
            self.engine.close()

    # -- plumbing ---------------------------------------------------------------------------------

    def _guard(self, endpoint: str, handler: _Handler) -> _Handler:
        """The API key check, errors as OpenAI's body, and the request counters."""

        async def guarded(request: Request) -> Response:
            self.metrics.started()
            status, streaming = 500, False
            try:
                self._check_key(request)
                response = await handler(request)
                status = response.status_code
                streaming = isinstance(response, StreamingResponse)
                return response
            except _ClientGone:
                status = 499  # nginx's "client closed request": nobody reads this response
                return Response(status_code=499)
            except Exception as e:
                error = from_exception(e)
                status = error.status
                return JSONResponse(error.body(), status_code=error.status)
            finally:
                if not streaming:  # a stream is counted when it ends (see ``_events``)
                    self.metrics.finished(endpoint, status)

        return guarded

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        ):
            raise APIError(
                401,
                "incorrect API key: send the server's key as 'Authorization: Bearer <key>' "
                "(the openai client's api_key)",
                code="invalid_api_key",
            )

    async def _body(self, request: Request, kind: type[BaseModel]) -> Any:
        """The body as ``kind``: 413 over the size limit, 400 for bad JSON or a bad field."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(self.max_body_bytes)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _too_large(self.max_body_bytes)
                chunks.append(chunk)
        except ClientDisconnect as e:
            raise APIError(400, "the client went away while sending the body") from e
        try:
            data = json.loads(b"".join(chunks), parse_constant=_not_json)
        except ValueError as e:  # not JSON, not UTF-8, or NaN/Infinity
            raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from e
        except RecursionError:
            raise APIError(
                400, "the body nests arrays and objects too deeply", code="invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return kind.model_validate(data)
        except ValidationError as e:
            raise from_validation(e) from e

    def _check_common(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        if body.model is not None and body.model != self.model:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist here: this server serves {self.model!r} "
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
        window = self.engine.context_window
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

    def _options(
        self, body: ChatCompletionRequest | CompletionRequest, want: _Wants
    ) -> ChatOptions:
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

    # -- operational endpoints ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        m = self.engine.metrics()
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model,
                "queue_depth": m.queued,
                "rows_in_flight": m.rows_in_flight,
                "max_batch_rows": m.max_batch_rows,
                "max_queue": m.max_queue,
            }
        )

    async def render_metrics(self, request: Request) -> Response:
        m = self.engine.metrics()
        stats = {
            "queue_depth": m.queued,
            "rows_in_flight": m.rows_in_flight,
            "max_batch_rows": m.max_batch_rows,
            "max_queue": m.max_queue,
            "requests": m.requests,
            "steps": m.steps,
            "batches": self.engine.stats.get("batches", 0),
            "prefix_ids_reused": m.prefix_ids_reused,
            "prefix_ids_stored": m.prefix_ids_stored,
            "prefix_bytes_held": m.prefix_bytes_held,
            "prefix_bytes_max": m.prefix_bytes_max,
        }
        return PlainTextResponse(self.metrics.render(stats), media_type="text/plain; version=0.0.4")

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.model,
            "object": "model",
            "created": self.created,
            "owned_by": "unite",
            "max_model_len": self.engine.context_window,
            "unite": {
                "members": self.engine.member_names,
                "weights": self.weights,
                "top_k": self.engine.config.top_k,
            },
        }

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: Request) -> Response:
        if request.path_params["model_id"] != self.model:
            raise APIError(
                404,
                f"the model {request.path_params['model_id']!r} does not exist here",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self._model_card())

    async def responses(self, request: Request) -> Response:
        """OpenAI's Responses API, stateless: translated to and from the chat endpoint's body
        and result in ``responses.py`` (imported here: that module builds on this one)."""
        from .responses import handle

        return await handle(self, request)

    # -- chat completions ---------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body: ChatCompletionRequest = await self._body(request, ChatCompletionRequest)
        self._check_common(body)
        if body.top_logprobs and not body.logprobs:
            raise APIError(
                400,
                f"top_logprobs={body.top_logprobs} needs logprobs=true: send both",
                param="top_logprobs",
                code="invalid_value",
            )
        want = _Wants(
            logprobs=body.logprobs,
            top=(body.top_logprobs or 0) if body.logprobs else 0,
            tokens=body.unite.token_provenance,
            usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        chat_request = self._chat_request(body, want)
        if body.stream:
            return await self._stream(
                request, chat_request, want, "chat.completion.chunk", _chat_chunk, "chat"
            )
        results = await _unless_disconnected(
            request, self.core.achoices(chat_request), self.metrics
        )
        self._count(results)
        return JSONResponse(self._chat_response(results, want))

    def _chat_request(self, body: ChatCompletionRequest, want: _Wants) -> ChatRequest:
        messages = tuple(_message(m, n) for n, m in enumerate(body.messages))
        tools = tuple(body.tools or ())
        names = tool_names(tools)  # a malformed tool's error names its field
        with about("tool_choice"):
            choice = tool_choice(body.tool_choice, names)
        with about("response_format"):
            fmt: ResponseFormat | None = response_format(body.response_format)
        return ChatRequest(
            messages=messages,
            options=self._options(body, want),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=fmt,
        )

    def _chat_response(self, results: list[ChatResult], want: _Wants) -> dict[str, Any]:
        return {
            "id": _id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": _assistant(result),
                    "logprobs": _logprobs(result, want.top) if want.logprobs else None,
                    "finish_reason": result.finish_reason,
                }
                for i, result in enumerate(results)
            ],
            "usage": _usage(results),
            "unite": _extensions(results, want.tokens),
        }

    # -- completions --------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body: CompletionRequest = await self._body(request, CompletionRequest)
        self._check_common(body)
        if body.echo:  # lm-evaluation-harness's log-likelihood requests (multiple choice)
            raise APIError(400, _NO_ECHO, param="echo", code="unsupported_value")
        if body.token_ids():
            raise APIError(400, _NO_TOKEN_IDS, param="prompt", code="unsupported_value")
        for field, bad in (
            ("suffix", body.suffix),
            ("best_of", body.best_of not in (None, body.n or 1)),
        ):
            if bad:
                raise APIError(
                    400,
                    f"{field} is not supported by the ensemble"
                    + (
                        " (other than equal to n: n choices are returned)"
                        if field == "best_of"
                        else ""
                    ),
                    param=field,
                    code="unsupported_value",
                )
        prompts = body.prompts()
        if not prompts or any(not p for p in prompts):
            raise APIError(400, "the prompt is empty: send some text", param="prompt")
        want = _Wants(
            logprobs=body.logprobs is not None,
            top=body.logprobs or 0,
            tokens=body.unite.token_provenance,
            usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        options = self._options(body, want)
        requests = [ChatRequest(text=p, options=options) for p in prompts]
        if body.stream:
            if len(requests) != 1:
                raise APIError(400, "stream one prompt per request (got a list)", param="prompt")
            return await self._stream(
                request, requests[0], want, "text_completion", _text_chunk, "completions"
            )
        results = await _unless_disconnected(
            request, self.core.ainvoke_many(requests), self.metrics
        )  # n per prompt, prompt-major: OpenAI's order (choice index = prompt * n + i)
        n = len(results) // len(requests)
        self._count(results, n)
        choices = [
            {
                "index": i,
                "text": r.text,
                "logprobs": _completion_logprobs(r, want.top) if want.logprobs else None,
                "finish_reason": r.finish_reason,
            }
            for i, r in enumerate(results)
        ]
        return JSONResponse(
            {
                "id": _id("cmpl"),
                "object": "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": choices,
                "usage": _usage(results, n),
                "unite": _extensions(results, want.tokens),
            }
        )

    # -- streaming ----------------------------------------------------------------------------

    async def _stream(
        self,
        request: Request,
        chat_request: ChatRequest,
        want: _Wants,
        kind: str,
        render: Callable[[ChatChunk, bool], list[dict[str, Any]]],
        endpoint: str,
    ) -> Response:
        """Server-sent events. The first chunk is awaited before the response starts, so a bad
        request (or an overloaded engine) is still an HTTP error, not an event."""
        chunks = await _unless_disconnected(request, self.core.astream(chat_request), self.metrics)
        head = {
            "id": _id("chatcmpl" if kind != "text_completion" else "cmpl"),
            "object": kind,
            "created": int(time.time()),
            "model": self.model,
        }
        return StreamingResponse(
            self._events(chunks, head, want, render, endpoint),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _events(
        self,
        chunks: Any,
        head: dict[str, Any],
        want: _Wants,
        render: Callable[[ChatChunk, bool], list[dict[str, Any]]],
        endpoint: str,
    ) -> AsyncIterator[bytes]:
        finished = False
        started: set[int] = set()  # choices whose first chunk went out
        results: dict[int, ChatResult] = {}  # each choice's, as it finishes
        try:
            async for chunk in chunks:  # n > 1: the choices' chunks interleaved, by ``choice``
                i = chunk.choice
                choices = render(chunk, i not in started)
                started.add(i)
                if chunk.result is None:
                    for choice in choices:
                        yield self._event(head, choice, want)
                    continue
                result = chunk.result
                for choice in choices[:-1]:
                    yield self._event(head, choice, want)
                last = choices[-1] if choices else {"index": i, "delta": {}, "logprobs": None}
                last["finish_reason"] = chunk.finish_reason
                if want.logprobs:
                    last["logprobs"] = (
                        _completion_logprobs(result, want.top)
                        if head["object"] == "text_completion"
                        else _logprobs(result, want.top)
                    )
                # each choice's last chunk carries its own provenance (the chunk has one choice)
                yield self._event(head, last, want, unite=_extension(result, want.tokens))
                results[i] = result
            answers = [results[i] for i in sorted(results)]
            if want.usage and answers:
                yield _sse({**head, "choices": [], "usage": _usage(answers)})
            self._count(answers)
            finished = True
            yield b"data: [DONE]\n\n"
        except Exception as e:  # after the headers: the error goes out as an event
            finished = True
            yield _sse(from_exception(e).body())
        finally:
            if not finished:
                self.metrics.disconnected()
            self.metrics.finished(endpoint, 200)
            await chunks.aclose()  # cancels the engine request if it is still running

    @staticmethod
    def _event(head: dict[str, Any], choice: dict[str, Any], want: _Wants, **extra: Any) -> bytes:
        event = {**head, "choices": [choice], **extra}
        if want.usage:
            event["usage"] = None  # as OpenAI: every chunk has the key; the last one the counts
        return _sse(event)

    def _count(self, results: list[ChatResult], n: int = 0) -> None:
        """Count answers (``n`` choices per prompt, prompt-major; 0: one prompt): each prompt's
        tokens once, each choice's output."""
        n = n or len(results)
        for k, result in enumerate(results):
            self.metrics.answer(
                result.usage.input_tokens if k % n == 0 else 0,
                result.usage.output_tokens,
                float(result.provenance.get("agreement_rate", 0.0)),
            )


class _Wants:
    """What a request asked to get back besides the answer."""

    __slots__ = ("logprobs", "tokens", "top", "usage")

    def __init__(self, *, logprobs: bool, top: int, tokens: bool, usage: bool) -> None:
        self.logprobs = logprobs
        self.top = top  # top log-probabilities per token (``top_logprobs``, legacy ``logprobs``)
        self.tokens = tokens
        self.usage = usage


class _ClientGone(Exception):
    """The client disconnected before its answer was ready (nobody reads the response)."""


async def _unless_disconnected(request: Request, work: Awaitable[T], metrics: Metrics) -> T:
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
    raise _ClientGone


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- translation helpers ------------------------------------------------------------------------


def _message(m: Any, n: int) -> Message:
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


def _logprob(value: float | None) -> float:
    """A log-probability as JSON can carry it: 0 probability (or none) is OpenAI's -9999.0."""
    return FLOOR_LOGPROB if value is None or value < FLOOR_LOGPROB else value


def _candidate(c: Candidate) -> dict[str, Any]:
    data = list(c.text.encode()) if c.end else c.bytes
    return {"token": c.text, "logprob": _logprob(c.logprob), "bytes": data}


def _logprobs(result: ChatResult, top: int) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: each generated token (a union string) with its
    log-probability under the mixed distribution it was chosen from, and the ``top`` most
    likely strings of that distribution, most likely first (fewer where the union had fewer)."""
    content = [
        {
            "token": t.text,
            "logprob": _logprob(t.logprob),
            "bytes": t.bytes,
            "top_logprobs": [_candidate(c) for c in (t.top or [])[:top]],
        }
        for t in result.tokens
    ]
    return {"content": content, "refusal": None}


def _completion_logprobs(result: ChatResult, top: int) -> dict[str, Any]:
    """The legacy completions ``logprobs``: parallel lists, and per token a dict of the ``top``
    most likely strings and the chosen one (so up to ``top`` + 1 entries, as OpenAI's)."""
    offsets, at = [], 0
    for t in result.tokens:
        offsets.append(at)
        at += len(t.text)
    return {
        "tokens": [t.text for t in result.tokens],
        "token_logprobs": [_logprob(t.logprob) for t in result.tokens],
        "top_logprobs": [_top_dict(t, top) for t in result.tokens],
        "text_offset": offsets,
    }


def _top_dict(t: TokenProvenance, top: int) -> dict[str, float]:
    """String -> log-probability; two strings shown alike (partial characters as U+FFFD) keep
    the likelier's figure."""
    out: dict[str, float] = {}
    for c in (t.top or [])[:top]:
        out.setdefault(c.text, _logprob(c.logprob))
    out.setdefault(t.text, _logprob(t.logprob))
    return out


def _assistant(result: ChatResult) -> dict[str, Any]:
    """A chat choice's ``message``: its content and tool calls."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.content if result.content or not result.tool_calls else None,
    }
    if result.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.name,
                    "arguments": json.dumps(c.arguments, ensure_ascii=False),
                },
            }
            for c in result.tool_calls
        ]
    return message


def _extensions(results: list[ChatResult], tokens: bool) -> dict[str, Any] | list[dict[str, Any]]:
    """A response's ``unite`` field: one choice's object, or with several choices (``n`` > 1, or
    a list of prompts) a list of them, one per choice in ``index`` order."""
    if len(results) == 1:
        return _extension(results[0], tokens)
    return [_extension(r, tokens) for r in results]


def _extension(result: ChatResult, tokens: bool) -> dict[str, Any]:
    """The ``unite`` field: the ensemble's provenance (per token only when asked for)."""
    out = {k: v for k, v in result.provenance.items() if k != "tokens"}
    out["member_usage"] = {
        "input_tokens": dict(result.usage.input_tokens_per_member),
        "output_tokens": dict(result.usage.output_tokens_per_member),
    }
    if tokens:  # through JSON: a log-probability of -inf becomes null
        out["tokens"] = [json.loads(t.model_dump_json()) for t in result.tokens]
    return out


def _usage(results: list[ChatResult], n: int = 0) -> dict[str, int]:
    """OpenAI's ``usage`` of choices (``n`` per prompt, prompt-major; 0: all of one prompt):
    each prompt counted once, as OpenAI does, and every choice's completion tokens."""
    n = n or len(results)
    prompt = sum(r.usage.input_tokens for r in results[::n])
    completion = sum(r.usage.output_tokens for r in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chat_chunk(chunk: ChatChunk, first: bool) -> list[dict[str, Any]]:
    """A chat chunk's choices: content, then each tool call as OpenAI streams one (its id and
    name first, then its arguments); the last chunk always has a choice to carry the finish."""
    out: list[dict[str, Any]] = []

    def choice(delta: dict[str, Any]) -> None:
        out.append({"index": chunk.choice, "delta": delta, "logprobs": None, "finish_reason": None})

    if first or chunk.content:
        choice(
            {"role": "assistant", "content": chunk.content} if first else {"content": chunk.content}
        )
    for c in chunk.tool_calls:
        head = {"index": c.index, "id": c.id, "type": "function"}
        choice({"tool_calls": [{**head, "function": {"name": c.name, "arguments": ""}}]})
        choice({"tool_calls": [{"index": c.index, "function": {"arguments": c.arguments}}]})
    if chunk.result is not None and not out:
        choice({})
    return out


def _text_chunk(chunk: ChatChunk, first: bool) -> list[dict[str, Any]]:
    if not chunk.content and chunk.result is None:
        return []
    return [{"index": chunk.choice, "text": chunk.content, "logprobs": None, "finish_reason": None}]


def _sse(data: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _not_json(constant: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``, which Python's parser reads but JSON lacks."""
    raise ValueError(f"{constant} is not a JSON value")


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the body is larger than the server's limit of {limit} bytes",
        code="request_too_large",
    )


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Routing errors (unknown path, wrong method) in OpenAI's error body too."""
    kind = "not_found" if error.status_code == 404 else "invalid_request_error"
    body = APIError(
        error.status_code, f"{request.method} {request.url.path}: {error.detail}", type=kind
    ).body()
    return JSONResponse(body, status_code=error.status_code)
