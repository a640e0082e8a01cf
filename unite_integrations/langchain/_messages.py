"""LangChain messages <-> the chat core's neutral types.

Translation only: roles, text blocks, earlier tool calls and tool results become core
``Message``s (the core renders them, with its one role table and joining rule); core results and
chunks become ``AIMessage``/``AIMessageChunk``s with usage, metadata and tool calls. Content the
members cannot read (images, audio, files) is an ``InputError`` naming the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool

from ..chat import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    ChatUsage,
    Message,
    make_message,
    make_tool_call,
)
from ..chat.frontend import call_options
from ..chat.options import OPTION_NAMES
from ..errors import ConfigError, InputError

__all__ = [
    "ai_message",
    "generation_chunk",
    "openai_tool",
    "to_core_messages",
    "to_core_request",
]

#: The chat core's options a call may set by keyword (and the model's fields default): every
#: generation option but ``stop`` (LangChain's own argument) and ``top_logprobs``, and ``n``.
CALL_OPTIONS = (*(o for o in OPTION_NAMES if o not in ("stop", "top_logprobs")), "n")
#: Keyword arguments a call (``invoke(..., **kwargs)``, ``bind(...)``, ``bind_tools``) may carry.
CALL_KWARGS = frozenset(
    {*CALL_OPTIONS, "tools", "tool_choice", "parallel_tool_calls", "response_format"}
    | {"model", "stream"}
)
_CORE_NAMES = {o: o for o in (*CALL_OPTIONS, "stop")}
#: Call keywords LangChain itself adds (tracing of structured output); not options.
_TRACING_KWARGS = ("ls_structured_output_format", "structured_output_format")

# Content blocks an AI message may carry besides text: its tool calls (rendered from
# ``AIMessage.tool_calls`` instead) and reasoning, which is not replayed to the members.
_AI_SKIPPED_BLOCKS = {
    "tool_use",
    "tool_call",
    "tool_call_chunk",
    "invalid_tool_call",
    "function_call",
    "server_tool_call",
    "server_tool_result",
    "reasoning",
    "thinking",
    "redacted_thinking",
}
_TYPED_ROLES = ((SystemMessage, "system"), (HumanMessage, "user"), (AIMessage, "assistant"))


def to_core_messages(messages: Sequence[BaseMessage]) -> tuple[Message, ...]:
    """The conversation as the core's ``Message``s (``InputError`` names a bad message)."""
    out = []
    for n, message in enumerate(messages):
        where = f"message {n} ({type(message).__name__})"
        if not isinstance(message, BaseMessage):
            raise InputError(f"message {n} is a {type(message).__name__}, not a LangChain message")
        role: object = next((r for cls, r in _TYPED_ROLES if isinstance(message, cls)), None)
        if isinstance(message, ToolMessage):
            role = "tool"
        elif isinstance(message, ChatMessage):
            role = message.role
        elif role is None:
            raise InputError(
                f"{where}: a {type(message).__name__} cannot be rendered by the members' chat "
                "templates; use SystemMessage, HumanMessage, AIMessage, ToolMessage or a "
                "ChatMessage with a known role"
            )
        is_ai = isinstance(message, AIMessage)
        calls = [
            make_tool_call(c.get("id"), c.get("name"), c.get("args"), where)
            for c in (message.tool_calls if isinstance(message, AIMessage) else [])
        ]
        out.append(
            make_message(
                role,
                _texts(message.content, where, skip_tool_blocks=is_ai or role == "assistant"),
                where=where,
                tool_calls=calls,
                tool_call_id=message.tool_call_id if isinstance(message, ToolMessage) else None,
                name=message.name if isinstance(message, ToolMessage) else None,
            )
        )
    return tuple(out)


def to_core_request(
    messages: Sequence[BaseMessage], stop: Any, kwargs: Mapping[str, Any], model_name: str
) -> ChatRequest:
    """A LangChain call as the core's request (bad options: ``ConfigError``)."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _TRACING_KWARGS}
    unknown = sorted(set(kwargs) - CALL_KWARGS)
    if unknown:
        raise ConfigError(
            f"UniTEChatModel got unexpected call argument(s) {', '.join(unknown)}; "
            f"a call accepts {', '.join(sorted(CALL_KWARGS - {'stream'}))} and stop"
        )
    model = kwargs.get("model")
    if model is not None and model != model_name:
        raise ConfigError(
            f"model={model!r}: an ensemble's members are fixed when it is built; create "
            "another UniTEChatModel for other members"
        )
    tools = [openai_tool(t, n) for n, t in enumerate(kwargs.get("tools") or ())]
    fmt = kwargs.get("response_format")
    if fmt is not None and not isinstance(fmt, Mapping):
        try:
            fmt = convert_to_json_schema(fmt)
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"response_format={fmt!r} is not a schema ({e}); give a pydantic class, a "
                "TypedDict, a JSON schema or OpenAI's response_format dict"
            ) from e
    parallel = kwargs.get("parallel_tool_calls")
    return ChatRequest(
        messages=to_core_messages(messages),
        options=call_options({**kwargs, "stop": stop}, _CORE_NAMES),
        tools=tuple(tools),
        tool_choice=kwargs.get("tool_choice"),  # the core reads every spelling
        parallel_tool_calls=None if parallel is None else bool(parallel),
        response_format=fmt,  # the core reads OpenAI's dicts
    )


def openai_tool(tool: Any, n: int) -> dict[str, Any]:
    """A LangChain tool (or function, pydantic class, TypedDict, dict) as an OpenAI tool."""
    try:
        return convert_to_openai_tool(tool)
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"tool {n} ({type(tool).__name__}) is not a tool: pass LangChain tools, functions, "
            f"pydantic classes, TypedDicts or OpenAI tool dicts ({e})"
        ) from e


def _texts(content: Any, where: str, *, skip_tool_blocks: bool) -> str | list[str]:
    """A message's content as text: a string, or its text blocks (the core joins them)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where}: content must be a string or a list of content blocks")
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind in ("text", "text-plain", None) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif skip_tool_blocks and kind in _AI_SKIPPED_BLOCKS:
            continue
        else:
            raise InputError(
                f"{where} has a {kind!r} content block; the ensemble's members read text only "
                "(send text blocks, or describe the content in text)"
            )
    return parts


# -- core results -> LangChain ------------------------------------------------------------------


def usage_metadata(usage: ChatUsage) -> UsageMetadata:
    """Input tokens as the primary member counts the prompt; output tokens: union steps."""
    return UsageMetadata(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )


def ai_message(result: ChatResult) -> ChatGeneration:
    """A complete answer as a ``ChatGeneration`` of an ``AIMessage``."""
    message = AIMessage(
        content=result.content,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in result.tool_calls],
        usage_metadata=usage_metadata(result.usage),
        response_metadata=result.metadata(),
    )
    return ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})


def generation_chunk(chunk: ChatChunk) -> ChatGenerationChunk:
    """A core chunk as LangChain's: content, tool-call chunks, or the last chunk (usage)."""
    result = chunk.result
    if result is not None:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=chunk.content,
                chunk_position="last",
                usage_metadata=usage_metadata(result.usage),
                response_metadata=result.metadata(),
            ),
            generation_info={"finish_reason": result.finish_reason},
        )
    calls = [
        tool_call_chunk(name=c.name, args=c.arguments, id=c.id, index=c.index)
        for c in chunk.tool_calls
    ]
    return ChatGenerationChunk(
        message=AIMessageChunk(content=chunk.content, tool_call_chunks=calls)
    )


def input_error(model_input: object, error: Exception) -> InputError:
    """What LangChain's input conversion refused (a number, bytes, an unknown role), as the
    package's error naming the input and what to pass instead."""
    return InputError(
        f"cannot use {type(model_input).__name__} input {model_input!r:.80} as a chat prompt "
        f"({error}); pass a string, a list of messages (LangChain messages, (role, text) tuples "
        "or {'role', 'content'} dicts) or a PromptValue"
    )
