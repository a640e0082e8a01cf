"""The clients of issue 27 against the server on the real offline pair (SmolLM2-135M-Instruct +
Gemma-3-270M, built-in aliases): the Responses API (plain, stream, a function tool,
``json_schema``), ``ChatOpenAI(use_responses_api=True)`` (invoke, stream, ``bind_tools``,
``with_structured_output``), the Agents SDK with a function tool, ``n=3`` greedy and seeded,
instructor in JSON_SCHEMA mode, LiteLLM and lm-evaluation-harness. Their tiny-model versions
(tests/test_server_responses.py, test_server_n.py, test_server_more_clients.py) cover every
option; these show the same on two real models with different tokenizers. One server for the
module, short answers: each real step costs time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import REAL_MODELS_MISSING

pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from server_harness import running  # noqa: E402
from test_server_more_clients import (  # noqa: E402
    KEY,
    Animal,
    _instructor,
    check_lm_eval_generation,
    run_litellm,
)
from test_server_responses import WEATHER, Person, run_agent  # noqa: E402

from unite_integrations.engine.config import ensemble_config  # noqa: E402
from unite_integrations.engine.registry import get_engine  # noqa: E402

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING)),
]

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
#: The model name the server reports (lm-eval's helper asks for it by that name).
MODEL = "tiny"


@pytest.fixture(scope="module")
def engine():
    return get_engine(ensemble_config(MEMBERS, top_k=10))


@pytest.fixture(scope="module")
def base(engine):
    with running(engine, model_name=MODEL, api_key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)


def test_real_responses_plain_and_stream_equal_engine(engine, client):
    want = engine.generate([QUESTION], max_new_tokens=12)[0]
    r = client.responses.create(model=MODEL, input=QUESTION[0]["content"], max_output_tokens=12)
    assert r.output_text == want.text and want.text
    assert (r.usage.input_tokens, r.usage.output_tokens) == (
        want.usage.input_tokens,
        want.usage.output_tokens,
    )
    events = list(
        client.responses.create(
            model=MODEL, input=QUESTION[0]["content"], max_output_tokens=12, stream=True
        )
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == want.text
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == want.text


def test_real_greedy_n_gives_equal_choices(engine, client):
    want = engine.generate([QUESTION], max_new_tokens=8)[0]
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [want.text] * 3
    assert r.usage.completion_tokens == 3 * want.usage.output_tokens


def test_real_seeded_n_is_reproducible_streamed_or_not(client):
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": QUESTION,
        "n": 3,
        "seed": 1234,
        "temperature": 1.5,
        "max_tokens": 8,
    }
    texts = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert len(set(texts)) > 1, texts  # each choice its own seed
    one = client.chat.completions.create(**{**kw, "n": 1}).choices[0].message.content
    assert texts[0] == one
    streamed = {i: "" for i in range(3)}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert [streamed[i] for i in range(3)] == texts


def test_real_instructor_json_schema_gives_a_valid_instance(base):
    client = _instructor(base, "JSON_SCHEMA")
    out, raw = client.chat.completions.create_with_completion(
        model=MODEL,
        response_model=Animal,
        messages=[{"role": "user", "content": "Describe a pet as JSON."}],
        max_tokens=48,
        temperature=0,
        max_retries=0,  # the first answer, no re-asking
    )
    assert isinstance(out, Animal)
    content = raw.choices[0].message.content
    assert Animal.model_validate_json(content).model_dump() == out.model_dump()


def test_real_litellm_plain_equals_engine(engine, base):
    want = engine.generate([QUESTION], max_new_tokens=8)[0]
    [answer] = run_litellm(
        [
            {
                "model": f"openai/{MODEL}",
                "api_base": base,
                "api_key": KEY,
                "messages": QUESTION,
                "max_tokens": 8,
                "temperature": 0,
            }
        ]
    )
    assert answer["text"] == want.text
    assert answer["completion_tokens"] == want.usage.output_tokens


@pytest.mark.slow
def test_real_lm_eval_generation_matches_engine(engine, base, tmp_path):
    check_lm_eval_generation(engine, base, tmp_path, "local-completions", "completions")


#: Enough steps for a tool call or a small JSON object in the real vocabularies.
CALL_TOKENS = 48


def test_real_responses_function_tool_and_json_schema(client):
    r = client.responses.create(
        model=MODEL,
        input="What's the weather in Paris?",
        tools=[WEATHER],
        tool_choice="required",
        max_output_tokens=CALL_TOKENS,
    )
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    parsed = client.responses.parse(
        model=MODEL, input="Describe a person.", text_format=Person, max_output_tokens=CALL_TOKENS
    )
    assert isinstance(parsed.output_parsed, Person)


def test_real_langchain_responses_api(engine, base):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool

    lc = langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url=base,
        api_key=KEY,
        max_tokens=8,
        temperature=0,
        max_retries=0,
        use_responses_api=True,
    )
    want = engine.generate([QUESTION], max_new_tokens=8)[0]
    assert lc.invoke(QUESTION[0]["content"]).text == want.text
    assert "".join(c.text for c in lc.stream(QUESTION[0]["content"])) == want.text

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        return "sunny"

    bound = lc.bind_tools([get_weather], tool_choice="required")
    msg = bound.invoke("What's the weather in Paris?", max_completion_tokens=CALL_TOKENS)
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    person = lc.with_structured_output(Person).invoke(
        "Describe a person.", max_completion_tokens=CALL_TOKENS
    )
    assert isinstance(person, Person)


def test_real_agents_sdk_run_with_a_function_tool(base):
    out = run_agent(base, CALL_TOKENS, timeout=600)
    assert out["items"][:2] == ["ToolCallItem", "ToolCallOutputItem"]
    assert out["items"][-1] == "MessageOutputItem" and isinstance(out["final"], str)
    assert out["complete"] and out["streamed"] == out["final"]  # greedy: the same run twice
