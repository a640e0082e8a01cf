"""The server on the real offline pair (SmolLM2-135M-Instruct + Gemma-3-270M): a few requests
through real clients, greedy answers equal to the engine's, a forced tool call that parses."""

from __future__ import annotations

import json
import math

import openai
import pytest
from conftest import REAL_MODELS_MISSING

pytest.importorskip("uvicorn")

from server_harness import running

from unite_integrations.engine.config import ensemble_config
from unite_integrations.engine.registry import get_engine

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING)),
]

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine():
    return get_engine(ensemble_config(MEMBERS, top_k=10))


@pytest.fixture(scope="module")
def client(engine):
    with running(engine) as base:
        yield openai.OpenAI(base_url=base, api_key="none", max_retries=0)


def test_real_chat_stream_and_completion_equal_engine(engine, client):
    model = client.models.list().data[0].id
    assert model == "unite:smollm2-135m-instruct+gemma-3-270m"
    want = engine.generate([QUESTION], max_new_tokens=16)[0]
    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16)
    assert r.choices[0].message.content == want.text
    assert r.model_extra["unite"]["members"] == engine.member_names
    stream = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=16, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want.text
    raw = engine.generate(["The capital of France is"], max_new_tokens=8)[0]
    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8)
    assert c.choices[0].text == raw.text


def test_real_forced_tool_call(client):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    r = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[tool],
        tool_choice="required",
        max_tokens=64,
    )
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_real_framework_clients(engine, client):
    """LangChain's ChatOpenAI and LlamaIndex's OpenAILike, pointed at the server."""
    langchain_openai = pytest.importorskip("langchain_openai")
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage

    base, model = str(client.base_url), client.models.list().data[0].id
    want = engine.generate([QUESTION], max_new_tokens=12)[0].text
    chat = langchain_openai.ChatOpenAI(
        model=model, base_url=base, api_key="none", max_tokens=12, temperature=0
    )
    assert chat.invoke(QUESTION[0]["content"]).content == want
    llm = openai_like.OpenAILike(
        model=model, api_base=base, api_key="none", is_chat_model=True, max_tokens=12, temperature=0
    )
    assert (
        llm.chat([ChatMessage(role="user", content=QUESTION[0]["content"])]).message.content == want
    )


def test_real_top_logprobs(engine, client):
    """The real pair's mixed distribution through the server: sorted alternatives, the greedy
    choice first with the same figure, at most N, probabilities summing to at most 1."""
    model = client.models.list().data[0].id
    r = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=8, logprobs=True, top_logprobs=5
    )
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert r.choices[0].message.content == engine.generate([QUESTION], max_new_tokens=8)[0].text
    for t in content:
        top = [a.logprob for a in t.top_logprobs]
        assert 1 <= len(top) <= 5 and top == sorted(top, reverse=True)
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)
        assert sum(math.exp(x) for x in top) <= 1 + 1e-5
