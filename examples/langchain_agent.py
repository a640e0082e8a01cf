"""A LangGraph tool-calling agent whose model is the UniTE ensemble. Runs offline.

    python examples/langchain_agent.py ["your question"] [--auto]

The agent is LangGraph's usual loop: the model either answers or calls tools; ``ToolNode`` runs
the calls and feeds the results back as ``ToolMessage``s, until the model answers in text. The
model is ``UniTEChatModel`` over SmolLM2-135M-Instruct + Gemma-3-270M with two tools about the
invented Marrow Isle (see ``examples/data/``).

Tool calls are decoded under a grammar, so every call the ensemble makes is well-formed JSON
with the tool's argument names and types. Whether it *decides* to call a tool is up to the
members, and a 135M + 270M pair left to ``tool_choice="auto"`` usually answers in text straight
away (try ``--auto``). So by default the first turn must call a tool (``tool_choice="any"``) and
the turns after it choose freely; see ``docs/langchain-agent.md`` for what the pair does.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from unite_integrations.langchain import UniTEChatModel

QUESTION = "When does the ferry to Marrow Isle leave on Friday?"
SYSTEM = (
    "You answer questions about Marrow Isle. Use the tools to look facts up, then answer in one "
    "short sentence."
)

_FERRY = {"wednesday": "no ferry on Wednesdays"}


@tool
def ferry_times(day: str) -> str:
    """Departure times of the ferry from Abery to Marrow Isle on a day of the week."""
    return _FERRY.get(day.strip().lower(), "9:30 and 16:00 from Abery; the crossing takes 75 min")


@tool
def ticket_price(passenger: str) -> str:
    """Price of a return ferry ticket to Marrow Isle for an 'adult' or a 'child'."""
    return "7 crowns" if passenger.strip().lower().startswith("child") else "14 crowns"


TOOLS = [ferry_times, ticket_price]


def build_agent(llm: UniTEChatModel, force_tool: bool = True) -> CompiledStateGraph:  # type: ignore[type-arg]
    """model -> (tools -> model)* -> answer, as LangGraph's prebuilt ReAct agent does."""
    auto = llm.bind_tools(TOOLS)
    forced = llm.bind_tools(TOOLS, tool_choice="any")

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        messages = state["messages"]
        first_turn = not any(isinstance(m, ToolMessage) for m in messages)
        model = forced if force_tool and first_turn else auto
        return {"messages": [model.invoke([SystemMessage(SYSTEM), *messages])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode(TOOLS))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument(
        "--auto", action="store_true", help="let the model decide on the first turn too"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="longest turn, in tokens")
    args = parser.parse_args()

    llm = UniTEChatModel(
        members=["smollm2-135m-instruct", "gemma-3-270m"], max_tokens=args.max_tokens
    )
    agent = build_agent(llm, force_tool=not args.auto)
    start = time.perf_counter()
    print(f"Q: {args.question}")
    state = {"messages": [("human", args.question)]}
    for step in agent.stream(state, {"recursion_limit": 8}, stream_mode="updates"):
        for node, update in step.items():
            for message in update["messages"]:
                if isinstance(message, AIMessage) and message.tool_calls:
                    calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
                    print(f"[{node}] calls {calls}")
                elif isinstance(message, ToolMessage):
                    print(f"[{node}] {message.name} -> {message.content}")
                else:
                    print(f"[{node}] answers: {message.text.strip()}")
    print(f"({time.perf_counter() - start:.1f}s, models loaded on first use)")


if __name__ == "__main__":
    main()
