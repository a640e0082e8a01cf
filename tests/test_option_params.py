"""Every option's error carries its field, set where the error is raised (issue 28).

``GenerationOptions``' validators know their field (pydantic's ``loc``, or the field our own
validator names): the ``ConfigError`` carries it as ``param``. The chat core renames it to the
call's option (``max_new_tokens`` -> ``max_tokens``), and the server answers a 400 whose
``param`` is the body's field, read from the error, never from its message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from unite_integrations import ConfigError, GenerationOptions
from unite_integrations.chat import ChatCore, ChatDefaults, ChatOptions, ChatRequest, Message
from unite_integrations.chat.options import OPTION_NAMES, chat_name, engine_options

#: One bad value per ``GenerationOptions`` field (each refused by that field's own check).
BAD = {
    "max_new_tokens": 0,
    "min_new_tokens": -1,
    "temperature": -1.0,
    "top_p": 0.0,
    "seed": -1,
    "stop": [""],
    "gate": 2.0,
    "top_logprobs": 21,
}

#: The request body's field for each option (``gate`` lives in the ``unite`` extension).
BODY_FIELD = {"gate": "unite.gate"}


def test_every_option_has_a_bad_value_here() -> None:
    assert set(BAD) == set(GenerationOptions.model_fields)
    assert tuple(chat_name(f) for f in GenerationOptions.model_fields) == OPTION_NAMES


@pytest.mark.parametrize("field", sorted(BAD))
def test_a_validator_error_carries_its_field(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationOptions(**{field: BAD[field]})
    assert info.value.param == field


@pytest.mark.parametrize("field", ["max_new_tokens", "seed", "top_logprobs", "temperature"])
def test_a_bool_for_a_number_carries_its_field(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationOptions(**{field: True})
    assert info.value.param == field


def test_the_cross_field_check_and_an_unknown_option_carry_their_field() -> None:
    with pytest.raises(ConfigError) as info:
        GenerationOptions(max_new_tokens=2, min_new_tokens=5)
    assert info.value.param == "min_new_tokens"
    with pytest.raises(ConfigError) as info:
        GenerationOptions(top_k=3)
    assert info.value.param == "top_k"


@pytest.mark.parametrize("field", sorted(BAD))
def test_the_chat_core_names_the_calls_option(field: str) -> None:
    option = chat_name(field)
    with pytest.raises(ConfigError) as info:
        engine_options(ChatDefaults(), ChatOptions(**{option: BAD[field]}))
    assert info.value.param == option


def test_the_engine_takes_the_options_object_or_keywords_not_both(hetero: Any) -> None:
    opts = GenerationOptions(max_new_tokens=3)
    [a] = hetero.generate(["The capital of France is"], options=opts)
    [b] = hetero.generate(["The capital of France is"], max_new_tokens=3)
    assert a.text == b.text and a.usage.output_tokens <= 3
    with pytest.raises(ConfigError) as info:
        hetero.generate(["x"], options=opts, temperature=0.5)
    assert info.value.param == "temperature"
    with pytest.raises(ConfigError):
        hetero.generate(["x"], options={"max_new_tokens": 3})


TOOL = {
    "type": "function",
    "function": {
        "name": "f",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "integer"}},
            "required": ["x"],
        },
    },
}


def test_a_budget_too_small_for_the_grammar_names_the_calls_option(hetero: Any) -> None:
    """The engine's budget check names its field (``max_new_tokens``); the core, whichever way
    it calls the engine, reports the call's option."""
    core = ChatCore(hetero)
    request = ChatRequest(
        messages=(Message("user", "hi"),),
        tools=(TOOL,),
        tool_choice="required",
        options=ChatOptions(max_tokens=2),
    )
    for call in (lambda: core.invoke(request), lambda: core.choices(request)):
        with pytest.raises(ConfigError, match="max_new_tokens=2 cannot hold") as info:
            call()
        assert info.value.param == "max_tokens"
    with pytest.raises(ConfigError) as info:
        core.submit(core.check(request))
    assert info.value.param == "max_tokens"


@pytest.fixture(scope="module")
def base(hetero: Any) -> Iterator[str]:
    pytest.importorskip("uvicorn")
    from server_harness import running

    with running(hetero, model_name="tiny") as url:
        yield url


def _body(option: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    body["max_tokens"] = 2
    if option == "gate":
        body["unite"] = {"gate": value}
    elif option == "top_logprobs":
        body.update(logprobs=True, top_logprobs=value)
    else:
        body[option] = value
    return body


@pytest.mark.parametrize("field", sorted(BAD))
def test_the_servers_param_is_the_errors_field(base: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        GenerationOptions(**{field: BAD[field]})
    assert info.value.param == field
    option = chat_name(field)  # the call's name of the field the validator named
    r = httpx.post(f"{base}/chat/completions", json=_body(option, BAD[field]), timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == BODY_FIELD.get(option, option)


def test_the_servers_param_for_a_budget_too_small_for_the_grammar(base: str) -> None:
    body = {**_body("max_tokens", 2), "tools": [TOOL], "tool_choice": "required"}
    r = httpx.post(f"{base}/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "max_tokens"
