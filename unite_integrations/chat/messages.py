"""Messages in neutral form, and their rendering into the engine's conversation dicts.

One role table (``types.ROLES``), one rule for joining text blocks (``"\\n"``, as LlamaIndex and
OpenAI-compatible servers join content parts), one rule for system turns (consecutive system
messages are merged with a blank line: many chat templates accept one system message only), and
one decoding of tool-call arguments. Every malformed input is an ``InputError`` naming the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..engine.inputs import check_text
from ..errors import InputError
from .types import ROLES, Message, Role, ToolCall

__all__ = [
    "decode_arguments",
    "join_text",
    "make_message",
    "make_tool_call",
    "render",
    "role_of",
]

_ENGINE_ROLES = frozenset({"system", "user", "assistant", "tool"})


def role_of(raw: object, where: str, param: str | None = None) -> Role:
    """The engine role for a front end's role name (``types.ROLES``), or an ``InputError``
    (carrying ``param``, the role's field in the caller's API, where given)."""
    role = ROLES.get(str(raw).lower()) if isinstance(raw, str) else None
    if role is None:
        raise InputError(
            f"{where} has role {raw!r}, which the members' chat templates cannot render; use "
            f"system, user, assistant or tool ({', '.join(sorted(ROLES))} are accepted)",
            param=param,
        )
    return role


def join_text(parts: Iterable[str]) -> str:
    """A message's text blocks as one string: joined with a newline."""
    return "\n".join(parts)


def decode_arguments(value: object, where: str, param: str | None = None) -> dict[str, Any]:
    """A tool call's arguments as a dict: a dict as is, a JSON object string decoded, nothing
    (``None`` or ``""``) as ``{}``; anything else is an ``InputError`` (carrying ``param``)."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{where}: tool call arguments are not valid JSON ({e})", param=param
            ) from e
        except RecursionError:
            raise InputError(
                f"{where}: tool call arguments nest too deeply; flatten them", param=param
            ) from None
        if isinstance(parsed, dict):
            return parsed
    raise InputError(
        f"{where}: tool call arguments must be a JSON object (a dict or its JSON text), got "
        f"{type(value).__name__}",
        param=param,
    )


def make_tool_call(
    call_id: object, name: object, arguments: object, where: str, param: str | None = None
) -> ToolCall:
    """A validated ``ToolCall`` (a missing id becomes ``""``; the renderer numbers it).
    ``param``: the call's field in the caller's API (the server: ``messages[1].tool_calls[0]``),
    carried by the errors (``...function.name``)."""
    fn = f"{param}.function" if param else None
    if not isinstance(name, str) or not name:
        raise InputError(
            f"{where}: a tool call needs a tool name (a non-empty string)", param=_at(fn, "name")
        )
    check_text(f"{where}: the tool call's name", name, _at(fn, "name"))
    if call_id is not None and not isinstance(call_id, str):
        raise InputError(
            f"{where}: a tool call id must be a string, got {call_id!r}", param=_at(param, "id")
        )
    if call_id:
        check_text(f"{where}: the tool call's id", call_id, _at(param, "id"))
    return ToolCall(call_id or "", name, decode_arguments(arguments, where, _at(fn, "arguments")))


def make_message(
    role: object,
    content: str | Sequence[str] | None,
    *,
    where: str,
    tool_calls: Sequence[ToolCall] = (),
    tool_call_id: object = None,
    name: object = None,
    param: str | None = None,
) -> Message:
    """A validated ``Message``: the role through the role table, text blocks joined. ``content``
    may be ``None`` only on an assistant turn with tool calls (as in OpenAI's API and the
    engine's rule). ``param``: the message's field in the caller's API (the server:
    ``messages[0]``), carried by the errors (``messages[0].content``)."""
    engine_role = role_of(role, where, _at(param, "role"))
    if content is None and engine_role == "assistant" and tool_calls:
        text = ""
    elif content is None:
        raise InputError(
            f"{where} ({engine_role}) has no content; give text (an empty string will do): only "
            "an assistant message with tool calls may leave it out",
            param=_at(param, "content"),
        )
    elif isinstance(content, str):
        text = content
    elif isinstance(content, Sequence) and all(isinstance(p, str) for p in content):
        text = join_text(content)
    else:
        raise InputError(
            f"{where}: content must be text (a string or a list of text blocks)",
            param=_at(param, "content"),
        )
    check_text(f"{where} content", text, _at(param, "content"))
    if tool_calls and engine_role != "assistant":
        raise InputError(
            f"{where} ({engine_role}) carries tool calls; tool calls belong to assistant "
            "messages (tool results are messages with role 'tool')",
            param=_at(param, "tool_calls"),
        )
    call_id = _optional_text(tool_call_id, f"{where} tool_call_id", _at(param, "tool_call_id"))
    tool_name = _optional_text(name, f"{where} name", _at(param, "name"))
    return Message(
        role=engine_role,
        content=text,
        tool_calls=tuple(tool_calls),
        tool_call_id=call_id if engine_role == "tool" else None,
        name=tool_name or None if engine_role == "tool" else None,
    )


def _optional_text(value: object, field: str, param: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string, got {value!r}", param=param)
    return check_text(field, value, param)


def _at(param: str | None, field: str) -> str | None:
    return f"{param}.{field}" if param else None


def render(messages: Sequence[Message], instruction: str | None = None) -> list[dict[str, Any]]:
    """The engine's conversation dicts (``{"role", "content"}``, assistant ``tool_calls`` with
    dict arguments as Hugging Face templates expect, tool ``tool_call_id``). ``instruction`` is
    appended to the system turn (one is added first when there is none)."""
    if not messages:
        raise InputError("the conversation is empty: pass at least one message", param="messages")
    out: list[dict[str, Any]] = []
    if instruction is not None and messages[0].role != "system":
        out.append({"role": "system", "content": instruction})
        instruction = None
    for n, m in enumerate(messages):
        if not isinstance(m, Message):
            raise InputError(f"message {n} is a {type(m).__name__}, not a chat Message")
        if m.role not in _ENGINE_ROLES:
            m = replace(m, role=role_of(m.role, f"message {n}"))  # another spelling, or an error
        if not isinstance(m.content, str):
            raise InputError(f"message {n}: content must be a string")
        if not isinstance(m.tool_calls, (tuple, list)) or not all(
            isinstance(c, ToolCall) and isinstance(c.arguments, Mapping) for c in m.tool_calls
        ):
            raise InputError(
                f"message {n}: tool_calls must be a list of ToolCall(id, name, arguments: dict) "
                "(build them with make_tool_call)"
            )
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": c.id or f"call_{n}_{i}",
                    "type": "function",
                    "function": {"name": c.name, "arguments": dict(c.arguments)},
                }
                for i, c in enumerate(m.tool_calls)
            ]
        if m.role == "tool":
            entry["tool_call_id"] = m.tool_call_id or ""
            if m.name:
                entry["name"] = m.name
        if m.role == "system" and out and out[-1]["role"] == "system":
            out[-1]["content"] = f"{out[-1]['content']}\n\n{m.content}"
            continue
        out.append(entry)
    if instruction is not None:
        out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{instruction}"}
    return out
