"""The rules every prompt, conversation and tool list must meet, checked where a call enters.

A bad input found here is a typed error in the caller's thread, naming the field and the fix. Found
later, it would be a ``TypeError`` from a tokenizer, a ``KeyError`` from a chat template, or an
exception raised in the engine's worker thread after the call was queued. So ``UniTEEngine`` runs
every call through these pure functions before it encodes anything, and they return plain copies
(lists of dicts), so that a caller who changes their own list afterwards changes nothing here.

The rules (``docs/guarantees.md`` has them as one table):

* ``prompts`` is a non-empty list or tuple; each prompt is a non-empty string or a conversation.
* A conversation is a non-empty list of message dicts with a ``role`` out of :data:`ROLES` and a
  string ``content``. An empty string is allowed for every role (as in the OpenAI API and
  LangChain); ``content`` may be missing or ``None`` only on an assistant turn with ``tool_calls``.
* ``tool_calls`` (assistant turns only) is a list of ``{"function": {"name", "arguments"}}`` dicts,
  ``arguments`` a JSON string or a dict.
* ``tools`` is ``None`` or a list of OpenAI-style tool dicts, each naming its function; a tool's
  ``parameters``, if given, is a dict (a JSON schema). Tools and tool calls nest dicts and lists at
  most :data:`MAX_NESTING` deep.
* No text anywhere holds a lone surrogate (``"\\ud800"``): it has no UTF-8 encoding, so no tokenizer
  can read it. That is an :class:`~unite_integrations.errors.InputError` wherever it is found
  (prompt, message, tool schema, stop string), never a silent replacement.

Malformed tools are a :class:`~unite_integrations.errors.ConfigError`, as in the adapters and
:class:`~unite_integrations.engine.constraints.Constraint` (tools configure a call); everything else
here is an ``InputError``. A tool's error carries the field as ``param`` in OpenAI's spelling
(``tools[0].function.parameters``), which the server reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError, InputError

__all__ = [
    "MAX_NESTING",
    "ROLES",
    "check_messages",
    "check_nesting",
    "check_prompts",
    "check_text",
    "check_tools",
]

ROLES = ("system", "user", "assistant", "tool")

#: Deepest nesting of dicts and lists accepted in a tool, a tool call or a JSON schema. Deeper
#: input is refused before any recursive code (schema rewriting, JSON, chat templates) could run
#: out of Python's stack and fail with a ``RecursionError`` instead of a typed error.
MAX_NESTING = 200

Message = Mapping[str, Any]
Prompt = str | Sequence[Message]

_MESSAGE_HINT = "a message is a dict like {'role': 'user', 'content': '...'}"


def check_text(field: str, value: object, param: str | None = None) -> str:
    """``value`` if it is a string UTF-8 can encode; else an ``InputError`` naming ``field``
    (``param``: the request field, carried by the error)."""
    if not isinstance(value, str):
        raise InputError(f"{field} is {_kind(value)}, not a string: pass text", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{field} holds a lone surrogate {value[e.start]!r} at position {e.start}, which no "
            "tokenizer can read; remove it, or clean the text with "
            "text.encode('utf-8', 'replace').decode()",
            param=param,
        ) from None
    return value


def check_prompts(prompts: object) -> list[Prompt]:
    """The prompts of a ``generate`` call, checked and copied: strings and lists of dicts."""
    if not _is_list(prompts):
        raise InputError(
            f"generate() takes a list of prompts, got {_kind(prompts)}; wrap a single prompt "
            "in a list"
        )
    assert isinstance(prompts, (list, tuple))
    if len(prompts) == 0:
        raise InputError("the prompt list is empty: pass at least one prompt")
    return [check_prompt(p, f"prompt {n}") for n, p in enumerate(prompts)]


def check_prompt(prompt: object, field: str = "the prompt") -> Prompt:
    """One prompt: a non-empty string (raw text) or a conversation (see :func:`check_messages`)."""
    if isinstance(prompt, str):
        if not prompt:
            raise InputError(f"{field} is the empty string: pass some text")
        return check_text(field, prompt)
    if _is_list(prompt):
        return check_messages(prompt, field)  # type: ignore[arg-type]
    if isinstance(prompt, (bytes, bytearray)):
        raise InputError(f"{field} is bytes; decode it to a str first (e.g. .decode('utf-8'))")
    raise InputError(
        f"{field} is {_kind(prompt)}; a prompt is a string or a conversation (a list of "
        f"messages; {_MESSAGE_HINT})"
    )


def check_messages(messages: Sequence[Message], field: str = "the conversation") -> list[Message]:
    """A conversation, checked and copied into plain dicts (see the module's rules)."""
    if not _is_list(messages):
        raise InputError(f"{field} is {_kind(messages)}; pass a list of messages ({_MESSAGE_HINT})")
    if len(messages) == 0:
        raise InputError(f"{field} is empty: pass at least one message")
    return [_check_message(m, f"{field}, message {n}") for n, m in enumerate(messages)]


def check_tools(tools: object) -> list[dict[str, Any]] | None:
    """OpenAI-style tool schemas, checked and copied; ``None`` (or an empty list) for no tools.

    Each error carries the field as ``param`` in OpenAI's spelling (``tools[0].function.name``)."""
    if tools is None:
        return None
    if not _is_list(tools):
        raise ConfigError(
            f"tools is {_kind(tools)}; pass a list of tool dicts like "
            "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}",
            param="tools",
        )
    assert isinstance(tools, (list, tuple))
    checked = [_check_tool(t, f"tool {n}", f"tools[{n}]") for n, t in enumerate(tools)]
    return checked or None


def check_nesting(
    field: str,
    value: object,
    error: type[InputError] | type[ConfigError],
    param: str | None = None,
) -> None:
    """Refuse ``value`` (with ``error``) if its dicts and lists nest deeper than MAX_NESTING."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > MAX_NESTING:
            raise error(
                f"{field} nests dicts and lists more than {MAX_NESTING} deep; flatten it",
                param=param,
            )
        stack.extend((c, depth + 1) for c in children)


# -- one message, one tool -----------------------------------------------------------------------


def _check_message(message: object, field: str) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InputError(f"{field} is {_kind(message)}; {_MESSAGE_HINT}")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InputError(
            f"{field} has role {role!r}; use one of {', '.join(ROLES)} ({_MESSAGE_HINT})"
        )
    field = f"{field} ({role})"
    out = dict(message)
    calls = message.get("tool_calls")
    if calls is not None and not (_is_list(calls) and len(calls) == 0):  # None, []: no calls
        if role != "assistant":
            raise InputError(f"{field} has tool_calls; only assistant messages carry tool calls")
        out["tool_calls"] = _check_tool_calls(calls, f"{field} tool_calls")
    content = message.get("content")
    if content is None and out.get("tool_calls"):
        pass  # kept as given (missing or None): templates test for either
    elif isinstance(content, str):
        check_text(f"{field} content", content)
    else:
        raise InputError(
            f"{field} has content {_kind(content)}; pass a string (join text parts into one; "
            "images and other media are not supported). Only an assistant message with "
            "tool_calls may have no content"
        )
    for key, value in out.items():  # names, ids, anything a template may print
        if key not in ("role", "content", "tool_calls"):
            _check_strings(f"{field} {_label(key)}", value)
    return out


def _check_tool_calls(calls: object, field: str) -> list[dict[str, Any]]:
    if not _is_list(calls):
        raise InputError(
            f"{field} is {_kind(calls)}; pass a list of calls like "
            "{'id': 'call_0', 'type': 'function', 'function': {'name': ..., 'arguments': '{...}'}}"
        )
    assert isinstance(calls, (list, tuple))
    out = []
    for n, call in enumerate(calls):
        where = f"{field}[{n}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            raise InputError(
                f"{where} is {_kind(call)} without a 'function' dict; a call is "
                "{'type': 'function', 'function': {'name': ..., 'arguments': ...}}"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where} has function name {name!r}; give the tool's name")
        arguments = function.get("arguments", {})
        if not isinstance(arguments, (str, Mapping)):
            raise InputError(
                f"{where} has arguments {_kind(arguments)}; pass a JSON object string or a dict"
            )
        check_nesting(where, call, InputError)
        _check_strings(where, call)
        _check_json(where, call, InputError)
        out.append({**call, "function": dict(function)})
    return out


def _check_tool(tool: object, field: str, param: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        raise ConfigError(
            f"{field} is {_kind(tool)}; a tool is a dict like "
            "{'type': 'function', 'function': {'name': ..., 'parameters': {...}}}",
            param=param,
        )
    function = tool.get("function", tool)
    at = f"{param}.function" if "function" in tool else param  # OpenAI's shape, or a bare one
    if not isinstance(function, Mapping):
        raise ConfigError(
            f"{field} has 'function' {_kind(function)}; it must be a dict like "
            "{'name': ..., 'parameters': {...}}",
            param=at,
        )
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{field} has name {name!r}; give every tool a non-empty string name",
            param=f"{at}.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(
            f"{field} ({name!r}) has description {_kind(description)}; give a string",
            param=f"{at}.description",
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ConfigError(
            f"{field} ({name!r}) has parameters {_kind(parameters)}; give a JSON schema object "
            "like {'type': 'object', 'properties': {...}} (or leave parameters out)",
            param=f"{at}.parameters",
        )
    check_nesting(f"{field} ({name!r})", tool, ConfigError, param)
    _check_strings(f"{field} ({name!r})", tool, param)
    _check_json(f"{field} ({name!r})", tool, ConfigError, param)
    return dict(tool)


# -- helpers -------------------------------------------------------------------------------------


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))


def _label(key: object) -> str:
    """A dict key for a message: as it is when printable, else its repr (no raw surrogates)."""
    if isinstance(key, str) and key.isprintable() and key.isascii():
        return key
    return repr(key)


def _kind(value: object) -> str:
    if value is None:
        return "None"
    text = repr(value)
    shown = text if len(text) <= 40 else text[:37] + "..."
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name} ({shown})"


def _check_strings(field: str, value: object, param: str | None = None) -> None:
    """Every string inside ``value`` (keys too) must be encodable; walks dicts and lists."""
    if isinstance(value, str):
        check_text(field, value, param)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _check_strings(field, k, param)
            _check_strings(f"{field}.{_label(k)}", v, param and f"{param}.{_label(k)}")
    elif isinstance(value, (list, tuple)):
        for n, v in enumerate(value):
            _check_strings(field, v, param and f"{param}[{n}]")


def _check_json(
    field: str,
    value: object,
    error: type[InputError] | type[ConfigError],
    param: str | None = None,
) -> None:
    """Tool schemas and calls are written into prompts as JSON, so they must serialise."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise error(
            f"{field} is not JSON-serialisable ({e}); use dicts, lists, str, numbers",
            param=param,
        ) from None
