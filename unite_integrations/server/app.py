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

import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

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
    engine_options,
)
from ..engine.engine import UniTEEngine
from .answers import (
    assistant_message,
    chat_logprobs,
    completion_logprobs,
    count_answers,
    extension,
    extensions,
    usage_of,
)
from .errors import APIError, from_exception, from_validation
from .metrics import Metrics
from .requests import (
    ClientGone,
    Wants,
    call_options,
    chat_request,
    check_common,
    unless_disconnected,
)
from .responses import handle
from .schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

#: Largest request body accepted (413 beyond): a long conversation fits, a runaway upload not.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024

_Handler = Callable[[Request], Awaitable[Response]]

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
            except ClientGone:
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

    async def read_body(self, request: Request, kind: type[BaseModel]) -> Any:
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
            "batches": m.batches,
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
                "dtypes": [  # a Ray member's weights are remote: its spec's dtype
                    str(getattr(m.model, "dtype", m.spec.dtype)).removeprefix("torch.")
                    for m in self.engine.members
                ],
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
        and result in ``responses.py``."""
        return await handle(self, request)

    # -- chat completions ---------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        body: ChatCompletionRequest = await self.read_body(request, ChatCompletionRequest)
        check_common(body, self.model, self.engine.context_window)
        if body.top_logprobs and not body.logprobs:
            raise APIError(
                400,
                f"top_logprobs={body.top_logprobs} needs logprobs=true: send both",
                param="top_logprobs",
                code="invalid_value",
            )
        want = Wants(
            logprobs=body.logprobs,
            top=(body.top_logprobs or 0) if body.logprobs else 0,
            tokens=body.unite.token_provenance,
            usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        chat = chat_request(body, want)
        if body.stream:
            return await self._stream(
                request, chat, want, "chat.completion.chunk", _chat_chunk, "chat"
            )
        results = await unless_disconnected(request, self.core.achoices(chat), self.metrics)
        count_answers(self.metrics, results)
        return JSONResponse(self._chat_response(results, want))

    def _chat_response(self, results: list[ChatResult], want: Wants) -> dict[str, Any]:
        return {
            "id": _id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": i,
                    "message": assistant_message(result),
                    "logprobs": chat_logprobs(result, want.top) if want.logprobs else None,
                    "finish_reason": result.finish_reason,
                }
                for i, result in enumerate(results)
            ],
            "usage": usage_of(results),
            "unite": extensions(results, want.tokens),
        }

    # -- completions --------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        body: CompletionRequest = await self.read_body(request, CompletionRequest)
        check_common(body, self.model, self.engine.context_window)
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
        want = Wants(
            logprobs=body.logprobs is not None,
            top=body.logprobs or 0,
            tokens=body.unite.token_provenance,
            usage=bool(body.stream_options and body.stream_options.include_usage),
        )
        options = call_options(body, want)
        requests = [ChatRequest(text=p, options=options) for p in prompts]
        if body.stream:
            if len(requests) != 1:
                raise APIError(400, "stream one prompt per request (got a list)", param="prompt")
            return await self._stream(
                request, requests[0], want, "text_completion", _text_chunk, "completions"
            )
        results = await unless_disconnected(
            request, self.core.ainvoke_many(requests), self.metrics
        )  # n per prompt, prompt-major: OpenAI's order (choice index = prompt * n + i)
        n = len(results) // len(requests)
        count_answers(self.metrics, results, n)
        choices = [
            {
                "index": i,
                "text": r.text,
                "logprobs": completion_logprobs(r, want.top) if want.logprobs else None,
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
                "usage": usage_of(results, n),
                "unite": extensions(results, want.tokens),
            }
        )

    # -- streaming ----------------------------------------------------------------------------

    async def _stream(
        self,
        request: Request,
        chat_request: ChatRequest,
        want: Wants,
        kind: str,
        render: Callable[[ChatChunk, bool], list[dict[str, Any]]],
        endpoint: str,
    ) -> Response:
        """Server-sent events. The first chunk is awaited before the response starts, so a bad
        request (or an overloaded engine) is still an HTTP error, not an event."""
        chunks = await unless_disconnected(request, self.core.astream(chat_request), self.metrics)
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
        want: Wants,
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
                        completion_logprobs(result, want.top)
                        if head["object"] == "text_completion"
                        else chat_logprobs(result, want.top)
                    )
                # each choice's last chunk carries its own provenance (the chunk has one choice)
                yield self._event(head, last, want, unite=extension(result, want.tokens))
                results[i] = result
            answers = [results[i] for i in sorted(results)]
            if want.usage and answers:
                yield _sse({**head, "choices": [], "usage": usage_of(answers)})
            count_answers(self.metrics, answers)
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
    def _event(head: dict[str, Any], choice: dict[str, Any], want: Wants, **extra: Any) -> bytes:
        event = {**head, "choices": [choice], **extra}
        if want.usage:
            event["usage"] = None  # as OpenAI: every chunk has the key; the last one the counts
        return _sse(event)


# -- translation helpers ------------------------------------------------------------------------


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
