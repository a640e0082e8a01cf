"""UniTEChatModel without decoding: LangChain's standard unit suite, message conversion, options,
tool-call streaming and errors. Nothing here loads a model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from langchain_tests.unit_tests import ChatModelUnitTests

from unite_integrations.chat import PreparedCall, tool_choice
from unite_integrations.chat.messages import render
from unite_integrations.engine.config import MemberSpec
from unite_integrations.engine.registry import loaded_engines
from unite_integrations.errors import ConfigError, InputError
from unite_integrations.langchain import UniTEChatModel
from unite_integrations.langchain._messages import to_core_messages, to_core_request


def engine_kwargs(call: PreparedCall) -> dict[str, Any]:
    """A prepared call's options as the engine's keyword arguments (``gate`` and
    ``top_logprobs`` only where they ask for something: full UniTE, no log-probabilities)."""
    unasked = {"gate": None, "top_logprobs": 0}
    return {
        k: v for k, v in call.generation.model_dump().items() if k not in unasked or v != unasked[k]
    }


def to_engine_messages(messages):
    """The engine's message dicts for a conversation, as the chat core renders them."""
    return render(to_core_messages(messages))


MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]


class TestUniTEChatModelUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[UniTEChatModel]:
        return UniTEChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"members": MEMBERS}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        params = super().standard_chat_model_params
        params.pop("api_key")  # local models: there is no API key to accept
        return params

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # the members are fixed when the ensemble is built


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_construction_is_cheap_and_loads_nothing():
    before = len(loaded_engines())
    llm = UniTEChatModel(members=["no-such-model-anywhere"], max_tokens=8)
    assert len(loaded_engines()) == before
    assert llm.model_name == "unite:no-such-model-anywhere"
    assert llm.profile is not None and llm.profile["tool_calling"] is True
    assert "max_input_tokens" not in llm.profile  # unknown until the members load


def test_fields_and_ls_params():
    llm = UniTEChatModel(
        members=[MemberSpec(source="smollm2-135m-instruct", context_window=2048), "gemma-3-270m"],
        weights=[2, 1],
        top_k=4,
        temperature=0.5,
        max_tokens=32,
        stop=["\n\n"],
        seed=3,
        timeout=30,
        max_retries=2,
    )
    assert llm.model_name == "unite:smollm2-135m-instruct+gemma-3-270m"
    params = llm._get_ls_params()
    assert params == {
        "ls_provider": "unite",
        "ls_model_name": llm.model_name,
        "ls_model_type": "chat",
        "ls_temperature": 0.5,
        "ls_max_tokens": 32,
        "ls_stop": ["\n\n"],
    }
    assert llm._get_ls_params(stop=["x"], max_tokens=5)["ls_stop"] == ["x"]
    config = llm._ensemble_config()
    assert [round(w, 3) for w in config.weights] == [0.667, 0.333] and config.top_k == 4
    assert UniTEChatModel(members="gemma-3-270m").members == ["gemma-3-270m"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"members": MEMBERS, "top_k": 0}, "top_k"),
        ({"members": MEMBERS, "weights": [1.0]}, "weights"),
        ({"members": MEMBERS, "weights": [0.0, 0.0]}, "all zero"),
        ({"members": [""]}, "empty"),
        ({"members": MEMBERS, "temperature": -1}, "temperature"),
        ({"members": MEMBERS, "max_tokens": 0}, "max_new_tokens"),
        ({"members": MEMBERS, "stop": [""]}, "stop"),
    ],
)
def test_bad_configuration_is_a_config_error_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        UniTEChatModel(**kwargs)


def prepare(
    llm: UniTEChatModel, stop: Any = None, kwargs: dict[str, Any] | None = None, messages=None
) -> PreparedCall:
    """The engine call the chat core makes for a LangChain call (nothing is loaded)."""
    messages = messages or [HumanMessage("x")]
    return llm.core.prepare(to_core_request(messages, stop, kwargs or {}, llm.model_name))


def test_call_options_map_to_the_engine():
    llm = UniTEChatModel(members=MEMBERS, max_tokens=20, stop=["END"], temperature=0.7, seed=1)
    call = prepare(llm)
    assert engine_kwargs(call) == {
        "max_new_tokens": 20,
        "min_new_tokens": 0,
        "temperature": 0.7,
        "top_p": 1.0,
        "seed": 1,
        "stop": ("END",),
    }
    assert call.constraint is None and call.tools is None and not call.parse_calls
    call = prepare(llm, ["a", "bb"], {"max_tokens": 5, "temperature": 0.0})
    assert engine_kwargs(call)["stop"] == ("a", "bb") and engine_kwargs(call)["max_new_tokens"] == 5
    # A bare string is one stop string, not a list of characters (issue 9, item 2).
    assert engine_kwargs(prepare(llm, "France"))["stop"] == ("France",)
    assert UniTEChatModel(members=MEMBERS, stop="END").stop == ["END"]
    assert engine_kwargs(prepare(UniTEChatModel(members=MEMBERS)))["max_new_tokens"] == 256
    with pytest.raises(ConfigError, match="unexpected call argument"):
        prepare(llm, None, {"frequency_penalty": 1})
    with pytest.raises(ConfigError, match="members are fixed"):
        prepare(llm, None, {"model": "gpt-4o"})


def test_tools_and_structured_output_constrain_the_decoding():
    llm = UniTEChatModel(members=MEMBERS, stop=["\n"])
    tools = llm.bind_tools([add], tool_choice="any").kwargs  # type: ignore[attr-defined]
    call = prepare(llm, None, tools)
    assert call.tools and call.tools[0]["function"]["name"] == "add"
    assert call.constraint is not None and call.constraint.kind == "tool_calls"
    assert call.parse_calls and engine_kwargs(call)["stop"] == ()  # the grammar decides the end
    auto = prepare(llm, None, {"tools": tools["tools"]})
    assert "start: calls | text" in auto.constraint.lark and engine_kwargs(auto)["stop"] == ("\n",)
    none = prepare(llm, None, {"tools": tools["tools"], "tool_choice": "none"})
    assert none.constraint is None and none.tools is None and not none.parse_calls
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    structured = prepare(llm, None, {"response_format": schema})
    assert structured.constraint.kind == "json_schema" and engine_kwargs(structured)["stop"] == ()
    # The members are told what to write (the grammar only enforces the form).
    asked = prepare(
        llm, None, {"response_format": schema}, [SystemMessage("Be brief."), HumanMessage("x=1")]
    ).prompt
    assert asked[0]["content"].startswith("Be brief.\n\nAnswer with a JSON object that follows")
    assert json.dumps(schema) in asked[0]["content"]
    asked = prepare(llm, None, {"response_format": schema}, [HumanMessage("x=1")]).prompt
    assert asked[0]["role"] == "system" and asked[1] == {"role": "user", "content": "x=1"}
    assert prepare(llm, None, tools, [HumanMessage("x=1")]).prompt == [
        {"role": "user", "content": "x=1"}
    ]
    openai_style = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert prepare(llm, None, {"response_format": openai_style}).constraint == structured.constraint
    any_object = prepare(llm, None, {"response_format": {"type": "json_object"}})
    assert any_object.prompt[0]["content"] == "Answer with a JSON object."
    with pytest.raises(ConfigError, match="not both"):
        prepare(
            llm, None, {"tools": tools["tools"], "tool_choice": "any", "response_format": schema}
        )


def test_tool_choice_spellings():
    def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> str:
        return tool_choice(choice, [t["function"]["name"] for t in tools])

    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    assert _tool_choice(None, tools) == "auto"
    assert _tool_choice("auto", tools) == "auto"
    for forced in ("any", "required", True):
        assert _tool_choice(forced, tools) == "required"
    assert _tool_choice("none", tools) == "none" and _tool_choice(False, tools) == "none"
    assert _tool_choice("add", tools) == "add"
    assert _tool_choice({"type": "function", "function": {"name": "add"}}, tools) == "add"
    with pytest.raises(ConfigError, match="sub"):
        _tool_choice("sub", tools)
    with pytest.raises(ConfigError, match="needs tools"):
        _tool_choice("any", [])
    llm = UniTEChatModel(members=MEMBERS)
    with pytest.raises(ConfigError, match="not 'auto'"):
        llm.bind_tools([add], tool_choice="multiply")


def test_with_structured_output_methods_and_bad_arguments():
    llm = UniTEChatModel(members=MEMBERS)
    schema = {"title": "P", "type": "object", "properties": {"a": {"type": "string"}}}
    for method in ("json_schema", "function_calling", "json_mode"):
        assert llm.with_structured_output(schema, method=method) is not None  # type: ignore[arg-type]
    assert llm.with_structured_output(None, method="json_mode") is not None
    with pytest.raises(ValueError, match="needs a schema"):
        llm.with_structured_output(None)
    with pytest.raises(ValueError, match="unknown method"):
        llm.with_structured_output(schema, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported arguments"):
        llm.with_structured_output(schema, foo=1)


def test_messages_convert_to_engine_dicts():
    messages = [
        SystemMessage("Be terse."),
        SystemMessage([{"type": "text", "text": "Answer in English."}]),
        HumanMessage([{"type": "text", "text": "What is "}, "1 + 2?"], name="ann"),
        AIMessage(
            [{"type": "text", "text": "Let me add."}, {"type": "tool_use", "id": "c1"}],
            tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}],
        ),
        ToolMessage(json.dumps({"result": 3}), tool_call_id="c1", name="add"),
        ChatMessage(role="assistant", content="It is 3."),
    ]
    assert to_engine_messages(messages) == [
        {"role": "system", "content": "Be terse.\n\nAnswer in English."},
        # Text blocks are joined with a newline, in every front end (see the changelog).
        {"role": "user", "content": "What is \n1 + 2?"},
        {
            "role": "assistant",
            "content": "Let me add.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": {"a": 1, "b": 2}},
                }
            ],
        },
        {"role": "tool", "content": '{"result": 3}', "tool_call_id": "c1", "name": "add"},
        {"role": "assistant", "content": "It is 3."},
    ]


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "conversation is empty"),
        ([ChatMessage(role="critic", content="hm")], "role 'critic'"),
        ([FunctionMessage(name="f", content="1")], "FunctionMessage"),
        (
            [HumanMessage([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])],
            "'image_url' content block",
        ),
    ],
)
def test_messages_the_templates_cannot_render_are_input_errors(messages, match):
    with pytest.raises(InputError, match=match):
        to_engine_messages(messages)


def test_bad_input_raises_through_langchain_before_any_loading():
    llm = UniTEChatModel(members=["no-such-model-anywhere"])
    with pytest.raises(InputError, match="empty"):
        llm.invoke([])
    with pytest.raises(InputError, match="critic"):
        llm.invoke([ChatMessage(role="critic", content="hm")])
    with pytest.raises(ConfigError, match="unexpected call argument"):
        llm.invoke("hi", logprobs=True)
