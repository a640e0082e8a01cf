"""LangChain's standard integration suite on the real offline pair (SmolLM2-135M-Instruct +
Gemma-3-270M): the same suite as on the tiny members, with real tokenizers, templates and weights.

Answers are capped at 32 tokens (``max_tokens``) so the suite fits in a few minutes on 2 CPUs;
tests whose answer is a tool call or a JSON instance get 64, because the engine closes a forced
call or a schema within the last 32 steps of the budget and the members need the steps before
that to write the arguments. Those tests pass because the decoding is constrained: these members
rarely write a well-formed call by themselves. Two tests need more than a 135M + 270M pair can
do and are ``xfail`` with that reason.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import real_models_mark
from langchain_tests.integration_tests import ChatModelIntegrationTests
from test_langchain_integration import ASYNCIO_SUITE

from unite_integrations.langchain import UniTEChatModel

pytestmark = [
    pytest.mark.real,
    real_models_mark,
]

MEMBERS = ["smollm2-135m-instruct", "gemma-3-270m"]
TEXT_BUDGET = 32
CONSTRAINED_BUDGET = 64
CONSTRAINED_TESTS = {
    "test_tool_calling",
    "test_tool_calling_async",
    "test_bind_runnables_as_tools",
    "test_tool_choice",
    "test_tool_calling_with_no_arguments",
    "test_structured_few_shot_examples",
    "test_structured_output",
    "test_structured_output_async",
    "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param",
    "test_json_mode",
    "test_agent_loop",
    "test_unicode_tool_call_integration",
}


class TestUniTEChatModelRealPair(ChatModelIntegrationTests):
    pytestmark = ASYNCIO_SUITE

    @property
    def chat_model_class(self) -> type[UniTEChatModel]:
        return UniTEChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "members": MEMBERS,
            "top_k": 10,
            "max_tokens": TEXT_BUDGET,
            "max_json_string_length": 40,  # a joke's setup needs no more; saves decoding steps
        }

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "timeout": 60, "stop": [], "max_retries": 2}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False

    @pytest.mark.xfail(
        strict=True,
        raises=AssertionError,
        reason="needs a model that decides by itself to call the weather tool when asked about "
        "the weather (tool_choice='auto'); the 135M + 270M pair answers in text"
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(
        strict=True,
        raises=AssertionError,
        reason="needs a model that copies '你好啊集团' / 'こんにちは株式会社' into the call's "
        "customer_name; the pair writes a well-formed call with other text"
    )
    def test_unicode_tool_call_integration(self, model: Any, **kwargs: Any) -> None:
        super().test_unicode_tool_call_integration(model, **kwargs)

    @pytest.fixture
    def model(self, request: Any) -> UniTEChatModel:
        budget = (
            CONSTRAINED_BUDGET if request.node.originalname in CONSTRAINED_TESTS else TEXT_BUDGET
        )
        extra = getattr(request, "param", None) or {}
        return UniTEChatModel(**{**self.chat_model_params, "max_tokens": budget, **extra})
