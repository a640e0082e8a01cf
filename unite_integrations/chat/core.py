"""``ChatCore``: the chat behaviour every front end shares, over one ``UniTEEngine``.

A front end builds a ``ChatRequest`` from its framework's types, calls ``invoke``, ``stream``,
``ainvoke`` or ``astream``, and translates the ``ChatResult``/``ChatChunk``s back. Everything
between is here, once: option resolution (``options``), message rendering (``messages``), tools,
tool choice and structured output as grammars, the streaming tool-call parser (``tools``),
usage and provenance, the model-name default and the sync/async bridge (``bridge``). Batching
is the engine's: concurrent calls on one engine are decoded together by its scheduler.

``n`` choices of one prompt (OpenAI's ``n``) are rows of one engine call, each with a random
stream of its own (``options.choice_seed``, the engine's per-row ``seeds``): ``choices``/
``achoices`` return them, a stream interleaves their chunks as the engine tags them with their
row (``ChatChunk.choice``), and ``ainvoke_many`` gives ``n`` per prompt, prompt-major.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..engine.config import EnsembleConfig, GenerationOptions, MemberSpec
from ..engine.constraints import Constraint
from ..engine.engine import Prompt, UniTEEngine, stream_chunk
from ..engine.inputs import check_text
from ..engine.registry import get_engine
from ..engine.results import GenerationResult, StreamChunk
from ..engine.scheduler import Delta, Done, Failed, Request
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
    n: int = 1  # choices: rows of the prompt, in one engine call

    def built(self) -> PreparedCall:
        """This call with its constraint built (rewriting a deep schema can take long)."""
        if self.build is None:
            return self
        return replace(self, constraint=self.build(), build=None)


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
        """The request's ``n`` choices (``ChatOptions.n``; one by default), in order: rows of
        one engine call, decoded in one batch."""
        call = self.prepare(request)
        if call.n == 1:
            return [self._invoke(call)]
        queued = self._queue([call.prompt], call, stream=False)
        try:
            results = list(_Answers(queued))
        finally:
            for request_ in queued:  # an interrupted wait frees the rows
                request_.cancel()
        return [self.result(r, call.parse_calls, tokens=call.tokens) for r in results]

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        """The answer in chunks: content as it becomes safe to show, each tool call once its
        block closes, and a last chunk with the finish reason and the complete result. Closing
        (or dropping) the iterator cancels the engine request, so decoding stops. Bad input
        raises here, before the first chunk is read; the call returns once the request is queued
        (it does not wait for decoding). With ``n`` > 1 the choices' chunks come interleaved as
        they decode, each tagged with its ``choice``, and each choice ends with a chunk of its
        own carrying its result; the iterator ends after the last."""
        call = self.prepare(request)
        return self._streams(call, self._decoding(call))

    def submit(self, call: PreparedCall) -> Decoding:
        """Queue a checked call on the engine without waiting for any decoding: its grammar is
        built, and the engine's own checks (each member's prompt encoding and context window,
        the grammar's compilation, the shortest text it accepts against the token budget) and
        its queue bound (``OverloadedError``) raise here, in the caller's thread; nothing was
        queued then. The returned ``Decoding`` gives the engine's stream chunks as the engine
        decodes them. One choice only: ``stream``/``astream`` stream ``n`` of them."""
        return Decoding(self._submit([call.prompt], _one(call, "submit"), stream=True))

    def _decoding(self, call: PreparedCall) -> Decoding:
        """A streamed call's choices queued (``_queue``): the ``Decoding`` of their rows."""
        return Decoding(self._queue([call.prompt], call, stream=True))

    def _queue(self, prompts: list[Prompt], call: PreparedCall, stream: bool) -> list[Request]:
        """Queue ``call.n`` choices of every prompt as rows of one engine call (admitted
        together), prompt-major: its requests, whose results come in that order. With a seed,
        choice i samples with ``choice_seed(seed, i)`` (the engine's per-row ``seeds``);
        without one each sampled row draws from a fresh generator; greedy choices are equal."""
        call = call.built()
        seed = call.generation.seed
        seeds = None
        if call.n > 1 and seed is not None:
            seeds = [choice_seed(seed, i) for _ in prompts for i in range(call.n)]
        return self._submit([p for p in prompts for _ in range(call.n)], call, stream, seeds)

    def _submit(
        self,
        prompts: list[Prompt],
        call: PreparedCall,
        stream: bool,
        seeds: list[int | None] | None = None,
    ) -> list[Request]:
        """``engine.submit``, its errors naming the request field they are about."""
        call = call.built()
        with _fields(call):
            return self.engine.submit(
                prompts,
                tools=call.tools,
                constraint=call.constraint,
                stream=stream,
                options=call.generation,
                seeds=seeds,
            )

    def _generate(self, call: PreparedCall) -> GenerationResult:
        """``engine.generate`` for one built call, its errors naming the request field."""
        with _fields(call):
            return self.engine.generate(
                [call.prompt], tools=call.tools, constraint=call.constraint, options=call.generation
            )[0]

    def _streams(self, call: PreparedCall, decoding: Decoding) -> Iterator[ChatChunk]:
        """The call's chunks as the engine streams its rows, each row's through a ``_Choice``
        of its own and tagged with its choice; the iterator ends after the last choice's
        result. Leaving early, or a failure (raised here), cancels the engine call."""
        choices = [_Choice(self, call) for _ in range(call.n)]
        try:
            for piece in decoding:
                for chunk in choices[piece.row].feed(piece):
                    yield replace(chunk, choice=piece.row)
        finally:
            decoding.close()  # a consumer that stops early cancels the engine request

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
        decoding = await checked(lambda: self._decoding(call), discard=Decoding.abandon)
        return await thread_stream(lambda: self._streams(call, decoding), abandon=decoding.abandon)

    async def ainvoke(self, request: ChatRequest) -> ChatResult:
        """``invoke`` for async code, without blocking the event loop. Cancelling the awaiting
        task (``wait_for``, ``task.cancel()``) cancels the engine request. One answer: ``n`` > 1
        is refused (``achoices`` returns several)."""
        return await self._ainvoke(_one(self.check(request), "ainvoke"))

    async def achoices(self, request: ChatRequest) -> list[ChatResult]:
        """``choices`` for async code: the request's ``n`` choices, in order, rows of one engine
        call (all or none) decoded in one batch. Cancelling the awaiting task cancels
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

        def queue_all() -> _Answers:
            return _Answers(self._queue([c.prompt for c in calls], first, stream=False))

        answers = await checked(queue_all, discard=_Answers.abandon)
        items = await thread_stream(lambda: iter(answers), abandon=answers.abandon)
        try:
            results = [r async for r in items]
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
    """A queued engine call's stream chunks, each tagged with its row (``UniTEEngine.stream``
    over ``submit``, so the call is checked and queued before anything waits): its requests'
    in order (one unless the call has more rows than ``max_batch_rows``), a request's ``Done``
    giving each of its rows' last chunk. ``close()``, or dropping it, cancels the requests (their
    rows leave the batch at the next step); ``abandon()`` does too and also wakes a thread
    waiting for its next chunk (from any thread)."""

    def __init__(self, requests: list[Request]) -> None:
        self._requests = requests
        self._read = 0  # requests read to their end
        self._row = 0  # the first row of the request being read
        self._last: list[StreamChunk] = []  # a finished request's rows' last chunks, to give

    def __iter__(self) -> Decoding:
        return self

    def __next__(self) -> StreamChunk:
        if self._last:
            return self._last.pop(0)
        if self._read == len(self._requests):
            raise StopIteration
        event = self._requests[
            self._read
        ].next_event()  # a Failed event (the engine's error) raises here
        if isinstance(event, Delta):
            return self._rowed(stream_chunk(event))
        self._last = [self._rowed(stream_chunk(event, r)) for r in range(len(event.results))]
        self._read += 1
        self._row += len(event.results)
        return self._last.pop(0)

    def _rowed(self, chunk: StreamChunk) -> StreamChunk:
        """``chunk`` with its row in the whole call (its request's row, after the rows before)."""
        return chunk.model_copy(update={"row": self._row + chunk.row}) if self._row else chunk

    def close(self) -> None:
        self._read = len(self._requests)
        self._last = []
        for request in self._requests:
            request.cancel()

    def abandon(self) -> None:
        """Cancel, and wake a reader blocked on the next event (a cancelled request that is still
        waiting for its row gets no more events from the engine)."""
        self.close()
        for request in self._requests:
            request.events.put(Failed(_Abandoned("the caller left")))

    def __del__(self) -> None:
        for request in self._requests:
            request.cancel()


class _Choice:
    """One choice's chunks from its row's stream chunks (``feed``): content as it becomes safe
    to show, each tool call once its block closes, and a last chunk with the finish reason and
    the complete result."""

    def __init__(self, core: ChatCore, call: PreparedCall) -> None:
        self._core = core
        self._call = call
        self._splitter = ToolCallStream() if call.parse_calls else None
        self._streamed: list[str] = []  # ids of the calls streamed so far: the result keeps them

    def feed(self, piece: StreamChunk) -> list[ChatChunk]:
        splitter = self._splitter
        parts: list[str | ToolCall] = []
        if piece.text:
            parts = splitter.feed(piece.text) if splitter else [piece.text]
        if piece.result is not None and splitter:
            parts += splitter.finish()
        chunks = list(_part_chunks(parts, len(self._streamed)))
        self._streamed += [c.id for chunk in chunks for c in chunk.tool_calls]
        if piece.result is not None:
            call = self._call
            result = self._core.result(piece.result, call.parse_calls, self._streamed, call.tokens)
            chunks.append(ChatChunk(finish_reason=result.finish_reason, result=result))
        return chunks


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
