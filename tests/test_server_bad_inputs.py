"""The bad-input table (``tests/test_bad_inputs.py``) through HTTP: every row that applies to the
OpenAI-compatible API, sent as a request body, plus what only a body can get wrong (malformed
tools such as ``"parameters": 7``, strings, floats and booleans for integer fields, bad JSON).
Each is a 4xx in OpenAI's error shape naming the field (``param``), never a 500, and the server
answers as before right after.

Then the same refusals while the engine is stalled: a request is checked before it waits for
anything (the body, options, messages and tools on the event loop; the engine's own checks in a
pool that never waits for decoding), so a malformed request is answered at once even with
every row taken and the queue full, and it never takes a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx
import pytest

pytest.importorskip("uvicorn")

from server_harness import running
from test_bad_inputs import ENGINE_CASES, SUR, call, tool, user, with_calls
from test_cancellation import gate_after

from unite_integrations import ConfigError
from unite_integrations.chat import ChatCore, ChatRequest, Message, bridge
from unite_integrations.chat import core as chat_core
from unite_integrations.engine.inputs import MAX_NESTING

USER = [{"role": "user", "content": "hi"}]
CHAT = "/chat/completions"
COMPLETIONS = "/completions"


class Row(NamedTuple):
    path: str
    body: dict[str, Any] | bytes  # bytes: sent as they are
    param: str | None  # the field the error must name (None: the body as a whole)
    status: int = 400
    code: str | None = None  # checked where given


def chat(param: str | None, status: int = 400, code: str | None = None, **fields: Any) -> Row:
    return Row(
        CHAT, {"model": "tiny", "messages": USER, "max_tokens": 2, **fields}, param, status, code
    )


def comp(param: str | None, status: int = 400, code: str | None = None, **fields: Any) -> Row:
    return Row(
        COMPLETIONS,
        {"model": "tiny", "prompt": "hi", "max_tokens": 2, **fields},
        param,
        status,
        code,
    )


def raw(path: str, text: bytes, code: str = "invalid_json") -> Row:
    return Row(path, text, None, 400, code)


def nested(depth: int) -> dict[str, Any]:
    """A JSON schema whose dicts nest ``depth`` deep (``{"not": {"not": ...}}``)."""
    schema: dict[str, Any] = {}
    for _ in range(depth - 1):
        schema = {"not": schema}
    return schema


BAD_UTF8 = b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}'
CALL = "messages[1].tool_calls[0].function"
TOOL = "tools[0].function"
NOT_OVER_HTTP = "NOT OVER HTTP"
ENGINE = "the server's engine is built before it serves (tests/test_server_cli.py checks the flags)"

#: Each row of ``test_bad_inputs.ENGINE_CASES`` as a request, or why it does not apply to HTTP.
FROM_THE_TABLE: dict[str, Row | str] = {
    # the prompt list
    "prompts-bare-string": chat("messages", code="invalid_type", messages="a bare string"),
    "prompts-bytes": raw(CHAT, BAD_UTF8),
    "prompts-bytearray": raw(COMPLETIONS, b'{"model": "tiny", "prompt": "\xc3\x28"}'),
    "prompts-none": chat("messages", messages=None),
    "prompts-int": chat("messages", messages=123),
    "prompts-a-message-dict": chat("messages", messages={"role": "user", "content": "hi"}),
    "prompts-set": "JSON has no sets",
    "prompts-generator": "JSON has no generators",
    "prompts-empty-list": chat("messages", messages=[]),
    "prompts-empty-tuple": comp("prompt", prompt=[]),
    # one prompt
    "prompt-int": comp("prompt", prompt=123),
    "prompt-float": comp("prompt", prompt=1.5),
    "prompt-none": comp("prompt", prompt=None),
    "prompt-bytes": "JSON has no bytes (a body that is not UTF-8 is prompts-bytes' row)",
    "prompt-empty-string": comp("prompt", prompt=""),
    "prompt-second-is-int": comp("prompt[1]", prompt=["ok", 7]),
    "prompt-too-long": chat(
        "messages", code="context_length_exceeded", messages=user("word " * 10_000)
    ),
    # a conversation and its messages
    "conversation-of-strings": chat("messages[0]", messages=["hi"]),
    "conversation-empty": chat("messages", messages=[], stream=True),
    "message-none": chat("messages[0]", messages=[None]),
    "message-without-role": chat("messages[0].role", messages=[{"content": "hi"}]),
    "message-unknown-role": chat("messages[0].role", messages=[{"role": "wizard", "content": "x"}]),
    "message-int-role": chat("messages[0].role", messages=[{"role": 1, "content": "hi"}]),
    "message-upper-case-role": "the chat core's role table reads a role in any case (every "
    "front end's spelling), so 'USER' is a user turn through every front end",
    "content-none": chat("messages[0].content", messages=user(None)),
    "content-missing": chat("messages[0].content", messages=[{"role": "user"}]),
    "content-parts-list": "OpenAI's content parts: the server joins text parts (other parts are "
    "SERVER_ROWS' content-part rows)",
    "content-int": chat("messages[0].content", messages=user(5)),
    "content-dict": chat("messages[0].content", messages=user({"text": "hi"})),
    "content-bytes": "JSON has no bytes",
    # assistant tool calls
    "tool-calls-string": chat("messages[1].tool_calls", messages=with_calls("abc")),
    "tool-calls-ints": chat("messages[1].tool_calls[0]", messages=with_calls([1, 2])),
    "tool-calls-dict": chat("messages[1].tool_calls", messages=with_calls(call())),
    "tool-call-function-string": chat(CALL, messages=with_calls([{"function": "add"}])),
    "tool-call-without-name": chat(
        f"{CALL}.name", messages=with_calls([{"function": {"arguments": "{}"}}])
    ),
    "tool-call-empty-name": chat(f"{CALL}.name", messages=with_calls([call(name="")])),
    "tool-call-int-arguments": chat(f"{CALL}.arguments", messages=with_calls([call(arguments=5)])),
    "tool-call-set-arguments": chat(
        f"{CALL}.arguments", messages=with_calls([call(arguments=[1, 2])])
    ),
    "tool-calls-without-content": chat("messages[1].content", messages=with_calls([], None)),
    "tool-calls-on-a-user-message": chat(
        "messages[0].tool_calls",
        messages=[{"role": "user", "content": "hi", "tool_calls": [call()]}],
    ),
    # lone surrogates, wherever they are
    "surrogate-in-prompt": comp("prompt", prompt=f"a{SUR}b"),
    "surrogate-low-half-alone": comp("prompt", prompt="\udfff"),
    "surrogate-in-user-message": chat("messages[0].content", messages=user(f"a{SUR}")),
    "surrogate-in-system-message": chat(
        "messages[0].content", messages=[{"role": "system", "content": SUR}, *USER]
    ),
    "surrogate-in-tool-result": chat(
        "messages[2].content",
        messages=[
            *with_calls([call()])[:2],
            {"role": "tool", "content": SUR, "tool_call_id": "c0"},
        ],
    ),
    "surrogate-in-tool-call-arguments": chat(
        f"{CALL}.arguments", messages=with_calls([call(arguments=SUR)])
    ),
    "surrogate-in-message-name": chat(
        "messages[0].name", messages=[{"role": "user", "content": "hi", "name": SUR}]
    ),
    "surrogate-in-stop-list": chat("stop", stop=[SUR]),
    "surrogate-in-bare-stop": chat("stop", stop=f"x{SUR}"),
    "surrogate-in-tool-description": chat(
        f"{TOOL}.description", tools=[tool(name="f", description=SUR)]
    ),
    "surrogate-in-tool-name": chat(f"{TOOL}.name", tools=[tool(name=f"f{SUR}")]),
    "surrogate-in-streamed-prompt": chat(
        "messages[0].content", messages=user(f"a{SUR}"), stream=True
    ),
    # tools
    "tools-int": chat("tools", tools=1),
    "tools-string": chat("tools", tools="add"),
    "tools-one-dict": chat("tools", tools=tool(name="f")),
    "tool-int": chat("tools[0]", tools=[1]),
    "tool-none": chat("tools[0]", tools=[None]),
    "tool-without-name": chat("tools[0].name", tools=[{"type": "function"}]),
    "tool-empty-name": chat(f"{TOOL}.name", tools=[tool(name="")]),
    "tool-function-string": chat(TOOL, tools=[{"function": "f"}]),
    "tool-string-parameters": chat(f"{TOOL}.parameters", tools=[tool(name="f", parameters="{}")]),
    "tool-int-parameters": chat(f"{TOOL}.parameters", tools=[tool(name="f", parameters=7)]),
    "tool-list-parameters": chat(f"{TOOL}.parameters", tools=[tool(name="f", parameters=[1])]),
    "tool-int-description": chat(f"{TOOL}.description", tools=[tool(name="f", description=5)]),
    "tool-nan-in-schema": raw(
        CHAT,
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
        b'"function": {"name": "f", "parameters": {"default": NaN}}}]}',
    ),
    # options
    "max-new-tokens-zero": chat("max_tokens", max_tokens=0),
    "max-new-tokens-negative": chat("max_tokens", max_tokens=-1),
    "max-new-tokens-true": chat("max_tokens", code="invalid_type", max_tokens=True),
    "max-new-tokens-string": chat("max_tokens", code="invalid_type", max_tokens="4"),
    "max-new-tokens-float": chat("max_tokens", code="invalid_type", max_tokens=2.0),
    "max-new-tokens-none": "null is OpenAI's 'the default' (the server's --max-tokens)",
    "min-new-tokens-negative": chat("min_tokens", min_tokens=-1),
    "min-new-tokens-over-max": chat("min_tokens", min_tokens=5, max_tokens=2),
    "min-new-tokens-false": chat("min_tokens", code="invalid_type", min_tokens=False),
    "temperature-inf": Row(  # JSON's nearest: a number too large for a float
        CHAT,
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
        "temperature",
        code="invalid_value",
    ),
    "temperature-nan": raw(
        CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    ),
    "temperature-negative": chat("temperature", temperature=-0.1),
    "temperature-string": chat("temperature", code="invalid_type", temperature="0.5"),
    "temperature-true": chat("temperature", code="invalid_type", temperature=True),
    "top-p-zero": chat("top_p", top_p=0),
    "top-p-over-one": chat("top_p", top_p=1.5),
    "top-p-nan": raw(CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}'),
    "seed-2-to-the-70": chat("seed", seed=2**70, temperature=1.0),
    "seed-2-to-the-64": chat("seed", seed=2**64, temperature=1.0),
    "seed-negative": chat("seed", seed=-1, temperature=1.0),
    "seed-string": chat("seed", code="invalid_type", seed="5"),
    "seed-float": chat("seed", code="invalid_type", seed=1.5),
    "seed-true": chat("seed", code="invalid_type", seed=True),
    "stop-empty-string-in-list": chat("stop", stop=[""]),
    "stop-empty-string": chat("stop", stop=""),
    "stop-int-in-list": chat("stop[0]", code="invalid_type", stop=[1]),
    "stop-int": chat("stop", code="invalid_type", stop=5),
    "stop-set": chat("stop", code="invalid_type", stop={"a": True}),  # JSON's nearest: an object
    "option-unknown": "unknown fields are ignored, as vLLM does: clients send more than a "
    "server reads (OpenAI's own unsupported fields are SERVER_ROWS' rows)",
    "option-adapter-spelling": "max_tokens is the HTTP API's own name",
    # streams check the same rules, before the response starts
    "stream-int": chat("messages", messages=123, stream=True),
    "stream-empty-conversation": comp("prompt", prompt="", stream=True),
    "stream-max-new-tokens-true": chat("max_tokens", max_tokens=True, stream=True),
    "stream-surrogate-stop": chat("stop", stop=[SUR], stream=True),
    # the constructor
    **{name: ENGINE for name, _, _ in ENGINE_CASES if name.startswith("engine-")},
}

_INTEGERS = {
    CHAT: ["max_tokens", "max_completion_tokens", "min_tokens", "seed", "n", "top_logprobs"],
    COMPLETIONS: ["max_tokens", "min_tokens", "seed", "n", "logprobs", "best_of"],
}
_NAMES = {CHAT: "chat", COMPLETIONS: "completion"}
_NUMBERS = ["temperature", "top_p", "frequency_penalty", "presence_penalty"]
_BOOLEANS = {CHAT: ["stream", "logprobs", "parallel_tool_calls"], COMPLETIONS: ["stream", "echo"]}


def _typed(path: str, field: str, value: Any) -> Row:
    """``field`` (dotted for a nested object) set to a value of the wrong type."""
    extra: dict[str, Any] = {"logprobs": True} if field == "top_logprobs" else {}
    head, _, leaf = field.rpartition(".")
    body: dict[str, Any] = {head: {leaf: value}} if head else {field: value}
    make = chat if path == CHAT else comp
    return make(field, code="invalid_type", **extra, **body)


WEATHER = tool(name="w", parameters={"type": "object", "properties": {"city": {"type": "string"}}})

#: What only a request body can get wrong (not rows of the engine's table).
SERVER_ROWS: dict[str, Row] = {
    # the tool of issue 26, and the other malformed tool shapes
    "tool-int-parameters-streamed": chat(
        f"{TOOL}.parameters", tools=[tool(name="f", parameters=7)], stream=True
    ),
    "tool-int-parameters-required": chat(
        f"{TOOL}.parameters", tools=[tool(name="f", parameters=7)], tool_choice="required"
    ),
    "tool-int-parameters-second-tool": chat(
        "tools[1].function.parameters", tools=[WEATHER, tool(name="f", parameters=7)]
    ),
    "tool-bool-parameters": chat(f"{TOOL}.parameters", tools=[tool(name="f", parameters=True)]),
    "tool-bare-int-parameters": chat("tools[0].parameters", tools=[{"name": "f", "parameters": 7}]),
    "tool-int-function": chat(TOOL, tools=[{"type": "function", "function": 5}]),
    "tool-empty-function": chat(f"{TOOL}.name", tools=[tool()]),
    "tool-int-name": chat(f"{TOOL}.name", tools=[tool(name=5)]),
    "tool-schema-bad-type": chat("tools", tools=[tool(name="f", parameters={"type": 7})]),
    "tool-schema-bad-ref": chat(
        "tools", tools=[tool(name="f", parameters={"$ref": "#/nowhere"})], tool_choice="required"
    ),
    "tool-schema-too-deep": chat(
        "tools[0]", tools=[tool(name="f", parameters=nested(MAX_NESTING + 5))]
    ),
    "tool-choice-int": chat("tool_choice", code="invalid_type", tool_choice=5),
    "tool-choice-without-tools": chat("tool_choice", tool_choice="required"),
    "tool-choice-unknown-tool": chat(
        "tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "x"}}
    ),
    "tool-choice-int-function": chat(
        "tool_choice", tools=[WEATHER], tool_choice={"type": "function", "function": 5}
    ),
    # structured output
    "response-format-int": chat("response_format", code="invalid_type", response_format=7),
    "response-format-int-schema": chat(
        "response_format.json_schema.schema",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": 7}},
    ),
    "response-format-int-json-schema": chat(
        "response_format.json_schema", response_format={"type": "json_schema", "json_schema": 7}
    ),
    "response-format-bad-schema": chat(
        "response_format",
        response_format={"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}},
        max_tokens=16,
    ),
    "response-format-too-deep": chat(
        "response_format.json_schema.schema",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": nested(MAX_NESTING + 5)},
        },
    ),
    # content parts
    "content-part-image": chat(
        "messages[0].content", messages=user([{"type": "image_url", "image_url": {"url": "x"}}])
    ),
    "content-part-int-text": chat(
        "messages[0].content[0].text", messages=user([{"type": "text", "text": 5}])
    ),
    "content-part-int": chat("messages[0].content[0]", messages=user([5])),
    "tool-call-arguments-not-json": chat(
        f"{CALL}.arguments", messages=with_calls([call(arguments="{not json")])
    ),
    "tool-call-arguments-too-deep": chat(
        f"{CALL}.arguments", messages=with_calls([call(arguments="[" * 5000 + "]" * 5000)])
    ),
    # other fields
    "model-other": chat("model", status=404, model="gpt-4o"),
    "model-int": chat("model", code="invalid_type", model=5),
    "role-list": chat("messages[0].role", messages=[{"role": ["user"], "content": "hi"}]),
    "n-over-the-bound": chat("n", code="invalid_value", n=17),  # MAX_CHOICES is 16
    "n-zero": chat("n", code="invalid_value", n=0),
    "best-of-unlike-n": comp("best_of", n=2, best_of=3),
    "frequency-penalty": chat("frequency_penalty", frequency_penalty=0.5),
    "logit-bias-string": chat("logit_bias.1", code="invalid_type", logit_bias={"1": "x"}),
    "max-tokens-over-the-window": chat("max_tokens", max_tokens=10**9),
    "five-stops": chat("stop", stop=["a", "b", "c", "d", "e"]),
    "gate-string": chat("unite.gate", code="invalid_type", unite={"gate": "0.5"}),
    "gate-over-one": chat("unite.gate", unite={"gate": 1.5}),
    "stream-options-string": chat(
        "stream_options", code="invalid_type", stream=True, stream_options="usage"
    ),
    "completion-second-prompt-too-long": comp(
        "prompt", code="context_length_exceeded", prompt=["ok", "word " * 10_000]
    ),
    # the body itself
    "body-array": raw(CHAT, b"[1, 2]"),
    "body-not-json": raw(CHAT, b"{messages: hi}"),
    "body-infinity": raw(
        CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}'
    ),
    "body-nested-too-deep": raw(CHAT, b"[" * 100_000 + b"]" * 100_000),
    "body-field-nested-too-deep": raw(
        CHAT,
        b'{"messages": [{"role": "user", "content": "hi"}], "tools": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}",
    ),
    # the wrong JSON type for a number, an integer or a boolean field
    **{
        f"{_NAMES[path]}-{field}-{kind}": _typed(path, field, value)
        for path, fields in _INTEGERS.items()
        for field in fields
        for kind, value in (
            ("string", "12"),
            ("float", 12.5),
            ("whole-float", 12.0),
            ("bool", True),
        )
    },
    **{
        f"chat-{field}-{kind}": _typed(CHAT, field, value)
        for field in [*_NUMBERS, "unite.gate"]
        for kind, value in (("string", "0.5"), ("bool", False))
    },
    **{
        f"{_NAMES[path]}-{field}-{kind}": _typed(path, field, value)
        for path, fields in _BOOLEANS.items()
        for field in [*fields, "stream_options.include_usage", "unite.token_provenance"]
        for kind, value in (("string", "true"), ("int", 1))
    },
}

ROWS = {
    **{name: row for name, row in FROM_THE_TABLE.items() if isinstance(row, Row)},
    **SERVER_ROWS,
}


@pytest.fixture(scope="module")
def base(hetero: Any) -> Iterator[str]:
    with running(hetero, model_name="tiny") as url:
        yield url


@pytest.fixture(scope="module")
def baseline(base: str) -> str:
    return _answer(base)


def _answer(base: str) -> str:
    r = httpx.post(base + CHAT, json={"messages": USER, "max_tokens": 5}, timeout=120)
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _send(base: str, row: Row, client: httpx.Client | None = None) -> httpx.Response:
    content = row.body if isinstance(row.body, bytes) else json.dumps(row.body).encode()
    post = client.post if client is not None else httpx.post
    return post(
        base + row.path,
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )


def check_refusal(r: httpx.Response, row: Row) -> None:
    """A 4xx with OpenAI's error body, naming the field."""
    assert r.status_code == row.status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and len(error["message"]) > 20, error
    assert error["type"] in ("invalid_request_error", "not_found"), error
    assert error["param"] == row.param, error
    if row.code is not None:
        assert error["code"] == row.code, error


def test_every_row_of_the_engine_table_is_here_or_said_not_to_apply():
    names = [name for name, _, _ in ENGINE_CASES]
    assert sorted(FROM_THE_TABLE) == sorted(names)
    reasons = [r for r in FROM_THE_TABLE.values() if isinstance(r, str)]
    assert all(len(r) > 15 for r in reasons)
    calls = [r for n, r in FROM_THE_TABLE.items() if not n.startswith("engine-")]
    assert sum(isinstance(r, str) for r in calls) < len(calls) / 8  # most rows apply to HTTP
    assert not set(SERVER_ROWS) & set(FROM_THE_TABLE)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_bad_request_is_an_openai_4xx_naming_the_field(base, baseline, name):
    check_refusal(_send(base, ROWS[name]), ROWS[name])


def test_the_server_answers_as_before_after_them(base, baseline):
    assert _answer(base) == baseline


def test_good_requests_near_the_bad_ones_are_answered(base):
    """The other side: what is valid stays valid (integers for number fields, null for optional
    ones, an assistant turn with tool calls and no content, a tool without parameters)."""
    ok = [
        chat(None, temperature=1, top_p=1, seed=0),
        chat(None, max_tokens=None, stop=None, n=1, tools=None, response_format=None),
        chat(None, messages=with_calls([call()], content=None)),
        chat(None, tools=[tool(name="f")]),
        chat(None, tools=[{"name": "f", "parameters": {}}]),
        chat(None, messages=user([{"type": "text", "text": "hi"}])),
        chat(None, unite={"gate": 1}),
        comp(None, prompt=["a", "b"], logprobs=0),
    ]
    for row in ok:
        r = _send(base, row)
        assert r.status_code == 200, (row.body, r.text)


MALFORMED_TOOLS = [
    (tool(name="f", parameters=7), "tools[0].function.parameters"),
    (tool(name="f", parameters=[1]), "tools[0].function.parameters"),
    (tool(name="f", parameters="{}"), "tools[0].function.parameters"),
    ({"name": "f", "parameters": 7}, "tools[0].parameters"),
    ({"type": "function", "function": 5}, "tools[0].function"),
    (tool(), "tools[0].function.name"),
    (tool(name=5), "tools[0].function.name"),
    (5, "tools[0]"),
]


@pytest.mark.parametrize(("bad", "param"), MALFORMED_TOOLS)
def test_the_python_api_refuses_malformed_tools_the_same_way(hetero, bad, param):
    """The chat core under every front end (sync and async) and the engine: a typed
    ``ConfigError`` naming the field, never a ``TypeError`` from deeper down."""
    core = ChatCore(hetero)
    request = ChatRequest(messages=(Message("user", "hi"),), tools=(bad,))
    for run in (
        lambda: core.check(request),
        lambda: core.invoke(request),
        lambda: asyncio.run(core.astream(request)),
        lambda: hetero.generate([USER], tools=[bad], max_new_tokens=2),
    ):
        with pytest.raises(ConfigError) as info:
            run()
        assert info.value.param == param


# -- a stalled engine ----------------------------------------------------------------------------

#: Refused by the request's own checks (on the event loop) and by the engine's (in the checking
#: pool: prompt encoding, context window, grammar compilation): each must not wait for the engine.
WHILE_BUSY = [
    "prompts-empty-list",
    "stream-empty-conversation",
    "five-stops",
    "max-new-tokens-string",
    "tool-int-parameters",
    "tool-int-parameters-streamed",
    "response-format-int-schema",
    "surrogate-in-user-message",
    "prompt-too-long",
    "tool-schema-bad-type",
    "completion-second-prompt-too-long",
    "body-nested-too-deep",
]


def test_bad_requests_are_answered_at_once_while_the_engine_is_stalled(
    make_engine, tiny_dirs, monkeypatch
):
    """Every row taken, the queue full and the engine held inside a forward pass: malformed
    requests still get their 400s (not 429: checks come before the queue), a valid one gets 429
    at once, none of them takes a worker thread, and the long requests are still in flight
    afterwards and then finish normally."""
    rows, waiting = 1, 6
    # Two checking threads for this test: fewer than the requests waiting for the engine, which
    # must hold none of them.
    checkers = ThreadPoolExecutor(2, thread_name_prefix="test-check")
    monkeypatch.setattr(bridge, "_pool", checkers)
    engine = make_engine(
        tiny_dirs["bytelevel_bpe"],
        tiny_dirs["sentencepiece_bpe"],
        top_k=4,
        max_batch_rows=rows,
        max_queue=waiting,
    )
    workers = [0]  # requests that got a worker thread to wait for their chunks
    real = chat_core.thread_stream

    def counted(*args: Any, **kwargs: Any) -> Any:
        workers[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(chat_core, "thread_stream", counted)
    long = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 6}
    with running(engine, model_name="tiny") as url, gate_after(engine.members[0].model, 0) as gate:
        results: list[tuple[int, str]] = []
        lock = threading.Lock()

        def one(stream: bool) -> None:
            with httpx.Client(timeout=300) as client:
                r = client.post(url + CHAT, json={**long, "stream": stream})
                with lock:
                    results.append((r.status_code, r.text))

        threads = [
            threading.Thread(target=one, args=(i % 2 == 0,), daemon=True)
            for i in range(rows + waiting)
        ]
        # Counted by events: the first request's prefill is held inside its forward pass, then
        # the others fill the queue (each waiting for its chunks in a worker thread).
        threads[0].start()
        _until(gate.waiting.is_set)
        for t in threads[1:]:
            t.start()
        _until(lambda: engine.metrics().queued == waiting and workers[0] == rows + waiting)
        assert engine.metrics().rows_in_flight == rows

        with httpx.Client(timeout=300) as client:
            for name in WHILE_BUSY:
                check_refusal(_send(url, ROWS[name], client), ROWS[name])
            full = client.post(url + CHAT, json={**long, "max_tokens": 2})
            assert full.status_code == 429, full.text
            assert full.json()["error"]["code"] == "overloaded"

        # None of them took a worker thread or a place in the queue, and the long ones are all
        # still waiting for the engine.
        assert workers[0] == rows + waiting
        assert not results and all(t.is_alive() for t in threads)
        assert engine.metrics().queued == waiting
        assert engine.metrics().rows_in_flight == rows

        gate.set()
        for t in threads:
            t.join(300)
    checkers.shutdown()
    assert len(results) == rows + waiting
    for status, text in results:
        assert status == 200, text
        assert text.rstrip().endswith("data: [DONE]") or '"finish_reason"' in text, text


def _until(check: Any, limit: float = 120.0) -> None:
    """Poll ``check`` (the limit only bounds a hung test; nothing is timed)."""
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)
