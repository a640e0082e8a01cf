"""LangChain's standard integration suite on the real offline pair (SmolLM2-135M-Instruct +
Gemma-3-270M): the same suite as on the tiny members, with real tokenizers, templates and weights.

Every test runs with ``max_tokens=32``, constrained tests too (issue 10): the engine sizes the
closing of a forced call or a schema from the grammar, so the members write the arguments
themselves and the JSON still closes within the budget. Tool-call and structured-output tests
pass because the decoding is constrained: these members rarely write a well-formed call by
themselves. Two tests need more than a 135M + 270M pair can do and are ``xfail`` with that
reason. (On an engine whose closing starts a fixed 32 steps before the budget, a forced call is
closed from its first step, so ``test_tool_calling`` gets ``input=0`` instead of 3.)
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
BUDGET = 32


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
            "max_tokens": BUDGET,
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
