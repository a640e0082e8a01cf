"""LangChain messages -> the engine's OpenAI-style message dicts; the engine's text -> tool calls.

The engine renders ``{"role", "content"}`` dicts with each member's own chat template (or the
portable fallback for templates without tool support), so this module only translates: system,
human, AI (with its tool calls) and tool messages; content blocks joined to text. Anything the
members cannot read (images, audio, files, unknown roles) is an ``InputError`` naming the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call

from ..engine.constraints import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ParsedToolCall, parse_tool_calls
from ..errors import InputError

__all__ = ["ToolCallStream", "split_tool_calls", "to_engine_messages"]

_CHAT_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "tool": "tool",
}
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


def to_engine_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The conversation as the engine's message dicts (consecutive system messages merged)."""
    if not messages:
        raise InputError("the conversation is empty: pass at least one message")
    out: list[dict[str, Any]] = []
    for n, message in enumerate(messages):
        role = _role(message, n)
        where = f"message {n} ({type(message).__name__})"
        entry: dict[str, Any] = {
            "role": role,
            "content": _text(message.content, where, skip_tool_blocks=role == "assistant"),
        }
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.get("id") or f"call_{n}_{i}",
                    "type": "function",
                    # A dict, as Hugging Face chat templates expect (they apply ``tojson``).
                    "function": {"name": call["name"], "arguments": dict(call["args"])},
                }
                for i, call in enumerate(message.tool_calls)
            ]
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
            if message.name:
                entry["name"] = message.name
        if role == "system" and out and out[-1]["role"] == "system":
            # Many templates accept one system message only; two in a row read as one.
            out[-1]["content"] = f"{out[-1]['content']}\n\n{entry['content']}"
            continue
        out.append(entry)
    return out


def _role(message: BaseMessage, n: int) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage) and message.role.lower() in _CHAT_ROLES:
        return _CHAT_ROLES[message.role.lower()]
    detail = f" with role {message.role!r}" if isinstance(message, ChatMessage) else ""
    raise InputError(
        f"message {n} is a {type(message).__name__}{detail}, which the members' chat templates "
        "cannot render; use SystemMessage, HumanMessage, AIMessage or ToolMessage (a ChatMessage "
        f"may have role {', '.join(sorted(_CHAT_ROLES))})"
    )


def _text(content: str | list[str | dict[str, Any]], where: str, *, skip_tool_blocks: bool) -> str:
    """Text of a message's content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type")
        if kind in ("text", "text-plain", None) and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif skip_tool_blocks and kind in _AI_SKIPPED_BLOCKS:
            continue
        else:
            raise InputError(
                f"{where} has a {kind!r} content block; the ensemble's members read text only "
                "(send text blocks, or describe the content in text)"
            )
    return "".join(parts)


# -- the ensemble's text -> tool calls ----------------------------------------------------------


def _lc_call(call: ParsedToolCall) -> ToolCall:
    return tool_call(name=call.name, args=call.arguments, id=call.id)


def split_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(content, tool calls) of a complete answer, as ``parse_tool_calls`` splits it."""
    content, calls = parse_tool_calls(text)
    return content, [_lc_call(c) for c in calls]


class ToolCallStream:
    """Splits streamed text into content deltas and complete tool calls.

    Text that may be the start of a ``<tool_call>`` block is held back until it is clear; a block
    becomes one tool call once it closes (a call is only emitted whole, so a call cut off by the
    token budget never reaches an agent as a valid-looking partial call). A block whose JSON does
    not parse is emitted as text, as ``parse_tool_calls`` keeps it. Whitespace between and after
    calls is dropped, so the streamed content equals ``invoke``'s for the same text (except for
    whitespace before text that calls follow, which the engine's tool grammar never writes:
    an answer is either text or calls).
    """

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False
        self._space = ""  # whitespace held until text follows it
        self._emitted = False
        self.calls = 0

    def feed(self, text: str) -> list[str | ToolCall]:
        """Content strings and tool calls that are certain after ``text``."""
        self._buf += text
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    return out
                body, self._buf = self._buf[:end], self._buf[end + len(TOOL_CALL_CLOSE) :]
                self._in_call = False
                block = f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"
                _, calls = parse_tool_calls(block)
                if calls:
                    self.calls += len(calls)
                    out.extend(_lc_call(c) for c in calls)
                else:
                    self._text(block, out)
                continue
            start = self._buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                self._text(self._buf[:start], out)
                self._buf = self._buf[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_suffix(self._buf, TOOL_CALL_OPEN)
            self._text(self._buf[: len(self._buf) - keep], out)
            self._buf = self._buf[len(self._buf) - keep :]
            return out

    def finish(self) -> list[str | ToolCall]:
        """Whatever is still held once the text is complete."""
        out: list[str | ToolCall] = []
        rest = (TOOL_CALL_OPEN if self._in_call else "") + self._buf
        self._buf, self._in_call = "", False
        self._text(rest, out)
        if self._space and not self.calls:  # with calls, the content is stripped
            out.append(self._space)
        self._space = ""
        return out

    def _text(self, text: str, out: list[str | ToolCall]) -> None:
        """Emit text, holding trailing whitespace until more text follows it."""
        combined = self._space + text
        stripped = combined.rstrip()
        self._space = combined[len(stripped) :]
        if stripped and not self._emitted and self.calls:
            stripped = stripped.lstrip()
        if stripped:
            out.append(stripped)
            self._emitted = True


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
