"""LlamaIndex messages <-> the chat core's neutral types.

Translation only: LlamaIndex messages are lists of content blocks; text blocks become a core
``Message``'s text (the core joins them and renders with its one role table), tool calls become
``ToolCall``s, anything the members cannot read (images, audio, video, documents) is an
``InputError``. Core results come back as ``ChatResponse``/``CompletionResponse``s with the
calls as ``ToolCallBlock``s.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator, Iterator, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    CitableBlock,
    CitationBlock,
    CompletionResponse,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)

from ..chat import (
    ChatChunk,
    ChatOptions,
    ChatResult,
    Message,
    ToolCall,
    decode_arguments,
    frontend,
    make_message,
    make_tool_call,
    role_of,
)
from ..chat.options import OPTION_NAMES, engine_name
from ..errors import ConfigError, InputError

__all__ = [
    "Responses",
    "assistant_message",
    "astream_responses",
    "call_options",
    "chat_response",
    "completion_response",
    "raw_of",
    "stream_responses",
    "to_core_messages",
    "tool_spec",
]


#: Per-call options (keyword arguments of every call) and the core's names for them: the
#: generation options by the engine's names (as the LLM's fields), ``max_tokens`` too.
CALL_OPTIONS = {engine_name(o): o for o in OPTION_NAMES if o != "top_logprobs"} | {
    "max_tokens": "max_tokens"
}


def call_options(kw: Mapping[str, Any]) -> ChatOptions:
    """A call's keyword options as the core's ``ChatOptions`` (unknown keyword: ConfigError)."""
    unknown = sorted(set(kw) - set(CALL_OPTIONS))
    if unknown:
        raise ConfigError(
            f"UniTELLM got an unknown keyword argument {unknown[0]!r}; per-call options are "
            f"{', '.join(CALL_OPTIONS)} (max_tokens is read as max_new_tokens)"
        )
    return frontend.call_options(kw, CALL_OPTIONS)


def check_messages(messages: Any) -> None:
    """``InputError`` unless ``messages`` is a list of ``ChatMessage``. Run before LlamaIndex's
    chat callback, whose start event would otherwise fail first with a pydantic error."""
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
        raise InputError("chat() takes a list of ChatMessage; wrap a single message in a list")
    for n, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise InputError(f"message {n} is a {type(message).__name__}, not a ChatMessage")


def to_core_messages(messages: Sequence[ChatMessage]) -> tuple[Message, ...]:
    """The conversation as the core's ``Message``s; ``InputError`` names what is wrong."""
    check_messages(messages)
    out = []
    for n, message in enumerate(messages):
        role = message.role.value if isinstance(message.role, MessageRole) else message.role
        where = f"message {n} ({role})"
        texts, calls = _read_blocks(where, message)
        kw = message.additional_kwargs
        legacy = kw.get("tool_calls")
        if not calls and isinstance(legacy, list) and role_of(role, where) == "assistant":
            calls = _legacy_tool_calls(legacy, where)
        call_id = kw.get("tool_call_id") or kw.get("id")
        out.append(
            make_message(
                role,
                texts,
                where=where,
                tool_calls=calls,
                tool_call_id=str(call_id or ""),
                name=str(kw["name"]) if kw.get("name") else None,
            )
        )
    return tuple(out)


def _read_blocks(where: str, message: ChatMessage) -> tuple[list[str], list[ToolCall]]:
    """(text blocks, tool calls) of one message's blocks."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            calls.append(
                make_tool_call(block.tool_call_id, block.tool_name, block.tool_kwargs, where)
            )
        elif isinstance(block, (ThinkingBlock, CachePoint)):
            continue  # earlier reasoning and provider cache hints are not sent back
        elif isinstance(block, (CitableBlock, CitationBlock)):
            inner = block.content if isinstance(block, CitableBlock) else [block.cited_content]
            for b in inner:
                if not isinstance(b, TextBlock):
                    raise _not_text(where, getattr(b, "block_type", type(b).__name__))
                texts.append(b.text)
        else:
            raise _not_text(where, block.block_type)
    return texts, calls


def _not_text(where: str, kind: str) -> InputError:
    return InputError(
        f"{where} has a {kind} block, but UniTELLM's members read text only: "
        "pass text blocks (describe or transcribe the content)"
    )


def _legacy_tool_calls(value: list[Any], where: str) -> list[ToolCall]:
    """Tool calls kept in ``additional_kwargs["tool_calls"]`` (OpenAI-style dicts or objects)."""
    calls = []
    for item in value:
        data = item.model_dump() if hasattr(item, "model_dump") else item
        if isinstance(data, Mapping) and isinstance(data.get("function"), Mapping):
            fn = data["function"]
            calls.append(make_tool_call(data.get("id"), fn.get("name"), fn.get("arguments"), where))
    return calls


def tool_spec(tool: Any) -> dict[str, Any]:
    """An OpenAI-style tool dict from a LlamaIndex tool (or such a dict, passed through)."""
    metadata = getattr(tool, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_openai_tool"):
        spec: dict[str, Any] = metadata.to_openai_tool(skip_length_check=True)
        return spec
    if isinstance(tool, Mapping):
        return dict(tool)
    raise ConfigError(
        f"a tool is a {type(tool).__name__}; pass LlamaIndex tools (FunctionTool, ...) or "
        "OpenAI-style dicts {'type': 'function', 'function': {...}}"
    )


# -- core results -> responses --------------------------------------------------------------------


def raw_of(result: ChatResult) -> dict[str, Any]:
    """What ``raw`` carries: text, finish reason, usage (as TokenCountingHandler reads it) and
    the provenance summary (agreement rate, each member's share of the tokens)."""
    u = result.usage
    return {
        "text": result.text,
        "finish_reason": result.finish_reason,
        "usage": {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
            "input_tokens_per_member": dict(u.input_tokens_per_member),
            "output_tokens_per_member": dict(u.output_tokens_per_member),
        },
        "provenance": dict(result.provenance),
    }


def _token_counts(result: ChatResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
    }


def assistant_message(content: str, calls: Sequence[ToolCall] = ()) -> ChatMessage:
    """An assistant message: its text, then one ``ToolCallBlock`` per call. The calls are also
    listed OpenAI-style in ``additional_kwargs["tool_calls"]``, where older LlamaIndex code
    (streaming structured output) looks for them."""
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=dict(c.arguments))
        for c in calls
    ]
    extra = (
        {
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in calls
            ]
        }
        if calls
        else {}
    )
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def chat_response(result: ChatResult, delta: str | None = None) -> ChatResponse:
    return ChatResponse(
        message=assistant_message(result.content, result.tool_calls),
        delta=delta,
        raw=raw_of(result),
        additional_kwargs=_token_counts(result),
    )


def completion_response(
    result: ChatResult, text: str | None = None, delta: str | None = None
) -> CompletionResponse:
    return CompletionResponse(
        text=result.content if text is None else text,
        delta=delta,
        raw=raw_of(result),
        additional_kwargs=_token_counts(result),
    )


class Responses:
    """Core chunks -> LlamaIndex's cumulative responses (``text`` so far plus ``delta``)."""

    def __init__(self, completion: bool = False) -> None:
        self.completion = completion
        self.text = ""
        self.calls: list[ToolCall] = []

    def __call__(self, chunk: ChatChunk) -> Any:
        self.text += chunk.content
        self.calls += [
            ToolCall(c.id, c.name, decode_arguments(c.arguments, c.name)) for c in chunk.tool_calls
        ]
        result = chunk.result
        if self.completion:
            if result is not None:
                return completion_response(result, text=self.text, delta=chunk.content)
            return CompletionResponse(text=self.text, delta=chunk.content)
        if result is not None:
            return ChatResponse(
                message=assistant_message(result.content, result.tool_calls),
                delta=chunk.content,
                raw=raw_of(result),
                additional_kwargs=chat_response(result).additional_kwargs,
            )
        return ChatResponse(message=assistant_message(self.text, self.calls), delta=chunk.content)


def stream_responses(
    chunks: Iterator[ChatChunk], translate: Responses
) -> Generator[Any, None, None]:
    """LlamaIndex's stream (its callbacks wrap generators only); closing it closes the core's."""
    try:
        for chunk in chunks:
            yield translate(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


async def astream_responses(
    chunks: AsyncGenerator[ChatChunk, None], translate: Responses
) -> AsyncGenerator[Any, None]:
    """The async stream; closing it (or cancelling its reader) cancels the engine request."""
    try:
        async for chunk in chunks:
            yield translate(chunk)
    finally:
        await chunks.aclose()
