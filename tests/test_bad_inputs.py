"""Bad inputs, as a hostile user would send them: each is a typed ``UniteError`` at once, and the
engine answers exactly as before right after.

One table across the engine and both adapters (the rules are in ``engine/inputs.py``,
``engine/config.py`` and ``docs/guarantees.md``). A row marked ``xfail`` fails inside the adapter
before the engine sees the input (today; the adapters are being rewritten over a shared chat
core, whose contract suite takes these rows over). A hypothesis test then throws random option
values and random unicode, lone surrogates included, at the engine: each call either works or
raises a ``UniteError``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unite_integrations import (
    ConfigError,
    ContextWindowError,
    GenerationResult,
    InputError,
    UniTEEngine,
    UniteError,
)

BASE = "The capital of France is"
BASE_TOKENS = 5


def user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


def with_calls(calls: Any, content: Any = "") -> list[dict[str, Any]]:
    """A conversation whose assistant turn carries ``calls`` as its tool_calls."""
    return [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": content, "tool_calls": calls},
        {"role": "user", "content": "go on"},
    ]


def call(name: Any = "add", arguments: Any = '{"a": 2}') -> dict[str, Any]:
    return {"id": "c0", "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": function}


def gen(*args: Any, **kw: Any) -> Callable[[UniTEEngine], Any]:
    return lambda e: e.generate(*args, **kw)


def opt(**kw: Any) -> Callable[[UniTEEngine], Any]:
    """A call with these options (and a short budget unless the case sets one)."""
    return lambda e: e.generate([BASE], **{"max_new_tokens": 2, **kw})


def stream(*args: Any, **kw: Any) -> Callable[[UniTEEngine], Any]:
    return lambda e: next(iter(e.stream(*args, **kw)))


def build(*args: Any, **kw: Any) -> Callable[[UniTEEngine], Any]:
    return lambda e: UniTEEngine(*args, **kw)


SUR = "\ud800"  # a lone surrogate: no UTF-8 encoding exists

ENGINE_CASES: list[tuple[str, Callable[[UniTEEngine], Any], type[UniteError]]] = [
    # the prompt list
    ("prompts-bare-string", gen("a bare string"), InputError),
    ("prompts-bytes", gen(b"hi"), InputError),
    ("prompts-bytearray", gen(bytearray(b"hi")), InputError),
    ("prompts-none", gen(None), InputError),
    ("prompts-int", gen(123), InputError),
    ("prompts-a-message-dict", gen({"role": "user", "content": "hi"}), InputError),
    ("prompts-set", gen({"hi"}), InputError),
    ("prompts-generator", gen(p for p in ["hi"]), InputError),
    ("prompts-empty-list", gen([]), InputError),
    ("prompts-empty-tuple", gen(()), InputError),
    # one prompt
    ("prompt-int", gen([123]), InputError),
    ("prompt-float", gen([1.5]), InputError),
    ("prompt-none", gen([None]), InputError),
    ("prompt-bytes", gen([b"hi"]), InputError),
    ("prompt-empty-string", gen([""]), InputError),
    ("prompt-second-is-int", gen(["ok", 7]), InputError),
    ("prompt-too-long", gen(["word " * 10_000], max_new_tokens=2), ContextWindowError),
    # a conversation and its messages
    ("conversation-of-strings", gen([["hi"]]), InputError),
    ("conversation-empty", gen([[]]), InputError),
    ("message-none", gen([[None]]), InputError),
    ("message-without-role", gen([[{"content": "hi"}]]), InputError),
    ("message-unknown-role", gen([[{"role": "wizard", "content": "hi"}]]), InputError),
    ("message-int-role", gen([[{"role": 1, "content": "hi"}]]), InputError),
    ("message-upper-case-role", gen([[{"role": "USER", "content": "hi"}]]), InputError),
    ("content-none", gen([user(None)]), InputError),
    ("content-missing", gen([[{"role": "user"}]]), InputError),
    ("content-parts-list", gen([user([{"type": "text", "text": "hi"}])]), InputError),
    ("content-int", gen([user(5)]), InputError),
    ("content-dict", gen([user({"text": "hi"})]), InputError),
    ("content-bytes", gen([user(b"hi")]), InputError),
    # assistant tool calls
    ("tool-calls-string", gen([with_calls("abc")]), InputError),
    ("tool-calls-ints", gen([with_calls([1, 2])]), InputError),
    ("tool-calls-dict", gen([with_calls(call())]), InputError),
    ("tool-call-function-string", gen([with_calls([{"function": "add"}])]), InputError),
    ("tool-call-without-name", gen([with_calls([{"function": {"arguments": "{}"}}])]), InputError),
    ("tool-call-empty-name", gen([with_calls([call(name="")])]), InputError),
    ("tool-call-int-arguments", gen([with_calls([call(arguments=5)])]), InputError),
    ("tool-call-set-arguments", gen([with_calls([call(arguments={"a": {1}})])]), InputError),
    ("tool-calls-without-content", gen([with_calls([], content=None)]), InputError),
    (
        "tool-calls-on-a-user-message",
        gen([[{"role": "user", "content": "hi", "tool_calls": [call()]}]]),
        InputError,
    ),
    # lone surrogates, wherever they are
    ("surrogate-in-prompt", gen([f"a{SUR}b"]), InputError),
    ("surrogate-low-half-alone", gen(["\udfff"]), InputError),
    ("surrogate-in-user-message", gen([user(f"a{SUR}")]), InputError),
    (
        "surrogate-in-system-message",
        gen([[{"role": "system", "content": SUR}, *user("hi")]]),
        InputError,
    ),
    (
        "surrogate-in-tool-result",
        gen([[*with_calls([call()])[:2], {"role": "tool", "content": SUR, "tool_call_id": "c0"}]]),
        InputError,
    ),
    ("surrogate-in-tool-call-arguments", gen([with_calls([call(arguments=SUR)])]), InputError),
    (
        "surrogate-in-message-name",
        gen([[{"role": "user", "content": "hi", "name": SUR}]]),
        InputError,
    ),
    ("surrogate-in-stop-list", opt(stop=[SUR]), InputError),
    ("surrogate-in-bare-stop", opt(stop=f"x{SUR}"), InputError),
    (
        "surrogate-in-tool-description",
        gen([user("hi")], tools=[tool(name="f", description=SUR)]),
        InputError,
    ),
    ("surrogate-in-tool-name", gen([user("hi")], tools=[tool(name=f"f{SUR}")]), InputError),
    ("surrogate-in-streamed-prompt", stream(f"a{SUR}"), InputError),
    # tools
    ("tools-int", gen([user("hi")], tools=1), ConfigError),
    ("tools-string", gen([user("hi")], tools="add"), ConfigError),
    ("tools-one-dict", gen([user("hi")], tools=tool(name="f")), ConfigError),
    ("tool-int", gen([user("hi")], tools=[1]), ConfigError),
    ("tool-none", gen([user("hi")], tools=[None]), ConfigError),
    ("tool-without-name", gen([user("hi")], tools=[{"type": "function"}]), ConfigError),
    ("tool-empty-name", gen([user("hi")], tools=[tool(name="")]), ConfigError),
    ("tool-function-string", gen([user("hi")], tools=[{"function": "f"}]), ConfigError),
    (
        "tool-string-parameters",
        gen([user("hi")], tools=[tool(name="f", parameters="{}")]),
        ConfigError,
    ),
    ("tool-int-parameters", gen([user("hi")], tools=[tool(name="f", parameters=7)]), ConfigError),
    (
        "tool-list-parameters",
        gen([user("hi")], tools=[tool(name="f", parameters=[1])]),
        ConfigError,
    ),
    ("tool-int-description", gen([user("hi")], tools=[tool(name="f", description=5)]), ConfigError),
    (
        "tool-nan-in-schema",
        gen([user("hi")], tools=[tool(name="f", parameters={"default": math.nan})]),
        ConfigError,
    ),
    # options
    ("max-new-tokens-zero", opt(max_new_tokens=0), ConfigError),
    ("max-new-tokens-negative", opt(max_new_tokens=-1), ConfigError),
    ("max-new-tokens-true", opt(max_new_tokens=True), ConfigError),
    ("max-new-tokens-string", opt(max_new_tokens="4"), ConfigError),
    ("max-new-tokens-float", opt(max_new_tokens=2.0), ConfigError),
    ("max-new-tokens-none", opt(max_new_tokens=None), ConfigError),
    ("min-new-tokens-negative", opt(min_new_tokens=-1), ConfigError),
    ("min-new-tokens-over-max", opt(min_new_tokens=5, max_new_tokens=2), ConfigError),
    ("min-new-tokens-false", opt(min_new_tokens=False), ConfigError),
    ("temperature-inf", opt(temperature=math.inf), ConfigError),
    ("temperature-nan", opt(temperature=math.nan), ConfigError),
    ("temperature-negative", opt(temperature=-0.1), ConfigError),
    ("temperature-string", opt(temperature="0.5"), ConfigError),
    ("temperature-true", opt(temperature=True), ConfigError),
    ("top-p-zero", opt(top_p=0), ConfigError),
    ("top-p-over-one", opt(top_p=1.5), ConfigError),
    ("top-p-nan", opt(top_p=math.nan), ConfigError),
    ("seed-2-to-the-70", opt(seed=2**70, temperature=1.0), ConfigError),
    ("seed-2-to-the-64", opt(seed=2**64, temperature=1.0), ConfigError),
    ("seed-negative", opt(seed=-1, temperature=1.0), ConfigError),
    ("seed-string", opt(seed="5"), ConfigError),
    ("seed-float", opt(seed=1.5), ConfigError),
    ("seed-true", opt(seed=True), ConfigError),
    ("stop-empty-string-in-list", opt(stop=[""]), ConfigError),
    ("stop-empty-string", opt(stop=""), ConfigError),
    ("stop-int-in-list", opt(stop=[1]), ConfigError),
    ("stop-int", opt(stop=5), ConfigError),
    ("stop-set", opt(stop={"a"}), ConfigError),
    ("option-unknown", opt(nucleus=0.5), ConfigError),
    ("option-adapter-spelling", opt(max_tokens=5), ConfigError),
    # streams check the same rules (at the first next(), in the caller's thread)
    ("stream-int", stream(123), InputError),
    ("stream-empty-conversation", stream([]), InputError),
    ("stream-max-new-tokens-true", stream("hi", max_new_tokens=True), ConfigError),
    ("stream-surrogate-stop", stream("hi", stop=[SUR]), InputError),
    # the constructor: nothing is loaded before the arguments are checked
    ("engine-none", build(None), ConfigError),
    ("engine-empty-list", build([]), ConfigError),
    ("engine-int-member", build([1]), ConfigError),
    ("engine-none-member", build([None]), ConfigError),
    ("engine-second-member-int", build(["a", 2]), ConfigError),
    ("engine-int", build(123), ConfigError),
    ("engine-empty-source", build([""]), ConfigError),
    ("engine-surrogate-source", build([f"x{SUR}"]), InputError),
    ("engine-top-k-true", build(["x"], top_k=True), ConfigError),
    ("engine-top-k-string", build(["x"], top_k="5"), ConfigError),
    ("engine-top-k-zero", build(["x"], top_k=0), ConfigError),
    ("engine-weight-inf", build(["x", "y"], weights=[1, math.inf]), ConfigError),
    ("engine-weights-number", build(["x"], weights=5), ConfigError),
    ("engine-weights-count", build(["x", "y"], weights=[1.0]), ConfigError),
    ("engine-retokenize-window-zero", build(["x"], retokenize_window=0), ConfigError),
    ("engine-member-dict-bad-weight", build([{"source": "x", "weight": "heavy"}]), ConfigError),
    ("engine-member-dict-unknown-key", build([{"source": "x", "colour": "red"}]), ConfigError),
    ("engine-cache-dir-int", build(["x"], cache_dir=5), ConfigError),
]


@pytest.fixture(scope="module")
def baseline(hetero: UniTEEngine) -> str:
    return hetero.generate([BASE], max_new_tokens=BASE_TOKENS)[0].text


def check_error(error: BaseException, expected: type[UniteError]) -> None:
    assert type(error) is expected, f"{type(error).__name__}: {error}"
    message = str(error)
    assert len(message) > 20
    message.encode("utf-8")  # printable: never carries the surrogate it complains about


@pytest.mark.parametrize(
    ("case", "expected"),
    [pytest.param(fn, err, id=name) for name, fn, err in ENGINE_CASES],
)
def test_engine_refuses_with_a_typed_error_and_still_answers(hetero, baseline, case, expected):
    with pytest.raises(UniteError) as info:
        case(hetero)
    check_error(info.value, expected)
    assert hetero.generate([BASE], max_new_tokens=BASE_TOKENS)[0].text == baseline


def test_the_rules_accept_what_they_should(hetero):
    """The other side of the table: the edges that are valid stay valid."""
    ok = [
        hetero.generate(("tuple of prompts",), max_new_tokens=2),
        hetero.generate([user("")], max_new_tokens=2),  # empty content: allowed for every role
        hetero.generate([[{"role": "system", "content": ""}, *user("")]], max_new_tokens=2),
        hetero.generate([with_calls([call()], content=None)], max_new_tokens=2),
        hetero.generate([with_calls([call(arguments={"a": 2})])], max_new_tokens=2),
        hetero.generate([user("hi")], tools=[tool(name="f")], max_new_tokens=2),
        hetero.generate([user("hi")], tools=[{"name": "f", "parameters": {}}], max_new_tokens=2),
        hetero.generate([user("hi")], tools=[], max_new_tokens=2),
        hetero.generate([BASE], seed=2**64 - 1, temperature=1.0, max_new_tokens=2),
        hetero.generate([BASE], seed=0, temperature=1, top_p=1, max_new_tokens=2),
        hetero.generate([BASE], min_new_tokens=2, max_new_tokens=2, stop="x"),
        hetero.generate(["emoji 😀 and 中文"], stop=("😀",), max_new_tokens=2),
        # NumPy scalars are numbers too (seeds and budgets often come from arrays)
        hetero.generate([BASE], seed=np.uint64(7), temperature=np.float32(0.5), max_new_tokens=2),
        hetero.generate([BASE], max_new_tokens=np.int64(2)),
    ]
    assert all(isinstance(r[0], GenerationResult) for r in ok)


def test_a_list_changed_after_the_call_changes_nothing(hetero, baseline):
    # The engine copies what it checked; a caller reusing its list cannot reach the worker.
    conversation = user(BASE)
    first = hetero.generate([conversation], max_new_tokens=BASE_TOKENS)[0].text
    conversation[0]["content"] = 5
    again = hetero.generate([user(BASE)], max_new_tokens=BASE_TOKENS)[0].text
    assert first == again


# -- the adapters ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(tiny_dirs):
    from unite_integrations import UniTEChatModel

    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    return UniTEChatModel(members=members, top_k=5, max_tokens=2)


@pytest.fixture(scope="module")
def llm(tiny_dirs):
    from unite_integrations import UniTELLM

    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    return UniTELLM(members=members, top_k=5, max_new_tokens=2)


@pytest.fixture(scope="module")
def chat_baseline(chat) -> str:
    return str(chat.invoke(BASE, max_tokens=BASE_TOKENS).content)


@pytest.fixture(scope="module")
def llm_baseline(llm) -> str:
    return llm.complete(BASE, max_tokens=BASE_TOKENS).text


def _lc(name: str) -> Any:
    from langchain_core import messages

    return getattr(messages, name)


def lc_tool_turns(result: str) -> list[Any]:
    return [
        _lc("HumanMessage")("What is 2 + 3?"),
        _lc("AIMessage")("", tool_calls=[{"name": "add", "args": {"a": 2}, "id": "c0"}]),
        _lc("ToolMessage")(result, tool_call_id="c0"),
    ]


LANGCHAIN_CASES: list[Any] = [
    ("lc-surrogate-prompt", lambda c: c.invoke(f"a{SUR}"), InputError),
    ("lc-surrogate-tuple-message", lambda c: c.invoke([("user", f"a{SUR}")]), InputError),
    ("lc-surrogate-tool-result", lambda c: c.invoke(lc_tool_turns(SUR)), InputError),
    (
        "lc-surrogate-system",
        lambda c: c.invoke([_lc("SystemMessage")(SUR), _lc("HumanMessage")("hi")]),
        InputError,
    ),
    ("lc-empty-conversation", lambda c: c.invoke([]), InputError),
    ("lc-max-tokens-true", lambda c: c.invoke("hi", max_tokens=True), ConfigError),
    ("lc-max-tokens-string", lambda c: c.invoke("hi", max_tokens="4"), ConfigError),
    ("lc-max-tokens-zero", lambda c: c.invoke("hi", max_tokens=0), ConfigError),
    ("lc-max-tokens-float", lambda c: c.invoke("hi", max_tokens=2.5), ConfigError),
    ("lc-temperature-inf", lambda c: c.invoke("hi", temperature=math.inf), ConfigError),
    ("lc-temperature-nan", lambda c: c.invoke("hi", temperature=math.nan), ConfigError),
    ("lc-temperature-string", lambda c: c.invoke("hi", temperature="hot"), ConfigError),
    ("lc-seed-2-to-the-70", lambda c: c.invoke("hi", seed=2**70, temperature=1.0), ConfigError),
    ("lc-seed-string", lambda c: c.invoke("hi", seed="5"), ConfigError),
    ("lc-min-over-max", lambda c: c.invoke("hi", min_tokens=5, max_tokens=2), ConfigError),
    ("lc-top-p-zero", lambda c: c.invoke("hi", top_p=0), ConfigError),
    ("lc-stop-empty", lambda c: c.invoke("hi", stop=[""]), ConfigError),
    ("lc-stop-int-in-list", lambda c: c.invoke("hi", stop=[1]), ConfigError),
    ("lc-stop-surrogate", lambda c: c.invoke("hi", stop=[SUR]), InputError),
    ("lc-unknown-argument", lambda c: c.invoke("hi", foo=1), ConfigError),
    ("lc-other-model", lambda c: c.invoke("hi", model="other"), ConfigError),
    ("lc-tool-choice-without-tools", lambda c: c.invoke("hi", tool_choice="any"), ConfigError),
    (
        "lc-surrogate-tool-schema",
        lambda c: c.invoke("hi", tools=[tool(name="f", description=SUR, parameters={})]),
        InputError,
    ),
    ("lc-stream-surrogate", lambda c: list(c.stream(f"a{SUR}")), InputError),
    ("lc-stream-max-tokens-true", lambda c: list(c.stream("hi", max_tokens=True)), ConfigError),
    ("lc-batch-one-bad", lambda c: c.batch(["ok", f"a{SUR}"]), InputError),
    ("lc-ainvoke-surrogate", lambda c: asyncio.run(c.ainvoke(f"a{SUR}")), InputError),
    (
        "lc-new-temperature-inf",
        lambda c: type(c)(members=c.members, temperature=math.inf),
        ConfigError,
    ),
    ("lc-new-seed-2-to-the-70", lambda c: type(c)(members=c.members, seed=2**70), ConfigError),
    ("lc-new-top-k-zero", lambda c: type(c)(members=c.members, top_k=0), ConfigError),
    ("lc-new-stop-surrogate", lambda c: type(c)(members=c.members, stop=[SUR]), InputError),
    ("lc-new-weight-nan", lambda c: type(c)(members=c.members, weights=[math.nan, 1]), ConfigError),
    ("lc-stop-int", lambda c: c.invoke("hi", stop=5), ConfigError),
    ("lc-tool-int", lambda c: c.invoke("hi", tools=[1]), ConfigError),
    ("lc-new-no-members", lambda c: type(c)(members=[]), ConfigError),
    # LangChain's own conversions and the adapter's pydantic fields, as the package's errors.
    pytest.param(
        lambda c: c.invoke(123),
        InputError,
        id="lc-prompt-int",
    ),
    pytest.param(
        lambda c: c.invoke(None),
        InputError,
        id="lc-prompt-none",
    ),
    pytest.param(
        lambda c: c.invoke(b"hi"),
        InputError,
        id="lc-prompt-bytes",
    ),
    pytest.param(
        lambda c: c.invoke([{"role": "wizard", "content": "x"}]),
        InputError,
        id="lc-unknown-role-dict",
    ),
    pytest.param(
        lambda c: c.invoke("hi", response_format=5),
        ConfigError,
        id="lc-response-format-int",
    ),
    pytest.param(
        lambda c: type(c)(members=None),
        ConfigError,
        id="lc-new-members-none",
    ),
    pytest.param(
        lambda c: type(c)(members=[1]),
        ConfigError,
        id="lc-new-member-int",
    ),
    pytest.param(
        lambda c: type(c)(members=c.members, max_tokens=True),
        ConfigError,
        id="lc-new-max-tokens-true",
    ),
]

LLAMA_INDEX_CASES: list[Any] = [
    ("li-surrogate-prompt", lambda m: m.complete(f"a{SUR}"), InputError),
    ("li-surrogate-raw-prompt", lambda m: m.complete(f"a{SUR}", formatted=True), InputError),
    ("li-empty-raw-prompt", lambda m: m.complete("", formatted=True), InputError),
    ("li-prompt-int", lambda m: m.complete(123), InputError),
    ("li-prompt-none", lambda m: m.complete(None), InputError),
    ("li-empty-conversation", lambda m: m.chat([]), InputError),
    ("li-surrogate-message", lambda m: m.chat(li_user(f"a{SUR}")), InputError),
    (
        "li-surrogate-system",
        lambda m: m.chat([li_message("system", SUR), *li_user("hi")]),
        InputError,
    ),
    ("li-max-tokens-true", lambda m: m.complete("hi", max_tokens=True), ConfigError),
    ("li-max-new-tokens-string", lambda m: m.complete("hi", max_new_tokens="4"), ConfigError),
    ("li-temperature-inf", lambda m: m.complete("hi", temperature=math.inf), ConfigError),
    ("li-temperature-nan", lambda m: m.complete("hi", temperature=math.nan), ConfigError),
    ("li-seed-2-to-the-70", lambda m: m.complete("hi", seed=2**70, temperature=1.0), ConfigError),
    ("li-seed-string", lambda m: m.complete("hi", seed="5"), ConfigError),
    (
        "li-min-over-max",
        lambda m: m.complete("hi", min_new_tokens=9, max_new_tokens=2),
        ConfigError,
    ),
    ("li-top-p-zero", lambda m: m.complete("hi", top_p=0), ConfigError),
    ("li-stop-surrogate", lambda m: m.complete("hi", stop=[SUR]), InputError),
    ("li-stop-int-in-list", lambda m: m.complete("hi", stop=[1]), ConfigError),
    ("li-stop-empty", lambda m: m.complete("hi", stop=[""]), ConfigError),
    ("li-unknown-argument", lambda m: m.complete("hi", foo=1), ConfigError),
    ("li-tool-int", lambda m: m.chat(li_user("hi"), tools=[1]), ConfigError),
    (
        "li-surrogate-tool-name",
        lambda m: m.chat(li_user("hi"), tools=[tool(name=f"f{SUR}", parameters={})]),
        InputError,
    ),
    ("li-tool-choice-int", lambda m: m.chat(li_user("hi"), tool_choice=5), ConfigError),
    ("li-stream-surrogate", lambda m: list(m.stream_complete(f"a{SUR}")), InputError),
    ("li-stream-chat-empty", lambda m: list(m.stream_chat([])), InputError),
    ("li-acomplete-surrogate", lambda m: asyncio.run(m.acomplete(f"a{SUR}")), InputError),
    ("li-new-no-members", lambda m: type(m)(members=[]), ConfigError),
    (
        "li-new-temperature-nan",
        lambda m: type(m)(members=m.members, temperature=math.nan),
        ConfigError,
    ),
    ("li-new-seed-negative", lambda m: type(m)(members=m.members, seed=-1), ConfigError),
    ("li-new-weight-inf", lambda m: type(m)(members=m.members, weights=[math.inf, 1]), ConfigError),
    ("li-new-top-k-zero", lambda m: type(m)(members=m.members, top_k=0), ConfigError),
    ("li-new-stop-surrogate", lambda m: type(m)(members=m.members, stop=[SUR]), InputError),
    ("li-stop-int", lambda m: m.complete("hi", stop=5), ConfigError),
    # These fail in the adapter before the engine sees them, and before LlamaIndex's chat
    # callback, whose start event would raise a pydantic error of its own.
    pytest.param(lambda m: m.chat("hi"), InputError, id="li-chat-string"),
    pytest.param(lambda m: m.chat([1]), InputError, id="li-chat-int-message"),
    pytest.param(lambda m: m.stream_chat("hi"), InputError, id="li-stream-chat-string"),
    pytest.param(lambda m: asyncio.run(m.achat(["hi"])), InputError, id="li-achat-str-message"),
    pytest.param(
        lambda m: asyncio.run(m.astream_chat(li_user("hi")[0])),
        InputError,
        id="li-astream-chat-one-message",
    ),
    pytest.param(
        lambda m: type(m)(members=None),
        ConfigError,
        id="li-new-members-none",
    ),
    pytest.param(
        lambda m: type(m)(members=[1]),
        ConfigError,
        id="li-new-member-int",
    ),
    pytest.param(
        lambda m: type(m)(members=m.members, max_new_tokens=True),
        ConfigError,
        id="li-new-max-new-tokens-true",
    ),
]


def li_message(role: str, content: str) -> Any:
    from llama_index.core.llms import ChatMessage

    return ChatMessage(role=role, content=content)


def li_user(content: str) -> list[Any]:
    return [li_message("user", content)]


def _params(cases: list[Any]) -> list[Any]:
    return [pytest.param(c[1], c[2], id=c[0]) if type(c) is tuple else c for c in cases]


@pytest.mark.parametrize(("case", "expected"), _params(LANGCHAIN_CASES))
def test_langchain_refuses_with_a_typed_error_and_still_answers(
    chat, chat_baseline, case, expected
):
    with pytest.raises(UniteError) as info:
        case(chat)
    check_error(info.value, expected)
    assert chat.invoke(BASE, max_tokens=BASE_TOKENS).content == chat_baseline


@pytest.mark.parametrize(("case", "expected"), _params(LLAMA_INDEX_CASES))
def test_llama_index_refuses_with_a_typed_error_and_still_answers(
    llm, llm_baseline, case, expected
):
    with pytest.raises(UniteError) as info:
        case(llm)
    check_error(info.value, expected)
    assert llm.complete(BASE, max_tokens=BASE_TOKENS).text == llm_baseline


def test_the_table_has_at_least_a_hundred_bad_inputs():
    assert len(ENGINE_CASES) + len(LANGCHAIN_CASES) + len(LLAMA_INDEX_CASES) >= 100


def test_an_empty_message_is_one_rule_in_every_front_end(hetero, chat, llm):
    """Empty content is allowed for every role, as in the OpenAI API and LangChain."""
    assert isinstance(hetero.generate([user("")], max_new_tokens=2)[0].text, str)
    assert isinstance(chat.invoke([("user", "")]).content, str)
    assert isinstance(llm.chat(li_user("")).message.content, str)


def test_an_empty_completion_is_an_empty_user_message_in_llama_index(llm):
    # complete() without formatted=True sends the prompt as a user message, as invoke("") does.
    assert isinstance(llm.complete("").text, str)


# -- random options and random unicode -------------------------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(alphabet=st.one_of(st.characters(), surrogates), max_size=12)
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-2, 4), junk),
        "min_new_tokens": st.one_of(st.integers(-2, 4), junk),
        "temperature": st.one_of(st.floats(), st.integers(-1, 3), junk),
        "top_p": st.one_of(st.floats(), junk),
        "seed": st.one_of(st.integers(-(2**65), 2**66), junk),
        "stop": st.one_of(texts, st.lists(texts, max_size=3), junk),
    },
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool", "wizard"]),
            "content": st.one_of(texts, junk),
        }
    ),
    max_size=3,
)
prompts = st.one_of(texts, messages, junk)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(prompt=prompts, opts=options, streamed=st.booleans())
def test_random_options_and_unicode_work_or_raise_a_unite_error(hetero, prompt, opts, streamed):
    opts.setdefault("max_new_tokens", 3)
    if isinstance(opts["max_new_tokens"], int) and opts["max_new_tokens"] > 4:
        opts["max_new_tokens"] = 4
    try:
        if streamed:
            chunks = list(hetero.stream(prompt, **opts))
            text = "".join(c.text for c in chunks)
            assert chunks[-1].result is not None
            assert text == chunks[-1].result.text
        else:
            text = hetero.generate([prompt], **opts)[0].text
    except UniteError as e:
        str(e).encode("utf-8")  # the message is printable
        return
    assert isinstance(text, str)
    text.encode("utf-8")  # output never holds a lone surrogate


def test_after_the_fuzzing_the_engine_still_answers(hetero, baseline):
    assert hetero.generate([BASE], max_new_tokens=BASE_TOKENS)[0].text == baseline
