"""LlamaIndex messages to the engine's OpenAI-style dicts, and engine results back to responses.

The engine takes conversations as ``{"role", "content"}`` dicts (assistant turns may carry
``tool_calls``, tool turns a ``tool_call_id``) and renders them with each member's chat template.
LlamaIndex messages are lists of content blocks: text blocks are joined, tool calls become
``tool_calls``, anything the members cannot read (images, audio, video, documents) is an
``InputError``. Generated tool calls come back as ``ToolCallBlock``s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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

from ..engine.constraints import TOOL_CALL_OPEN, parse_tool_calls
from ..engine.results import GenerationResult
from ..errors import InputError

__all__ = [
    "ToolCallStream",
    "chat_response",
    "completion_response",
    "raw_of",
    "to_engine_messages",
]

# LlamaIndex roles -> the engine's four roles. Provider spellings of the same role are accepted:
# developer (OpenAI) is a system turn, chatbot (Cohere) and model (Gemini) are assistant turns,
# function (OpenAI's legacy function result) is a tool turn.
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "chatbot": "assistant",
    "model": "assistant",
    "tool": "tool",
    "function": "tool",
}


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as the engine's message dicts; ``InputError`` names what is wrong."""
    if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
        raise InputError("chat() takes a list of ChatMessage; wrap a single message in a list")
    if not messages:
        raise InputError("the conversation is empty: pass at least one ChatMessage")
    out = []
    for n, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise InputError(f"message {n} is a {type(message).__name__}, not a ChatMessage")
        raw_role = message.role.value if isinstance(message.role, MessageRole) else message.role
        role = _ROLES.get(str(raw_role))
        if role is None:
            raise InputError(
                f"message {n} has role {raw_role!r}; use system, user, assistant or tool "
                "(developer, chatbot, model and function are accepted as their equivalents)"
            )
        text, calls = _read_blocks(n, role, message)
        entry: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant":
            calls = calls or _legacy_tool_calls(message.additional_kwargs.get("tool_calls"))
            if calls:
                entry["tool_calls"] = calls
        if role == "tool":
            kw = message.additional_kwargs
            entry["tool_call_id"] = str(kw.get("tool_call_id") or kw.get("id") or "")
            if kw.get("name"):
                entry["name"] = str(kw["name"])
        out.append(entry)
    return out


def _read_blocks(n: int, role: str, message: ChatMessage) -> tuple[str, list[dict[str, Any]]]:
    """(joined text, tool calls) of one message's blocks."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            if role != "assistant":
                raise InputError(
                    f"message {n} ({role}) carries a tool call; tool calls belong to assistant "
                    "messages (tool results are messages with role 'tool')"
                )
            calls.append(_call_dict(block.tool_call_id, block.tool_name, block.tool_kwargs))
        elif isinstance(block, (ThinkingBlock, CachePoint)):
            continue  # earlier reasoning and provider cache hints are not sent back
        elif isinstance(block, CitableBlock):
            texts.extend(_text_only(n, role, block.content))
        elif isinstance(block, CitationBlock):
            texts.extend(_text_only(n, role, [block.cited_content]))
        else:
            raise _not_text(n, role, block.block_type)
    return "\n".join(texts), calls


def _text_only(n: int, role: str, blocks: Sequence[Any]) -> list[str]:
    out = []
    for b in blocks:
        if not isinstance(b, TextBlock):
            raise _not_text(n, role, getattr(b, "block_type", type(b).__name__))
        out.append(b.text)
    return out


def _not_text(n: int, role: str, kind: str) -> InputError:
    return InputError(
        f"message {n} ({role}) has a {kind} block, but UniTELLM's members read text only: "
        "pass text blocks (describe or transcribe the content)"
    )


def _call_dict(call_id: str | None, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": call_id or "",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _legacy_tool_calls(value: Any) -> list[dict[str, Any]]:
    """Tool calls kept in ``additional_kwargs["tool_calls"]`` (OpenAI-style dicts or objects)."""
    if not isinstance(value, list):
        return []
    calls = []
    for item in value:
        data = item.model_dump() if hasattr(item, "model_dump") else item
        if isinstance(data, Mapping) and isinstance(data.get("function"), Mapping):
            fn = data["function"]
            calls.append(_call_dict(data.get("id"), str(fn.get("name")), fn.get("arguments", {})))
    return calls


# -- results -> responses -------------------------------------------------------------------------


def raw_of(result: GenerationResult) -> dict[str, Any]:
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
        "provenance": result.provenance.summary(),
    }


def _token_counts(result: GenerationResult) -> dict[str, int]:
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
    }


def assistant_message(content: str, calls: Sequence[Any] = ()) -> ChatMessage:
    """An assistant message: its text, then one ``ToolCallBlock`` per parsed call. The calls are
    also listed OpenAI-style in ``additional_kwargs["tool_calls"]``, where older LlamaIndex code
    (streaming structured output) looks for them."""
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [
        ToolCallBlock(tool_call_id=c.id, tool_name=c.name, tool_kwargs=c.arguments) for c in calls
    ]
    extra = (
        {"tool_calls": [_call_dict(c.id, c.name, json.dumps(c.arguments)) for c in calls]}
        if calls
        else {}
    )
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def chat_response(result: GenerationResult, with_tools: bool) -> ChatResponse:
    content, calls = parse_tool_calls(result.text) if with_tools else (result.text, [])
    return ChatResponse(
        message=assistant_message(content, calls),
        raw=raw_of(result),
        additional_kwargs=_token_counts(result),
    )


def completion_response(
    result: GenerationResult, text: str | None = None, delta: str | None = None
) -> CompletionResponse:
    return CompletionResponse(
        text=result.text if text is None else text,
        delta=delta,
        raw=raw_of(result),
        additional_kwargs=_token_counts(result),
    )


class ToolCallStream:
    """Streams the text around tool calls, holding back what may be the start of a call.

    Tool calls are only shown once complete, in the final chunk, as ``ToolCallBlock``s; the text
    shown before is every character that cannot belong to a ``<tool_call>`` block (trailing
    whitespace is held too, as the final text is stripped around calls).
    """

    def __init__(self) -> None:
        self.shown = ""

    def update(self, text: str) -> str:
        """The new visible delta, given the cumulative generated text."""
        visible = text[: _hold_from(text)].rstrip()
        if not visible.startswith(self.shown):
            return ""
        delta, self.shown = visible[len(self.shown) :], visible
        return delta

    def finish(self, text: str) -> tuple[str, list[Any], str]:
        """(final content, parsed calls, last delta) for the complete text."""
        content, calls = parse_tool_calls(text)
        delta = content[len(self.shown) :] if content.startswith(self.shown) else ""
        self.shown = content
        return content, calls, delta


def _hold_from(text: str) -> int:
    """Where a ``<tool_call>`` block starts (or may be starting, at the end of the text)."""
    start = text.find(TOOL_CALL_OPEN)
    if start >= 0:
        return start
    for k in range(min(len(TOOL_CALL_OPEN) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:k]):
            return len(text) - k
    return len(text)
