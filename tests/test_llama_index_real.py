"""``UniTELLM`` on the two real offline models (SmolLM2-135M-Instruct + Gemma-3-270M), and the
two recipes in ``examples/``: RAG over ``examples/llama_docs`` and a FunctionAgent with a tool.

The members are tiny for instruction following; these tests pin what they do (greedy decoding is
deterministic), not what a large model would do. About 1-2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import real_models_mark

pytest.importorskip("llama_index.core")

import llama_index.core
from llama_index.core import Settings
from llama_index.core.agent.workflow import ToolCallResult
from llama_index.core.base.llms.types import ChatMessage

from unite_integrations.llama_index import UniTELLM

pytestmark = [
    pytest.mark.real,
    real_models_mark,
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ALIASES = ["smollm2-135m-instruct", "gemma-3-270m"]


@pytest.fixture
def recipes() -> Iterator[None]:
    """The recipes set LlamaIndex's global Settings (as applications do): restore them after."""
    saved = {k: getattr(Settings, k) for k in ("_llm", "_embed_model", "_tokenizer")}
    tokenizer = llama_index.core.global_tokenizer
    sys.path.insert(0, str(EXAMPLES))
    yield
    sys.path.remove(str(EXAMPLES))
    for k, v in saved.items():
        setattr(Settings, k, v)
    llama_index.core.global_tokenizer = tokenizer


def test_real_pair_chat_stream_and_metadata():
    llm = UniTELLM(members=ALIASES, max_new_tokens=16)
    meta = llm.metadata
    assert llm.engine.context_window == 8192  # SmolLM2's window; Gemma-3-270M has 32768
    assert 8000 < meta.context_window < 8192
    assert meta.model_name == "unite:smollm2-135m-instruct+gemma-3-270m"
    messages = [ChatMessage(role="user", content="What is the capital of France?")]
    r = llm.chat(messages)
    assert "Paris" in (r.message.content or "")
    chunks = list(llm.stream_chat(messages))
    assert "".join(c.delta or "" for c in chunks) == chunks[-1].message.content
    assert chunks[-1].message.content == r.message.content
    per_member = r.raw["usage"]["input_tokens_per_member"]
    assert set(per_member) == set(ALIASES)


def test_rag_recipe_answers_from_the_local_notes(recipes):
    from llama_index_rag import build_query_engine

    query_engine = build_query_engine()
    response = query_engine.query("What is the capital of Quillon?")
    sources = {n.node.metadata["file_name"] for n in response.source_nodes}
    assert "quillon_overview.md" in sources
    assert "Varneth" in str(response)


def test_agent_recipe_calls_the_tool_with_the_right_argument(recipes):
    from llama_index_agent import QUESTION, build_agent

    async def run() -> tuple[Any, list[ToolCallResult]]:
        handler = build_agent().run(QUESTION)
        results = [e async for e in handler.stream_events() if isinstance(e, ToolCallResult)]
        return await handler, results

    response, results = asyncio.run(run())
    (result,) = results
    assert result.tool_name == "drels_to_pins" and result.tool_kwargs == {"drels": 3}
    assert str(response).strip() == "36"
