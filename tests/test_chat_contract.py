"""One contract for every front end: the chat core's behaviour, checked through each adapter.

The contract is written once, against neutral drivers: a ``Driver`` turns neutral calls
(messages as ``(role, text)`` pairs, OpenAI-style tools, the core's option names) into one front
end's calls and its answers back into a neutral ``Answer``. ``CoreDriver`` calls the chat core
itself and is the reference; ``LangChainDriver`` and ``LlamaIndexDriver`` go through
``UniTEChatModel`` and ``UniTELLM``. A new front end (the OpenAI-compatible server) joins by
adding a driver class to ``DRIVERS``: every test below then runs against it too.

What is checked, for every driver: the same answer, options and defaults as the core; one stop
rule (a bare string is one stop string; a call's stop replaces the default); streams that equal
the complete answer, with each tool call streamed whole, numbered from 0 and with the final id;
the same usage; the same typed errors (``UniteError`` subclasses) for the same bad input; and
cancellation that stops decoding (counted in the primary member's forward passes: the engine
on this branch keeps no step counter, so a forward hook counts them).

The members are the tiny byte-level BPE and SentencePiece BPE models of ``tiny_models``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from tiny_models import tiny_model_dir

from unite_integrations.chat import (
    ChatCore,
    ChatDefaults,
    ChatOptions,
    ChatRequest,
    Message,
    ToolCallStream,
    parse_calls,
)
from unite_integrations.engine.config import MemberSpec, ensemble_config
from unite_integrations.engine.engine import UniTEEngine
from unite_integrations.engine.registry import get_engine
from unite_integrations.errors import ConfigError, InputError, UniteError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    }
]
SEA = [("user", "Tell me about the sea")]
#: Plain answers stay short; a tool call in the tiny vocabularies needs more steps.
DEFAULTS: dict[str, Any] = {"max_tokens": 24, "min_tokens": 1}
TOOL_TOKENS = 100


def tiny_members() -> list[MemberSpec]:
    return [
        MemberSpec(source=str(tiny_model_dir(f)), context_window=4096)
        for f in ("bytelevel_bpe", "sentencepiece_bpe")
    ]


# -- the drivers ------------------------------------------------------------------------------


@dataclass
class Answer:
    """A front end's answer in neutral form. For streams, ``deltas`` are the content pieces and
    ``call_chunks`` the streamed calls as ``(index, id, name, arguments)``."""

    content: str
    calls: list[tuple[str, dict[str, Any]]]
    call_ids: list[str]
    usage: tuple[int, int, int]
    finish_reason: str
    deltas: list[str] = field(default_factory=list)
    call_chunks: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)


class Driver:
    """One front end, driven with neutral calls. ``defaults`` are the front end's own option
    fields (neutral names: ``max_tokens``, ``min_tokens``, ``temperature``, ``top_p``, ``seed``,
    ``stop``); a call takes the same names plus ``tools``, ``tool_choice`` (``"auto"``,
    ``"none"``, ``"required"`` or a tool's name) and ``parallel_tool_calls``."""

    name: ClassVar[str]
    #: Whether the front end has a way to pass an option it does not know (a typed API has not).
    takes_unknown_options: ClassVar[bool] = True

    def __init__(self, members: list[Any], **defaults: Any) -> None:
        raise NotImplementedError

    @property
    def engine(self) -> UniTEEngine:
        raise NotImplementedError

    def invoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        raise NotImplementedError

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        """The whole stream, assembled (with its deltas and call chunks)."""
        raise NotImplementedError

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        """The front end's own sync stream, unread (for closing and dropping)."""
        raise NotImplementedError

    async def ainvoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        raise NotImplementedError

    def astream(self, messages: list[tuple[str, str]], **call: Any) -> AsyncIterator[Any]:
        """The front end's own async stream; closing it must release the engine."""
        raise NotImplementedError


class CoreDriver(Driver):
    """The chat core itself: the reference every front end must match."""

    name = "core"
    takes_unknown_options = False

    def __init__(self, members: list[Any], **defaults: Any) -> None:
        config = ensemble_config(members, top_k=5)  # raises ConfigError for a bad ensemble
        stop = defaults.pop("stop", None)
        self.core = ChatCore(
            config,
            defaults=ChatDefaults(**defaults, stop=() if stop is None else tuple(stop)),
        )
        from unite_integrations.chat import engine_options

        engine_options(self.core.defaults, ChatOptions())  # as the adapters validate theirs

    @property
    def engine(self) -> UniTEEngine:
        return self.core.engine

    def request(self, messages: list[tuple[str, str]], **call: Any) -> ChatRequest:
        tools = tuple(call.pop("tools", None) or ())
        choice = call.pop("tool_choice", "auto")
        parallel = call.pop("parallel_tool_calls", None)
        return ChatRequest(
            messages=tuple(Message(r, t) for r, t in messages),  # type: ignore[arg-type]
            options=ChatOptions(**call),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
        )

    @staticmethod
    def answer(result: Any) -> Answer:
        u = result.usage
        return Answer(
            result.content,
            [(c.name, c.arguments) for c in result.tool_calls],
            [c.id for c in result.tool_calls],
            (u.input_tokens, u.output_tokens, u.total_tokens),
            result.finish_reason,
        )

    def invoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        return self.answer(self.core.invoke(self.request(messages, **call)))

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        chunks = list(self.core.stream(self.request(messages, **call)))
        answer = self.answer(chunks[-1].result)
        answer.deltas = [c.content for c in chunks if c.content]
        answer.call_chunks = [
            (t.index, t.id, t.name, json.loads(t.arguments)) for c in chunks for t in c.tool_calls
        ]
        return answer

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        return self.core.stream(self.request(messages, **call))

    async def ainvoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        return self.answer(await self.core.ainvoke(self.request(messages, **call)))

    async def astream(self, messages: list[tuple[str, str]], **call: Any) -> AsyncIterator[Any]:
        chunks = await self.core.astream(self.request(messages, **call))
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()


class LangChainDriver(Driver):
    name = "langchain"

    def __init__(self, members: list[Any], **defaults: Any) -> None:
        from unite_integrations.langchain import UniTEChatModel

        self.llm = UniTEChatModel(members=members, top_k=5, **defaults)

    @property
    def engine(self) -> UniTEEngine:
        return self.llm.load()

    def runnable(self, call: dict[str, Any]) -> Any:
        tools = call.pop("tools", None)
        if tools is None:
            return self.llm
        return self.llm.bind_tools(
            tools,
            tool_choice=call.pop("tool_choice", None),
            parallel_tool_calls=call.pop("parallel_tool_calls", None),
        )

    @staticmethod
    def answer(msg: Any) -> Answer:
        u = msg.usage_metadata
        return Answer(
            msg.content,
            [(c["name"], c["args"]) for c in msg.tool_calls],
            [c["id"] for c in msg.tool_calls],
            (u["input_tokens"], u["output_tokens"], u["total_tokens"]),
            msg.response_metadata["finish_reason"],
        )

    @staticmethod
    def messages(messages: list[tuple[str, str]]) -> list[Any]:
        from langchain_core.messages import ChatMessage

        known = ("system", "user", "assistant")
        return [(r, t) if r in known else ChatMessage(role=r, content=t) for r, t in messages]

    def invoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        return self.answer(self.runnable(call).invoke(self.messages(messages), **call))

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        chunks = list(self.runnable(call).stream(self.messages(messages), **call))
        full = chunks[0]
        for c in chunks[1:]:
            full += c
        answer = self.answer(full)
        answer.deltas = [c.content for c in chunks if c.content]
        answer.call_chunks = [
            (t["index"], t["id"], t["name"], json.loads(t["args"]))
            for c in chunks
            for t in c.tool_call_chunks
        ]
        return answer

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        return self.runnable(call).stream(self.messages(messages), **call)

    async def ainvoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        return self.answer(await self.runnable(call).ainvoke(self.messages(messages), **call))

    async def astream(self, messages: list[tuple[str, str]], **call: Any) -> AsyncIterator[Any]:
        chunks = self.runnable(call).astream(self.messages(messages), **call)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()


class LlamaIndexDriver(Driver):
    name = "llama_index"
    _OPTIONS: ClassVar[dict[str, str]] = {
        "max_tokens": "max_new_tokens",
        "min_tokens": "min_new_tokens",
    }

    def __init__(self, members: list[Any], **defaults: Any) -> None:
        from unite_integrations.llama_index import UniTELLM

        fields = {self._OPTIONS.get(k, k): v for k, v in defaults.items()}
        self.llm = UniTELLM(members=members, top_k=5, **fields)

    @property
    def engine(self) -> UniTEEngine:
        return self.llm.engine

    def args(self, messages: list[tuple[str, str]], call: dict[str, Any]) -> tuple[Any, dict]:
        from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock

        roles = {m.value for m in MessageRole}
        chat = [
            ChatMessage(role=r, content=t)
            if r in roles  # an unknown role gets past LlamaIndex's own validation, as it may
            else ChatMessage.model_construct(role=r, blocks=[TextBlock(text=t)])
            for r, t in messages
        ]
        return chat, {self._OPTIONS.get(k, k): v for k, v in call.items()}

    @staticmethod
    def answer(r: Any) -> Answer:
        from llama_index.core.base.llms.types import ToolCallBlock

        calls = [b for b in r.message.blocks if isinstance(b, ToolCallBlock)]
        u = r.raw["usage"]
        return Answer(
            r.message.content or "",
            [(c.tool_name, c.tool_kwargs) for c in calls],
            [c.tool_call_id for c in calls],
            (u["input_tokens"], u["output_tokens"], u["total_tokens"]),
            r.raw["finish_reason"],
        )

    def invoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        chat, kw = self.args(messages, call)
        return self.answer(self.llm.chat(chat, **kw))

    def stream(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        from llama_index.core.base.llms.types import ToolCallBlock

        chunks = list(self.open_stream(messages, **call))
        answer = self.answer(chunks[-1])
        answer.deltas = [c.delta for c in chunks if c.delta]
        seen: set[str] = set()
        for c in chunks:  # each chunk's message holds every call so far: keep the new ones
            calls = [b for b in c.message.blocks if isinstance(b, ToolCallBlock)]
            for i, b in enumerate(calls):
                if b.tool_call_id not in seen:
                    seen.add(b.tool_call_id or "")
                    answer.call_chunks.append((i, b.tool_call_id, b.tool_name, b.tool_kwargs))
        return answer

    def open_stream(self, messages: list[tuple[str, str]], **call: Any) -> Iterator[Any]:
        chat, kw = self.args(messages, call)
        return self.llm.stream_chat(chat, **kw)

    async def ainvoke(self, messages: list[tuple[str, str]], **call: Any) -> Answer:
        chat, kw = self.args(messages, call)
        return self.answer(await self.llm.achat(chat, **kw))

    async def astream(self, messages: list[tuple[str, str]], **call: Any) -> AsyncIterator[Any]:
        chat, kw = self.args(messages, call)
        chunks = await self.llm.astream_chat(chat, **kw)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()


DRIVERS: list[type[Driver]] = [CoreDriver, LangChainDriver, LlamaIndexDriver]


@pytest.fixture(scope="module")
def core() -> CoreDriver:
    return CoreDriver(tiny_members(), **DEFAULTS)


@pytest.fixture(params=DRIVERS, ids=lambda d: d.name)
def front(request: pytest.FixtureRequest) -> Driver:
    driver: Driver = request.param(tiny_members(), **DEFAULTS)
    return driver


# -- the contract -----------------------------------------------------------------------------


def test_every_front_end_shares_one_engine(front, core):
    assert front.engine is core.engine is get_engine(ensemble_config(tiny_members(), top_k=5))


def test_same_answer_usage_and_finish_reason(front, core):
    expected = core.invoke(SEA)
    got = front.invoke(SEA)
    assert (got.content, got.usage, got.finish_reason) == (
        expected.content,
        expected.usage,
        expected.finish_reason,
    )
    assert got.usage[2] == got.usage[0] + got.usage[1] and got.usage[1] <= DEFAULTS["max_tokens"]
    with_system = [("system", "Be brief."), ("system", "Be kind."), *SEA]
    assert front.invoke(with_system).content == core.invoke(with_system).content


def test_same_options(front, core):
    for call in ({"max_tokens": 3}, {"temperature": 1.0, "seed": 7, "top_p": 0.9}):
        got, expected = front.invoke(SEA, **call), core.invoke(SEA, **call)
        assert (got.content, got.usage) == (expected.content, expected.usage), call
    assert front.invoke(SEA, max_tokens=3).usage[1] <= 3


def test_one_stop_rule(front, core):
    free = core.invoke(SEA).content
    assert len(free) > 8, free
    stop = free[3:6]
    cut = free[: free.index(stop)]
    # A bare string is one stop string (not its characters), in a call and as a default.
    assert front.invoke(SEA, stop=stop).content == cut
    assert front.invoke(SEA, stop=[stop]).content == cut
    assert "".join(front.stream(SEA, stop=stop).deltas) == cut
    with_default = type(front)(tiny_members(), **DEFAULTS, stop=[stop])
    assert with_default.invoke(SEA).content == cut
    # A call's stop replaces the default stop strings (it does not add to them).
    other = free[-3:] if free[-3:] not in free[:-3] else free[-2:]
    replaced = with_default.invoke(SEA, stop=[other]).content
    assert replaced == core.invoke(SEA, stop=[other]).content == free[: free.index(other)]
    assert with_default.invoke(SEA, stop=[]).content == free


def test_stream_equals_invoke(front):
    full = front.invoke(SEA)
    streamed = front.stream(SEA)
    assert "".join(streamed.deltas) == streamed.content == full.content
    assert streamed.usage == full.usage and streamed.finish_reason == full.finish_reason


def test_same_tool_calls_and_tool_call_chunks(front, core):
    call = {"tools": TOOLS, "tool_choice": "required", "max_tokens": TOOL_TOKENS}
    expected = core.invoke([("user", "Add 2 and 3")], **call)
    got = front.invoke([("user", "Add 2 and 3")], **call)
    assert got.calls == expected.calls and len(got.calls) == 1 and got.content == ""
    assert got.finish_reason == "tool_calls" and got.call_ids[0].startswith("call_")
    streamed = front.stream([("user", "Add 2 and 3")], **call)
    assert streamed.calls == expected.calls and "".join(streamed.deltas) == ""
    # each call streamed whole, once, numbered from 0, with the id the final answer gives it
    assert streamed.call_chunks == [(0, streamed.call_ids[0], "add", expected.calls[0][1])]
    named = front.invoke([("user", "hi")], **{**call, "tool_choice": "add"})
    assert [n for n, _ in named.calls] == ["add"]
    none = front.invoke([("user", "hi")], tools=TOOLS, tool_choice="none")
    assert none.calls == [] and none.content == core.invoke([("user", "hi")]).content


def test_async_equals_sync(front):
    async def run() -> tuple[Answer, list[Any]]:
        return await front.ainvoke(SEA), [c async for c in front.astream(SEA)]

    answer, chunks = asyncio.run(run())
    assert answer.content == front.invoke(SEA).content and len(chunks) > 1


BAD_CALLS: list[tuple[str, list[tuple[str, str]], dict[str, Any], type[UniteError], str]] = [
    ("empty conversation", [], {}, InputError, "empty"),
    ("unknown role", [("wizard", "hi")], {}, InputError, "wizard"),
    ("negative temperature", SEA, {"temperature": -1.0}, ConfigError, "temperature"),
    ("no tokens", SEA, {"max_tokens": 0}, ConfigError, "max_new_tokens"),
    ("empty stop string", SEA, {"stop": [""]}, ConfigError, "stop"),
    ("unknown tool", SEA, {"tools": TOOLS, "tool_choice": "sub"}, ConfigError, "sub"),
]


@pytest.mark.parametrize(
    ("messages", "call", "error", "match"),
    [b[1:] for b in BAD_CALLS],
    ids=[b[0] for b in BAD_CALLS],
)
def test_same_typed_errors_for_bad_calls(front, messages, call, error, match):
    def first_chunk(messages: list[tuple[str, str]], **call: Any) -> Any:
        return next(iter(front.open_stream(messages, **call)))

    for run in (front.invoke, first_chunk):
        with pytest.raises(error, match=match):
            run(messages, **dict(call))
    with pytest.raises(error, match=match):
        asyncio.run(front.ainvoke(messages, **dict(call)))
    assert front.invoke(SEA, max_tokens=2).usage[1] <= 2  # and the engine answers right after


def test_bad_tools_are_config_errors(front):
    for tools in ([1], ["add"], [{"type": "function", "function": {}}]):
        with pytest.raises(ConfigError):
            front.invoke(SEA, tools=tools, tool_choice="required")


def test_concurrent_core_calls_equal_single_calls(core):
    """Concurrent calls (the engine's scheduler decodes those that wait together as one batch)
    give each its answer alone."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = [SEA, [("user", "Hello")], SEA]
    requests = [core.request(p) for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        answers = [core.answer(r) for r in pool.map(core.core.invoke, requests)]
    assert [a.content for a in answers] == [core.invoke(p).content for p in prompts]


def test_typed_errors_for_bad_construction_and_unknown_options(front):
    for fields in ({"members": []}, {"members": tiny_members(), "stop": [""]}):
        with pytest.raises(ConfigError):
            type(front)(**{**DEFAULTS, **fields})
    if front.takes_unknown_options:
        with pytest.raises(ConfigError, match="frequency_penalty"):
            front.invoke(SEA, frequency_penalty=1.0)


class _Forwards:
    """Counts the primary member's forward passes (one per prefill or decoding step)."""

    def __init__(self, engine: UniTEEngine) -> None:
        self.engine = engine
        self.n = 0

    def __enter__(self) -> _Forwards:
        self.hook = self.engine.members[0].model.register_forward_hook(self._count)
        return self

    def _count(self, *args: Any) -> None:
        self.n += 1

    def __exit__(self, *exc: Any) -> None:
        # The engine decodes one batch at a time: once a later call is answered, whatever was
        # cancelled before it has stopped decoding.
        self.engine.generate(["x"], max_new_tokens=1)
        self.hook.remove()


LONG = {"max_tokens": 1000, "min_tokens": 1000}


def test_closing_an_async_stream_stops_decoding(front):
    async def first_then_close() -> None:
        chunks = front.astream(SEA, **LONG)
        await anext(chunks)
        await chunks.aclose()

    with _Forwards(front.engine) as forwards:
        asyncio.run(first_then_close())
    assert forwards.n < 500  # not cancelled: 1000 steps


def test_cancelling_an_async_call_stops_decoding(front):
    async def cancel_once_decoding(forwards: _Forwards) -> None:
        task = asyncio.ensure_future(front.ainvoke(SEA, **LONG))
        while forwards.n < 2 and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()  # as asyncio.wait_for does at its timeout
        with pytest.raises(asyncio.CancelledError):
            await task

    with _Forwards(front.engine) as forwards:
        asyncio.run(cancel_once_decoding(forwards))
    assert forwards.n < 500


def test_closing_or_dropping_a_sync_stream_stops_decoding(front):
    with _Forwards(front.engine) as forwards:
        stream = front.open_stream(SEA, **LONG)
        next(iter(stream))
        del stream  # dropped unread: CPython closes it at once
    assert forwards.n < 500


# -- the core's pieces, on their own ----------------------------------------------------------

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


@pytest.mark.parametrize(
    "text",
    [
        "plain text, no calls",
        "  leading and trailing space \n",
        "a < b and <tool_ but not a call <",
        CALL,
        f"{CALL}\n{CALL}",
        f"Sure.\n{CALL}\n",
        f"A {CALL} B",
        "<tool_call>\n{not json}\n</tool_call> left as text",
        '<tool_call>\n{"name": "add", "arguments": {"a": 1',  # cut off by the budget
        "中文 <tool_call> 😀",
    ],
)
@pytest.mark.parametrize("size", [1, 3, 1000])
def test_streamed_tool_calls_match_the_complete_answer(text, size):
    stream = ToolCallStream()
    out: list[Any] = []
    for i in range(0, len(text), size):
        out += stream.feed(text[i : i + size])
    out += stream.finish()
    content = "".join(p for p in out if isinstance(p, str))
    expected_content, expected_calls = parse_calls(text)
    assert content == expected_content
    assert [(c.name, c.arguments) for c in out if not isinstance(c, str)] == [
        (c.name, c.arguments) for c in expected_calls
    ]


def test_rendering_rules():
    from unite_integrations.chat import make_message, render

    messages = (
        make_message("developer", "Be terse.", where="m0"),
        make_message("system", ["Answer", "in English."], where="m1"),
        make_message("human", "hi", where="m2"),
    )
    assert render(messages) == [
        {"role": "system", "content": "Be terse.\n\nAnswer\nin English."},
        {"role": "user", "content": "hi"},
    ]
    with pytest.raises(InputError, match="critic"):
        make_message("critic", "x", where="m")
    from unite_integrations.chat import make_tool_call

    with pytest.raises(InputError, match="JSON"):
        make_tool_call("c1", "add", "{not json", "m")
    with pytest.raises(InputError, match="tool name"):
        make_tool_call("c1", 3, {}, "m")
    assert make_tool_call(None, "add", '{"a": 1}', "m").arguments == {"a": 1}
    with pytest.raises(InputError, match="role 'critic'"):
        render((Message("critic", "x"),))  # type: ignore[arg-type]  # as a careless front end
    with pytest.raises(InputError, match="tool_calls"):
        render((Message("assistant", "", tool_calls="add"),))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="tool_calls"):
        render((Message("assistant", "", tool_calls=(1, 2)),))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="content"):
        render((Message("user", 5),))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ChatOptions"):
        ChatCore(ensemble_config(tiny_members())).prepare(
            ChatRequest(messages=(Message("user", "x"),), options={"max_tokens": 3})  # type: ignore[arg-type]
        )


def test_the_core_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, unite_integrations.chat; "
        "print(any(m.split('.')[0] in ('langchain_core', 'llama_index') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
