"""``ChatCore``: the chat behaviour every front end shares, over one ``UniTEEngine``.

A front end builds a ``ChatRequest`` from its framework's types, calls ``invoke``, ``stream``,
``ainvoke`` or ``astream``, and translates the ``ChatResult``/``ChatChunk``s back. Everything
between is here, once: option resolution (``options``), message rendering (``messages``), tools,
tool choice and structured output as grammars, the streaming tool-call parser (``tools``),
usage and provenance, the model-name default and the sync/async bridge (``bridge``). Batching
is the engine's: concurrent calls on one engine are decoded together by its scheduler.

``n`` choices of one prompt (OpenAI's ``n``) are rows of the engine's batch, queued together:
``choices``/``achoices`` return them, a stream interleaves their chunks (``ChatChunk.choice``),
and ``ainvoke_many`` gives ``n`` per prompt, prompt-major. Each choice has a random stream of
its own (``options.choice_seed``).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engine.config import EnsembleConfig, GenerationOptions, MemberSpec
from ..engine.constraints import Constraint
from ..engine.engine import Prompt, UniTEEngine, stream_chunk
from ..engine.inputs import check_text
from ..engine.registry import get_engine
from ..engine.results import GenerationResult, StreamChunk
from ..engine.scheduler import Done, Failed, Request
from ..engine.tool_format import ToolCallStream, parse_calls, tool_choice, tool_names
from ..errors import ConfigError, ContextWindowError, InputError, about
from .bridge import checked, thread_stream
from .messages import render
from .options import (
    ChatDefaults,
    chat_name,
    choice_seed,
    engine_options,
    keeps_tokens,
    n_choices,
)
from .request_grammar import grammar, response_format
from .types import (
    ChatChunk,
    ChatOptions,
    ChatRequest,
    ChatResult,
    ChatUsage,
    ToolCall,
    ToolCallChunk,
)

__all__ = ["ChatCore", "Decoding", "PreparedCall", "default_model_name"]


def default_model_name(members: Sequence[str | MemberSpec]) -> str:
    """``unite:`` and the members' display names joined with ``+`` (the one default)."""
    names = [(Path(m).name or m) if isinstance(m, str) else m.display_name for m in members]
    return "unite:" + "+".join(names)


@dataclass(frozen=True)
class PreparedCall:
    """A request resolved into one engine call (validated: building it raised any error).

    ``generation``: the engine's options, validated once (``engine_options``); the engine takes
    them as they are. ``ChatCore.check`` leaves the grammar unbuilt (``build``, ``constraint``
    None): ``built()`` is the call with its constraint, as ``ChatCore.prepare`` returns it."""

    prompt: Prompt
    generation: GenerationOptions
    tools: list[dict[str, Any]] | None
    constraint: Constraint | None
    parse_calls: bool
    tokens: bool = False  # keep per-token provenance in the result
    build: Callable[[], Constraint] | None = field(default=None, compare=False, repr=False)
    n: int = 1  # choices: rows of the prompt, queued together

    @property
    def own_seeds(self) -> bool:
        """Whether its choices sample with seeds of their own (several choices, sampled, with a
        seed: choice i's is ``choice_seed(seed, i)``); otherwise they share the call's options
        (greedy choices are equal, unseeded ones each draw from a fresh generator)."""
        opts = self.generation
        return self.n > 1 and opts.seed is not None and opts.temperature > 0

    @property
    def options(self) -> dict[str, Any]:
        """``generation`` as the engine's keyword arguments (``engine.generate(prompts,
        **call.options)`` is the same call); ``gate`` and ``top_logprobs`` only where they ask
        for something."""
        return {
            k: v
            for k, v in self.generation.model_dump().items()
            if k not in _UNASKED or v != _UNASKED[k]
        }

    def built(self) -> PreparedCall:
        """This call with its constraint built (rewriting a deep schema can take long)."""
        if self.build is None:
            return self
        return replace(self, constraint=self.build(), build=None)


#: Options that read as not asked for at these values (full UniTE, no top log-probabilities).
_UNASKED: dict[str, Any] = {"gate": None, "top_logprobs": 0}


class ChatCore:
    """The shared chat behaviour over one engine.

    Args:
        engine: a loaded ``UniTEEngine``, an ``EnsembleConfig`` (its shared engine is fetched
            from the registry on first use) or a function returning the engine.
        defaults: the front end's option defaults (``ChatDefaults``).
        model_name: reported in results; defaults to ``default_model_name`` of the members.
    """

    def __init__(
        self,
        engine: UniTEEngine | EnsembleConfig | Callable[[], UniTEEngine],
        *,
        defaults: ChatDefaults | None = None,
        model_name: str | None = None,
    ) -> None:
        self._source = engine
        self.defaults = defaults or ChatDefaults()
        if model_name:
            self.model_name = model_name
        elif isinstance(engine, UniTEEngine):
            self.model_name = default_model_name(list(engine.config.members))
        elif isinstance(engine, EnsembleConfig):
            self.model_name = default_model_name(list(engine.members))
        else:
            self.model_name = "unite"

    @property
    def engine(self) -> UniTEEngine:
        """The engine (loaded on first use when the core was given a config)."""
        source = self._source
        if isinstance(source, UniTEEngine):
            return source
        if isinstance(source, EnsembleConfig):
            return get_engine(source)
        return source()

    # -- requests -> engine calls ---------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> PreparedCall:
        """Validate a request and resolve it into an engine call (``ConfigError`` for a bad
        option, tool or tool choice, ``InputError`` for bad messages), before any decoding."""
        return self.check(request).built()

    def check(self, request: ChatRequest) -> PreparedCall:
        """``prepare`` but for building the grammar: every check of the request's own (options,
        messages, tools, tool choice, response format), each cheap enough for an event loop;
        the constraint, whose building can take long for a deeply nested schema, is left to
        ``PreparedCall.built()``."""
        if not isinstance(request, ChatRequest):
            raise InputError(f"a chat call takes a ChatRequest, got {type(request).__name__}")
        if not isinstance(request.options, ChatOptions):
            raise ConfigError(
                f"ChatRequest.options must be a ChatOptions, got {type(request.options).__name__}"
            )
        parallel = request.parallel_tool_calls
        with about("response_format"):
            fmt = response_format(request.response_format)
        names = tool_names(request.tools)  # a malformed tool's error names its field
        with about("tool_choice"):
            choice = tool_choice(request.tool_choice, names)
        with about("response_format"):  # what is left: tools and a response format both given
            g = grammar(
                request.tools,
                choice,
                self.defaults.parallel_tool_calls if parallel is None else bool(parallel),
                fmt,
                self.defaults.max_json_string_length,
            )
        options = engine_options(self.defaults, request.options, forced=g.forced)
        tokens = keeps_tokens(self.defaults, request.options)
        n = n_choices(self.defaults, request.options)
        prompt: Prompt
        if request.text is not None:  # a raw completion: OpenAI's ``prompt``
            if not isinstance(request.text, str) or not request.text:
                raise InputError("the prompt is empty: pass some text", param="prompt")
            prompt = check_text("the prompt", request.text, "prompt")
        else:
            prompt = render(request.messages, g.instruction)
        return PreparedCall(prompt, options, g.tools, None, g.parse_calls, tokens, g.build, n=n)

    # -- sync -------------------------------------------------------------------------------

    def invoke(self, request: ChatRequest) -> ChatResult:
        """One complete answer (``n`` > 1 is refused: ``choices`` returns several)."""
        return self._invoke(_one(self.prepare(request), "invoke"))

    def _invoke(self, call: PreparedCall) -> ChatResult:
        return self.result(self._generate(call), call.parse_calls, tokens=call.tokens)

    def choices(self, request: ChatRequest) -> list[ChatResult]:
        """The request's ``n`` choices (``ChatOptions.n``; one by default), in order: their rows
        are queued together and decoded in one batch."""
        call = self.prepare(request)
        if call.n == 1:
            return [self._invoke(call)]
        queued = self._queue([call.prompt], call, stream=False)
        try:
            results = list(_Answers([r for rs in queued for r in rs]))
        finally:
            for request_ in (r for rs in queued for r in rs):  # an interrupted wait frees rows
                request_.cancel()
        return [
            self.result(r, call.parse_calls, tokens=call.tokens)
            for r in _order(results, len(queued))
        ]

    def batch(self, requests: Sequence[ChatRequest], max_concurrency: int = 16) -> list[ChatResult]:
        """Answers for several requests, as concurrent engine calls: the engine's scheduler
        decodes the ones that wait together (and share options) in one batch (one answer each:
        ``n`` > 1 is refused)."""
        calls = [_one(self.prepare(r), "batch") for r in requests]
        with ThreadPoolExecutor(max(1, min(max_concurrency, len(calls)))) as pool:
            futures = [pool.submit(self._generate, c) for c in calls]
            return [
                self.result(f.result(), c.parse_calls, tokens=c.tokens)
                for f, c in zip(futures, calls)
            ]

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """The answer in chunks: content as it becomes safe to show, each tool call once its
        block closes, and a last chunk with the finish reason and the complete result. Closing
        (or dropping) the iterator cancels the engine request, so decoding stops. Bad input
        raises here, before the first chunk is read; the call returns once the request is queued
        (it does not wait for decoding). With ``n`` > 1 the choices' chunks come interleaved as
        they decode, each tagged with its ``choice``, and each choice ends with a chunk of its
        own carrying its result; the iterator ends after the last."""
        call = self.prepare(request)
        return self._streams(call, self._decodings(call))

    def submit(self, call: PreparedCall) -> Decoding:
        """Queue a checked call on the engine without waiting for any decoding: its grammar is
        built, and the engine's own checks (each member's prompt encoding and context window,
        the grammar's compilation, the shortest text it accepts against the token budget) and
        its queue bound (``OverloadedError``) raise here, in the caller's thread; nothing was
        queued then. The returned ``Decoding`` gives the engine's stream chunks as the engine
        decodes them. One choice only: ``stream``/``astream`` stream ``n`` of them."""
        [request] = self._submit([call.prompt], _one(call, "submit"), stream=True)
        return Decoding(request)

    def _decodings(self, call: PreparedCall) -> list[Decoding]:
        """A streamed call's choices queued (``_queue``): their ``Decoding``s, in choice order."""
        return [Decoding(r) for rs in self._queue([call.prompt], call, stream=True) for r in rs]

    def _queue(
        self, prompts: list[Prompt], call: PreparedCall, stream: bool
    ) -> list[list[Request]]:
        """Queue ``call.n`` choices of every prompt: each engine call's requests, in call order.

        One engine call queues them all (their rows are admitted together) where the choices
        share the call's options: one choice, greedy ones, or sampled ones without a seed (each
        row draws from a fresh generator of its own), and they do not stream; its results are
        prompt-major. Otherwise (``own_seeds``, or a stream: the engine streams a request's
        first row only) one engine call per choice, choice i seeded with ``choice_seed(seed,
        i)``, each for every prompt, queued back to back so that an engine between two steps
        admits them at its next step (an idle one may start the first a step ahead; rows are
        independent, so the text is the same). All or none: an error cancels the calls queued
        before it."""
        call = call.built()
        if call.n == 1 or not (stream or call.own_seeds):
            return [self._submit([p for p in prompts for _ in range(call.n)], call, stream)]
        queued: list[list[Request]] = []
        try:
            for i in range(call.n):
                seed = choice_seed(call.generation.seed, i)
                queued.append(self._submit(prompts, _with_seed(call, seed), stream))
        except BaseException:
            for request in (r for rs in queued for r in rs):
                request.cancel()
            raise
        return queued

    def _submit(self, prompts: list[Prompt], call: PreparedCall, stream: bool) -> list[Request]:
        """``engine.submit``, its errors naming the request field they are about."""
        call = call.built()
        with _fields(call):
            return self.engine.submit(
                prompts,
                tools=call.tools,
                constraint=call.constraint,
                stream=stream,
                options=call.generation,
            )

    def _generate(self, call: PreparedCall) -> GenerationResult:
        """``engine.generate`` for one built call, its errors naming the request field."""
        with _fields(call):
            return self.engine.generate(
                [call.prompt], tools=call.tools, constraint=call.constraint, options=call.generation
            )[0]

    def _streams(self, call: PreparedCall, decodings: list[Decoding]) -> Iterator[ChatChunk]:
        """One choice's chunks, or several choices' merged (``_merged``)."""
        if len(decodings) == 1:
            return self._chunks(call, decodings[0])
        return self._merged(call, decodings)

    def _merged(self, call: PreparedCall, decodings: list[Decoding]) -> Iterator[ChatChunk]:
        """Several choices' chunks as they come, each tagged with its choice (a reader thread
        per choice: each waits on its own request's events). The first failure raises here;
        leaving early, or a failure, abandons every choice still decoding."""
        out: queue.SimpleQueue[tuple[ChatChunk | BaseException | None]] = queue.SimpleQueue()

        def read(i: int, decoding: Decoding) -> None:
            try:
                for chunk in self._chunks(call, decoding):
                    out.put((replace(chunk, choice=i),))
            except BaseException as e:
                out.put((e,))
            else:
                out.put((None,))

        for i, decoding in enumerate(decodings):
            threading.Thread(
                target=read, args=(i, decoding), name="unite-choice", daemon=True
            ).start()
        left = len(decodings)
        try:
            while left:
                (item,) = out.get()
                if item is None:
                    left -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            _abandon(decodings)  # wakes the readers of choices still decoding

    def _chunks(self, call: PreparedCall, pieces: Iterator[Any]) -> Iterator[ChatChunk]:
        splitter = ToolCallStream() if call.parse_calls else None
        streamed: list[str] = []  # ids of the calls streamed so far: the result keeps them
        index = 0
        try:
            for piece in pieces:
                parts: list[str | ToolCall] = []
                if piece.text:
                    parts = splitter.feed(piece.text) if splitter else [piece.text]
                if piece.result is not None:
                    if splitter:
                        parts += splitter.finish()
                    for chunk in _part_chunks(parts, index):
                        index += len(chunk.tool_calls)
                        streamed += [c.id for c in chunk.tool_calls]
                        yield chunk
                    result = self.result(piece.result, call.parse_calls, streamed, call.tokens)
                    yield ChatChunk(finish_reason=result.finish_reason, result=result)
                    return
                for chunk in _part_chunks(parts, index):
                    index += len(chunk.tool_calls)
                    streamed += [c.id for c in chunk.tool_calls]
                    yield chunk
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a consumer that stops early cancels the engine request

    # -- async ------------------------------------------------------------------------------

    async def astream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        """``stream`` for async code: ``async for chunk in await core.astream(request)``. Bad
        input raises at the ``await``; closing the async generator or cancelling the task that
        reads it cancels the engine request.

        Checking never waits behind a busy engine: the request's own checks (``check``: the
        options, messages, tools, tool choice and response format) run here, on the event loop,
        and building its grammar and the engine's checks (``submit``: prompt encoding, context
        window, grammar and token budget, the queue bound) in the bridge's pool of checking
        threads, which never wait for decoding. Only a valid, queued request gets a
        worker thread to wait for its chunks. ``n`` > 1 choices come interleaved, as ``stream``
        gives them."""
        return await self._astream(self.check(request))

    async def _astream(self, call: PreparedCall) -> AsyncGenerator[ChatChunk, None]:
        decodings = await checked(lambda: self._decodings(call), discard=_abandon)
        return await thread_stream(
            lambda: self._streams(call, decodings), abandon=lambda: _abandon(decodings)
        )

    async def ainvoke(self, request: ChatRequest) -> ChatResult:
        """``invoke`` for async code, without blocking the event loop. Cancelling the awaiting
        task (``wait_for``, ``task.cancel()``) cancels the engine request. One answer: ``n`` > 1
        is refused (``achoices`` returns several)."""
        return await self._ainvoke(_one(self.check(request), "ainvoke"))

    async def achoices(self, request: ChatRequest) -> list[ChatResult]:
        """``choices`` for async code: the request's ``n`` choices, in order, their rows queued
        together (all or none) and decoded in one batch. Cancelling the awaiting task cancels
        them all."""
        call = self.check(request)
        if call.n == 1:
            return [await self._ainvoke(call)]
        return await self._answers([call])

    async def _ainvoke(self, call: PreparedCall) -> ChatResult:
        chunks = await self._astream(call)
        try:
            async for chunk in chunks:
                if chunk.result is not None:
                    return chunk.result
        finally:
            await chunks.aclose()
        raise RuntimeError("the engine's stream ended without a result")  # pragma: no cover

    async def ainvoke_many(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """Answers for requests that differ only in their prompt (a completions call's list of
        prompts), in order: every one is checked before any is queued, then they are queued
        together (all or none: ``OverloadedError`` queues none) and decoded together.
        Cancelling the awaiting task cancels them all. With ``n`` > 1, ``n`` answers per
        request, prompt-major (request p's choice i at ``p * n + i``, as OpenAI orders them)."""
        if any(_but_prompt(r) != _but_prompt(requests[0]) for r in requests[1:]):
            raise ConfigError("ainvoke_many takes requests that differ in their prompt only")
        return await self._answers([self.check(r) for r in requests])

    async def _answers(self, calls: list[PreparedCall]) -> list[ChatResult]:
        """The ``n`` choices of calls that differ in their prompt only, queued together (not
        streamed), prompt-major."""
        if not calls:
            return []
        first = calls[0]
        n_calls = 1

        def queue_all() -> _Answers:
            nonlocal n_calls
            queued = self._queue([c.prompt for c in calls], first, stream=False)
            n_calls = len(queued)
            return _Answers([r for rs in queued for r in rs])

        answers = await checked(queue_all, discard=_Answers.abandon)
        items = await thread_stream(lambda: iter(answers), abandon=answers.abandon)
        try:
            results = _order([r async for r in items], n_calls)
        finally:
            await items.aclose()
        owners = [c for c in calls for _ in range(first.n)]
        return [self.result(r, c.parse_calls, tokens=c.tokens) for r, c in zip(results, owners)]

    # -- engine results -> chat results ------------------------------------------------------

    def result(
        self,
        result: GenerationResult,
        parse: bool,
        ids: Sequence[str] = (),
        tokens: bool = False,
    ) -> ChatResult:
        """A ``ChatResult`` from the engine's result (``parse``: split off tool calls; ``ids``:
        the ids a stream already gave those calls, so the result's calls carry the same;
        ``tokens``: keep the per-token provenance)."""
        content, calls = parse_calls(result.text) if parse else (result.text, ())
        if ids and len(ids) == len(calls):
            calls = tuple(replace(c, id=i) for c, i in zip(calls, ids))
        u = result.usage
        return ChatResult(
            content=content,
            tool_calls=calls,
            finish_reason="tool_calls" if calls else result.finish_reason,
            usage=ChatUsage(
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                input_tokens_per_member=dict(u.input_tokens_per_member),
                output_tokens_per_member=dict(u.output_tokens_per_member),
            ),
            provenance=result.provenance.summary(),
            model=self.model_name,
            text=result.text,
            tokens=tuple(result.provenance.tokens) if tokens else (),
        )


class Decoding:
    """A queued engine request's stream chunks (``UniTEEngine.stream`` over ``submit``, so the
    request is checked and queued before anything waits). ``close()``, or dropping it, cancels
    the request (its row leaves the batch at the next step); ``abandon()`` does too and also
    wakes a thread waiting for its next chunk (from any thread)."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self._done = False

    def __iter__(self) -> Decoding:
        return self

    def __next__(self) -> StreamChunk:
        if self._done:
            raise StopIteration
        event = self._request.next_event()  # a Failed event (the engine's error) raises here
        self._done = isinstance(event, Done)
        return stream_chunk(event)

    def close(self) -> None:
        self._done = True
        self._request.cancel()

    def abandon(self) -> None:
        """Cancel, and wake a reader blocked on the next event (a cancelled request that is still
        waiting for its row gets no more events from the engine)."""
        self.close()
        self._request.events.put(Failed(_Abandoned("the caller left")))

    def __del__(self) -> None:
        self._request.cancel()


class _Answers:
    """The results of requests queued together (not streamed), in order, as each request's
    ``Done`` event comes; ``abandon()`` cancels them all and wakes a waiting reader."""

    def __init__(self, requests: list[Request]) -> None:
        self._requests = requests

    def __iter__(self) -> Iterator[GenerationResult]:
        for request in self._requests:
            event = request.next_event()  # a Failed event (the engine's error) raises here
            if isinstance(event, Done):  # the only event of a request that does not stream
                yield from event.results

    def abandon(self) -> None:
        for request in self._requests:
            request.cancel()
            request.events.put(Failed(_Abandoned("the caller left")))

    def __del__(self) -> None:
        for request in self._requests:
            request.cancel()


class _Abandoned(Exception):
    """Ends a reader's wait on a request whose caller went away (nobody sees it)."""


def _one(call: PreparedCall, method: str) -> PreparedCall:
    """``call``, refused when it asks for several choices (``method`` gives one answer)."""
    if call.n != 1:
        raise ConfigError(
            f"n={call.n}: {method} gives one answer; call choices() or achoices() for n choices "
            "(or stream them: stream() and astream() tag each chunk with its choice)",
            param="n",
        )
    return call


@contextlib.contextmanager
def _fields(call: PreparedCall) -> Iterator[None]:
    """The engine's errors for ``call`` naming the request field they are about: the call's
    option (``max_tokens``, not the engine's ``max_new_tokens``), the prompt or conversation
    that does not fit, the source of a grammar that does not compile."""
    try:
        yield
    except ContextWindowError as e:  # OpenAI's field: the prompt, or the conversation
        e.param = e.param or ("prompt" if isinstance(call.prompt, str) else "messages")
        raise
    except ConfigError as e:
        e.param = chat_name(e.param) if e.param else None
        if e.param is None and call.constraint is not None and "grammar" in str(e):
            e.param = "tools" if call.tools else "response_format"  # the grammar's source
        raise


def _with_seed(call: PreparedCall, seed: int | None) -> PreparedCall:
    return replace(call, generation=call.generation.model_copy(update={"seed": seed}))


def _abandon(decodings: list[Decoding]) -> None:
    for decoding in decodings:
        decoding.abandon()


def _order(results: list[GenerationResult], calls: int) -> list[GenerationResult]:
    """Prompt-major results (prompt p's choice i at ``p * n + i``) from ``_queue``'s ``calls``
    engine calls' results in call order: one call's already are; with one call per choice,
    call i holds choice i of every prompt."""
    if calls == 1:
        return results
    size = len(results) // calls
    groups = [results[k * size : (k + 1) * size] for k in range(calls)]
    return [r for row in zip(*groups) for r in row]


def _but_prompt(request: ChatRequest) -> ChatRequest:
    return replace(request, messages=(), text=None) if isinstance(request, ChatRequest) else request


def _part_chunks(parts: list[str | ToolCall], index: int) -> Iterator[ChatChunk]:
    """Chunks for content strings and complete calls (calls numbered from ``index``)."""
    for part in parts:
        if isinstance(part, str):
            yield ChatChunk(content=part)
        else:
            args = json.dumps(part.arguments, ensure_ascii=False)
            yield ChatChunk(tool_calls=(ToolCallChunk(index, part.id, part.name, args),))
            index += 1
