"""Framework clients against the server: LangChain's ``ChatOpenAI`` and LlamaIndex's
``OpenAILike`` with ``base_url`` pointing at the in-process server (tiny models)."""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn")
langchain_openai = pytest.importorskip("langchain_openai")
openai_like = pytest.importorskip("llama_index.llms.openai_like")

from langchain_core.tools import tool  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402
from server_harness import running  # noqa: E402

from unite_integrations.chat import ChatDefaults  # noqa: E402


@pytest.fixture(scope="module")
def base(hetero):
    with running(
        hetero,
        model_name="tiny",
        api_key="sk-test",
        defaults=ChatDefaults(max_json_string_length=12),
    ) as url:
        yield url


@pytest.fixture(scope="module")
def chat(base):
    return langchain_openai.ChatOpenAI(
        model="tiny", base_url=base, api_key="sk-test", max_tokens=10, temperature=0, max_retries=0
    )


@tool
def get_weather(city: str) -> str:
    """Weather for a city."""
    return "sunny"


class Person(BaseModel):
    name: str = Field(max_length=10)
    age: int


def test_langchain_invoke_and_stream_equal_engine(hetero, chat):
    want = hetero.generate([[{"role": "user", "content": "Hello world"}]], max_new_tokens=10)[0]
    msg = chat.invoke("Hello world")
    assert msg.content == want.text
    assert msg.usage_metadata["output_tokens"] == want.usage.output_tokens
    assert "".join(c.text for c in chat.stream("Hello world")) == want.text


def test_langchain_bind_tools_makes_a_call(chat):
    bound = chat.bind_tools([get_weather], tool_choice="required")
    msg = bound.invoke("What's the weather in Paris?", max_tokens=100)
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert isinstance(msg.tool_calls[0]["args"]["city"], str)
    assert msg.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(chat, method):
    out = chat.with_structured_output(Person, method=method).invoke(
        "Describe a person.", max_tokens=100
    )
    assert isinstance(out, Person)


def test_langchain_json_mode(chat):
    msg = chat.bind(response_format={"type": "json_object"}).invoke(
        "A person as JSON:", max_tokens=100
    )
    assert isinstance(__import__("json").loads(msg.content), dict)


def test_llama_index_chat_and_stream(hetero, base):
    from llama_index.core.llms import ChatMessage

    llm = openai_like.OpenAILike(
        model="tiny",
        api_base=base,
        api_key="sk-test",
        is_chat_model=True,
        max_tokens=10,
        temperature=0,
        max_retries=0,
    )
    want = hetero.generate([[{"role": "user", "content": "Hello world"}]], max_new_tokens=10)[0]
    messages = [ChatMessage(role="user", content="Hello world")]
    assert llm.chat(messages).message.content == want.text
    assert "".join(r.delta or "" for r in llm.stream_chat(messages)) == want.text
    completion = openai_like.OpenAILike(
        model="tiny", api_base=base, api_key="sk-test", max_tokens=6, temperature=0
    )
    raw = hetero.generate(["Once upon a time"], max_new_tokens=6)[0]
    assert completion.complete("Once upon a time").text == raw.text
