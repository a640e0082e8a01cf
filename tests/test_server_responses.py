"""OpenAI's Responses API (``POST /v1/responses``) against the in-process server (tiny models):
the ``openai`` package's ``client.responses``, LangChain's ``ChatOpenAI(use_responses_api=True)``
and the OpenAI Agents SDK, the event stream's shape, stateless refusals, and the proof that the
endpoint is the chat endpoint behind another wire format (the same greedy text for the same
conversation, tool calls and their outputs included).

The members' context window is widened (as in the chat-core contract) so that an agent's second
turn, which carries the tool's schema, the call and its output, fits.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from pydantic import BaseModel, Field  # noqa: E402
from server_harness import running  # noqa: E402
from test_chat_contract import tiny_members  # noqa: E402

from unite_integrations.chat import ChatDefaults  # noqa: E402
from unite_integrations.engine.config import ensemble_config  # noqa: E402
from unite_integrations.engine.registry import get_engine  # noqa: E402

KEY = "sk-test"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TOOL_TOKENS = 100  # a tool call in the tiny vocabularies needs this many steps
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int


@pytest.fixture(scope="module")
def engine():
    return get_engine(ensemble_config(tiny_members(), top_k=5))


@pytest.fixture(scope="module")
def base(engine):
    defaults = ChatDefaults(max_tokens=12, max_json_string_length=12)
    with running(engine, model_name="tiny", api_key=KEY, defaults=defaults) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)


def post(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        base + "/responses", json={"model": "tiny", **body}, headers=HEADERS, timeout=300
    )


def chat_text(base: str, messages: list[dict[str, Any]], **fields: Any) -> str:
    r = httpx.post(
        base + "/chat/completions",
        json={"model": "tiny", "messages": messages, **fields},
        headers=HEADERS,
        timeout=300,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


# -- the openai package -----------------------------------------------------------------------


def test_create_plain(engine, client):
    want = engine.generate([[{"role": "user", "content": "Hello world"}]], max_new_tokens=10)[0]
    r = client.responses.create(model="tiny", input="Hello world", max_output_tokens=10)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "tiny"
    assert r.store is False  # stateless: nothing kept, whatever was asked
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert [p.type for p in item.content] == ["output_text"]
    assert item.content[0].text == r.output_text == want.text
    u = r.usage
    assert (u.input_tokens, u.output_tokens) == (want.usage.input_tokens, want.usage.output_tokens)
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert u.input_tokens_details.cached_tokens == 0
    assert u.output_tokens_details.reasoning_tokens == 0
    if want.finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed" and r.incomplete_details is None
    extension = r.model_extra["unite"]  # the ensemble's provenance, as on the chat endpoint
    assert "agreement_rate" in extension and set(extension["member_usage"]) == {
        "input_tokens",
        "output_tokens",
    }


def test_budget_end_is_incomplete(client):
    r = client.responses.create(model="tiny", input="Tell me about the sea", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 2 and r.output[0].status == "incomplete"


def test_stream_event_sequence(client):
    full = client.responses.create(model="tiny", input="Hello world", max_output_tokens=10)
    events = list(
        client.responses.create(
            model="tiny", input="Hello world", max_output_tokens=10, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    end = "response.incomplete" if full.status == "incomplete" else "response.completed"
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        end,
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    item_id = events[2].item.id
    assert all(getattr(e, "item_id", item_id) == item_id for e in events[2:-1])
    text = "".join(deltas)
    assert text == full.output_text == events[-4].text == events[-3].part.text
    final = events[-1].response
    assert final.output_text == text and final.output[0].id == item_id
    assert final.usage.output_tokens == full.usage.output_tokens
    assert final.id == events[0].response.id and final.status == full.status


def test_forced_function_call(client):
    r = client.responses.create(
        model="tiny",
        input="What's the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=TOOL_TOKENS,
    )
    assert r.status == "completed"
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert isinstance(json.loads(call.arguments)["city"], str)
    # the call sent back as it came, with the tool's output: the next turn
    history = [
        {"role": "user", "content": "What's the weather in Paris?"},
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    after = client.responses.create(
        model="tiny", input=history, tools=[WEATHER], tool_choice="none", max_output_tokens=4
    )
    assert [o.type for o in after.output] == ["message"]
    named = client.responses.create(
        model="tiny",
        input="hi",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=TOOL_TOKENS,
    )
    assert [o.name for o in named.output] == ["get_weather"]
    none = client.responses.create(
        model="tiny", input="hi", tools=[WEATHER], tool_choice="none", max_output_tokens=5
    )
    assert [o.type for o in none.output] == ["message"]


def test_streamed_function_call(client):
    full = client.responses.create(
        model="tiny",
        input="Weather?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=TOOL_TOKENS,
    )
    events = list(
        client.responses.create(
            model="tiny",
            input="Weather?",
            tools=[WEATHER],
            tool_choice="required",
            max_output_tokens=TOOL_TOKENS,
            stream=True,
        )
    )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added, delta, done, item_done, completed = events[2:]
    assert added.item.arguments == "" and added.item.status == "in_progress"
    assert delta.delta == done.arguments == item_done.item.arguments == full.output[0].arguments
    assert done.name == "get_weather" and item_done.item.call_id == added.item.call_id
    assert completed.response.output[0].call_id == added.item.call_id


def test_stream_helper_accumulates_a_parsed_answer(client):
    # the openai package's own accumulator checks the events' indices and order
    with client.responses.stream(
        model="tiny", input="Describe a person.", text_format=Person, max_output_tokens=TOOL_TOKENS
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert isinstance(final.output_parsed, Person)


def test_text_format_json_schema(client):
    schema = Person.model_json_schema()
    r = client.responses.create(
        model="tiny",
        input="Describe a person.",
        text={
            "format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}
        },
        max_output_tokens=TOOL_TOKENS,
    )
    assert r.status == "completed"
    Person.model_validate(json.loads(r.output_text))  # parses and is an instance of the schema
    assert r.text.format.type == "json_schema"
    parsed = client.responses.parse(
        model="tiny", input="Describe a person.", text_format=Person, max_output_tokens=TOOL_TOKENS
    )
    assert isinstance(parsed.output_parsed, Person)
    obj = client.responses.create(
        model="tiny",
        input="A person as JSON:",
        text={"format": {"type": "json_object"}},
        max_output_tokens=TOOL_TOKENS,
    )
    assert isinstance(json.loads(obj.output_text), dict)


def test_logprobs_on_request(client):
    r = client.responses.create(
        model="tiny",
        input="Hello",
        max_output_tokens=4,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    part = r.output[0].content[0]
    assert len(part.logprobs) == r.usage.output_tokens
    assert "".join(t.token for t in part.logprobs) == part.text
    assert all(len(t.top_logprobs) <= 2 and t.logprob <= 0 for t in part.logprobs)


def test_async_client(base):
    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0)
        answers = await asyncio.gather(
            *(client.responses.create(model="tiny", input=p, max_output_tokens=4) for p in "abc")
        )
        return [a.output_text for a in answers]

    assert len(asyncio.run(run())) == 3


# -- the same core as the chat endpoint ----------------------------------------------------------


def test_same_text_as_chat_completions(base):
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    items = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
        {"type": "function_call", "call_id": "call_1", **call},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "It is sunny."}],
        },
        {"role": "user", "content": "And tomorrow?"},
    ]
    messages = [
        {"role": "system", "content": "Answer in English."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    r = post(
        base,
        {
            "input": items,
            "instructions": "Answer in English.",
            "max_output_tokens": 8,
            "temperature": 0,
        },
    )
    assert r.status_code == 200, r.text
    text = r.json()["output"][0]["content"][0]["text"]
    assert text == chat_text(base, messages, max_completion_tokens=8, temperature=0)
    # sampled with a seed, the two endpoints draw the same tokens too
    sampled = {"temperature": 1.0, "top_p": 0.9, "seed": 7}
    r = post(base, {"input": "Tell me about the sea", "max_output_tokens": 8, **sampled})
    same = chat_text(
        base, [{"role": "user", "content": "Tell me about the sea"}], max_tokens=8, **sampled
    )
    assert r.json()["output"][0]["content"][0]["text"] == same


# -- LangChain ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lc(base):
    langchain_openai = pytest.importorskip("langchain_openai")
    return langchain_openai.ChatOpenAI(
        model="tiny",
        base_url=base,
        api_key=KEY,
        max_tokens=10,
        temperature=0,
        max_retries=0,
        use_responses_api=True,
    )


def test_langchain_invoke_and_stream(engine, lc):
    want = engine.generate([[{"role": "user", "content": "Hello world"}]], max_new_tokens=10)[0]
    msg = lc.invoke("Hello world")
    assert msg.text == want.text
    assert msg.usage_metadata["output_tokens"] == want.usage.output_tokens
    assert msg.response_metadata["id"].startswith("resp_")
    chunks = list(lc.stream("Hello world"))
    assert "".join(c.text for c in chunks) == want.text


# (a call's budget as max_completion_tokens: LangChain's Responses payload lets the model's own
# max_tokens field win over a call's max_tokens)


def test_langchain_bind_tools(lc):
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    for choice in ("required", "get_weather"):
        bound = lc.bind_tools([get_weather], tool_choice=choice)
        msg = bound.invoke("What's the weather in Paris?", max_completion_tokens=TOOL_TOKENS)
        assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
        assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    # the call and its result sent back as history (function_call, function_call_output items)
    from langchain_core.messages import HumanMessage, ToolMessage

    history = [HumanMessage("What's the weather in Paris?"), msg]
    history.append(ToolMessage("sunny", tool_call_id=msg.tool_calls[0]["id"]))
    assert isinstance(lc.invoke(history).text, str)
    streamed = list(bound.stream("Weather?", max_completion_tokens=TOOL_TOKENS))
    full = streamed[0]
    for c in streamed[1:]:
        full += c
    assert [c["name"] for c in full.tool_calls] == ["get_weather"]


def test_langchain_structured_output(lc):
    out = lc.with_structured_output(Person).invoke(
        "Describe a person.", max_completion_tokens=TOOL_TOKENS
    )
    assert isinstance(out, Person)


# -- the OpenAI Agents SDK ------------------------------------------------------------------------


#: Run in a child process: the SDK is driven as an application would drive it, and its global
#: state (tracing, default client) stays out of the test process. (On CPython 3.11.7, running it
#: in the test process also left ``ast.parse`` raising "AST constructor recursion depth
#: mismatch" later in the session: cpython#106905.)
AGENT = """
import asyncio, json, sys
import agents
from agents.models.openai_responses import OpenAIResponsesModel
from openai import AsyncOpenAI

agents.set_tracing_disabled(True)
cities = []


@agents.function_tool
def get_weather(city: str) -> str:
    \"\"\"Weather for a city.\"\"\"
    cities.append(city)
    return "sunny"


client = AsyncOpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
agent = agents.Agent(
    name="weather",
    instructions="Answer with the weather.",
    tools=[get_weather],
    model=OpenAIResponsesModel(model="tiny", openai_client=client),
    # the first turn must call the tool (the tiny members are random); the SDK resets the
    # choice to auto after a call, so the second turn, greedy, answers in text
    model_settings=agents.ModelSettings(
        tool_choice="required", temperature=0, max_tokens=int(sys.argv[3])
    ),
)


async def main():
    result = await agents.Runner.run(agent, "What's the weather in Paris?", max_turns=4)
    streamed = agents.Runner.run_streamed(agent, "What's the weather in Paris?", max_turns=4)
    async for _ in streamed.stream_events():
        pass
    print(json.dumps({
        "items": [type(i).__name__ for i in result.new_items],
        "final": result.final_output,
        "streamed": streamed.final_output,
        "complete": streamed.is_complete,
        "cities": cities,
    }))


asyncio.run(main())
"""


def run_agent(base: str, max_tokens: int, timeout: int = 300) -> dict[str, Any]:
    """``AGENT`` in a child process against the server at ``base``: its report (the run's item
    kinds, final outputs of the plain and the streamed run, the cities the tool was called with)."""
    pytest.importorskip("agents")
    run = subprocess.run(
        [sys.executable, "-c", AGENT, base, KEY, str(max_tokens)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return report


def test_agents_sdk_run_with_a_function_tool(base):
    out = run_agent(base, TOOL_TOKENS)
    kinds = out["items"]
    assert kinds[:2] == ["ToolCallItem", "ToolCallOutputItem"] and kinds[-1] == "MessageOutputItem"
    assert isinstance(out["final"], str) and len(out["cities"]) == 2
    assert out["complete"] and out["streamed"] == out["final"]
    assert out["cities"][0] == out["cities"][1]  # greedy: the same call both times


# -- refusals and errors ----------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("stateful", {"previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
    ("conversation", {"conversation": "conv_1"}, "conversation", "stateless"),
    ("background", {"background": True}, "background", "stateless"),
    ("hosted tool", {"tools": [{"type": "web_search"}]}, "tools[0].type", "function tools"),
    ("hosted choice", {"tool_choice": {"type": "file_search"}}, "tool_choice", None),
    ("format type", {"text": {"format": {"type": "xml"}}}, "text.format.type", None),
    (
        "format schema",
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": 5}}},
        "text.format.schema",
        None,
    ),
    ("no schema", {"text": {"format": {"type": "json_schema"}}}, "text.format.schema", None),
    ("format not an object", {"text": {"format": "json"}}, "text.format", "object"),
    ("string budget", {"max_output_tokens": "5"}, "max_output_tokens", "integer"),
    ("zero budget", {"max_output_tokens": 0}, "max_output_tokens", None),
    ("budget over window", {"max_output_tokens": 10**6}, "max_output_tokens", None),
    ("truncation", {"truncation": "auto"}, "truncation", None),
    ("penalty", {"frequency_penalty": 1.0}, "frequency_penalty", None),
    ("item reference", {"input": [{"type": "item_reference", "id": "m"}]}, "input[0]", None),
    ("unknown item", {"input": [{"type": "computer_call"}]}, "input[0].type", None),
    ("role", {"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role", "wizard"),
    (
        "image",
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
        "input[0].content[0]",
        "text only",
    ),
    (
        "call arguments",
        {
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{bad"},
            ]
        },
        "input[1].arguments",
        "JSON",
    ),
    (
        "no call id",
        {"input": [{"type": "function_call_output", "output": "x"}]},
        "input[0].call_id",
        None,
    ),
    (
        "tool parameters",
        {"tools": [{**WEATHER, "parameters": 7}], "tool_choice": "required"},
        "tools[0].parameters",
        None,
    ),
    (
        "unknown tool choice",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "name": "sub"}},
        "tool_choice",
        "sub",
    ),
    ("empty input", {"input": []}, "input", "empty"),
    ("wrong model", {"model": "gpt-4o"}, "model", None),
]


@pytest.mark.parametrize(("body", "param", "match"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests(base, body, param, match):
    r = post(base, {"input": "hi", "max_output_tokens": 2, **body})
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert "messages" not in error["message"] and "response_format" not in error["message"]
    if match:
        assert match in error["message"]


def test_bad_requests_with_the_client(client):
    with pytest.raises(openai.BadRequestError, match="stateless") as e:
        client.responses.create(model="tiny", input="hi", previous_response_id="resp_123")
    assert e.value.body["param"] == "previous_response_id"
    # a stream is refused before it starts (an HTTP error, not an event)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model="tiny", input="hi", tools=[{"type": "web_search"}], stream=True
        )
    # and the server answers right after
    assert client.responses.create(model="tiny", input="hi", max_output_tokens=2).output_text


def test_nothing_is_stored(base):
    r = httpx.get(base + "/responses/resp_abc", headers=HEADERS)
    assert r.status_code == 404 and "stateless" in r.json()["error"]["message"]
    r = httpx.delete(base + "/responses/resp_abc", headers=HEADERS)
    assert r.status_code == 404
    r = post(base, {"input": "hi", "max_output_tokens": 2, "store": True})
    assert r.status_code == 200 and r.json()["store"] is False
    assert httpx.post(base + "/responses", json={"input": "hi"}).status_code == 401  # key needed


def test_metrics_count_the_endpoint(base, client):
    client.responses.create(model="tiny", input="hi", max_output_tokens=2)
    list(client.responses.create(model="tiny", input="hi", max_output_tokens=2, stream=True))
    text = httpx.get(base.removesuffix("/v1") + "/metrics").text
    assert 'endpoint="responses",status="200"' in text
