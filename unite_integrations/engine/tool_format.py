"""The tool-call format, in one place: how a call is written, constrained, read and explained.

Every member writes calls the same way (Hermes/Qwen style), whatever its own chat template::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

This module owns everything that depends on that spelling: the tags, the shape of the grammar
that forces it (``call_object_schema``, ``calls_grammar``; ``Constraint.tool_calls`` adds the JSON
bounds), the parsers of a whole answer (``parse_tool_calls``) and of a stream (``ToolCallStream``),
the rendering for members whose template has no tool support (``portable_messages``), the
reading of ``tool_choice`` in every front end's spelling, and the one ``ToolCall`` type.

It sits in ``engine/`` because the engine needs it (the members render prompts with it, the
constraints build the grammar from it) and the engine imports nothing above itself; the chat core
and the front ends import it from here (``chat`` re-exports ``ToolCall``, ``ToolCallStream``,
``parse_calls``, ``tool_choice`` and ``tool_names``). It imports only ``errors`` and the engine's
dependency-free ``inputs`` and ``text`` modules, so every other module may import it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .inputs import check_tools
from .text import partial_suffix

__all__ = [
    "TOOL_CALL_CLOSE",
    "TOOL_CALL_OPEN",
    "ToolCall",
    "ToolCallStream",
    "call_object_schema",
    "calls_grammar",
    "parse_calls",
    "parse_tool_calls",
    "portable_messages",
    "tool_choice",
    "tool_names",
    "tool_schema",
    "tools_instruction",
]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# A block's JSON may not contain another opening tag, so an unclosed block cannot swallow the next.
_CALL_RE = re.compile(
    re.escape(TOOL_CALL_OPEN)
    + r"\s*(\{(?:(?!"
    + re.escape(TOOL_CALL_OPEN)
    + r").)*?\})\s*"
    + re.escape(TOOL_CALL_CLOSE),
    re.DOTALL,
)


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call: its id, the tool's name and the decoded arguments."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


# -- the tools and the choice among them ----------------------------------------------------------


def tool_schema(tool: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, JSON schema of arguments) of an OpenAI-style tool: {"type": "function", ...}."""
    fn = tool.get("function", tool)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a tool has no name: {dict(tool)!r}")
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return name, dict(params)


def tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of OpenAI-style tools, checked by the engine's one rule for tools
    (``engine.inputs.check_tools``): a malformed tool is a ``ConfigError`` whose ``param`` names
    the field (``tools[0].function.parameters``), never a ``TypeError`` from deeper down."""
    return [tool_schema(t)[0] for t in check_tools(tools) or ()]


def tool_choice(choice: object, names: Sequence[str]) -> str:
    """``"auto"``, ``"none"``, ``"required"`` or a tool's name, from any front end's spelling:
    ``None``/``"auto"``, ``False``/``"none"``, ``True``/``"any"``/``"required"``, a name, or
    ``{"type": "function", "function": {"name": ...}}`` / ``{"name": ...}``. A choice that
    forces a call needs tools; a name must be one of them."""
    if isinstance(choice, Mapping):
        fn = choice.get("function")
        choice = fn.get("name") if isinstance(fn, Mapping) else choice.get("name")
        if not isinstance(choice, str) or not choice:
            raise ConfigError("tool_choice names no tool: give {'function': {'name': ...}}")
    if choice is None or choice == "auto":
        return "auto"
    if choice is False or choice == "none":
        return "none"
    if choice is True or choice in ("any", "required"):
        result = "required"
    elif isinstance(choice, str) and choice in names:
        result = choice
    else:
        raise ConfigError(
            f"tool_choice {choice!r} is not 'auto', 'none', 'required' ('any'), or a given "
            f"tool ({', '.join(names) or 'no tools given'})"
        )
    if not names:
        raise ConfigError(f"tool_choice {choice!r} needs tools: pass tools with the call")
    return result


# -- the grammar that forces the format -----------------------------------------------------------


def call_object_schema(schemas: Mapping[str, Any], choice: str) -> dict[str, Any]:
    """The JSON schema of one call's object, ``{"name": ..., "arguments": ...}``, for the tools
    ``schemas`` (name -> arguments' schema) and the choice (``required``/``any``/``auto``, or a
    tool's name to force it). Nothing but the name and the arguments, both required."""
    if not schemas:
        raise ConfigError("tool calling needs at least one tool")
    if choice not in ("required", "auto", "any") and choice not in schemas:
        raise ConfigError(
            f"tool_choice {choice!r} is neither 'auto', 'required' nor one of the tools "
            f"({', '.join(schemas)})"
        )
    names = [choice] if choice in schemas else list(schemas)
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": n}, "arguments": schemas[n]},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for n in names
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def calls_grammar(obj_rule: str, choice: str, parallel: bool) -> str:
    """The Lark grammar of an answer made of call blocks (one, or several on separate lines with
    ``parallel``), or, with ``auto``, of such calls or plain text (text may not start with
    ``<``). ``obj_rule`` is the grammar of one call's JSON (``%json {...}``): the JSON bounds
    are the constraints' business (``Constraint.tool_calls``), the blocks around it are ours."""
    calls = 'calls: call ("\\n" call)*' if parallel else "calls: call"
    start = "start: calls | text" if choice == "auto" else "start: calls"
    return (
        f"{start}\n{calls}\n"
        f'call: "{TOOL_CALL_OPEN}\\n" obj "\\n{TOOL_CALL_CLOSE}"\n'
        f"obj: {obj_rule}\n"
        "text: /[^<](.|\\n)*/\n"
    )


# -- reading the format ---------------------------------------------------------------------------


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """Split generated text into (text outside tool-call blocks, the calls parsed from them).

    A block whose JSON does not parse, or lacks a name, stays in the text: nothing is dropped.
    Each call gets a fresh id (``call_`` and 24 hex digits), as OpenAI's ids look.
    """
    calls: list[ToolCall] = []
    kept: list[str] = []
    pos = 0
    for m in _CALL_RE.finditer(text):
        try:
            data = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = {"input": args}
        calls.append(
            ToolCall(
                f"call_{uuid.uuid4().hex[:24]}",
                data["name"],
                args if isinstance(args, dict) else {},
            )
        )
        kept.append(text[pos : m.start()])
        pos = m.end()
    kept.append(text[pos:])
    return "".join(kept).strip() if calls else text, calls


def parse_calls(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """``parse_tool_calls`` with the calls as a tuple, as a ``ChatResult`` holds them."""
    content, calls = parse_tool_calls(text)
    return content, tuple(calls)


class ToolCallStream:
    """Splits streamed text into content deltas and complete tool calls.

    Text that may be the start of a ``<tool_call>`` block is held back until it is clear; a block
    becomes one call as soon as it closes (only whole calls are emitted, so a call cut off by the
    budget never reaches an agent as a valid-looking partial call). A block whose JSON does not
    parse is emitted as text, as ``parse_tool_calls`` keeps it. Whitespace between and after calls
    is dropped, so the streamed content equals the complete answer's content.
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
                    # A block left open before this one is text, as the whole answer keeps it:
                    # the call begins at the block's last opening tag (its JSON holds none).
                    self._text(block[: block.rfind(TOOL_CALL_OPEN)], out)
                    self.calls += len(calls)
                    out.extend(calls)
                else:
                    self._text(block, out)
                continue
            start = self._buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                self._text(self._buf[:start], out)
                self._buf = self._buf[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            keep = partial_suffix(self._buf, TOOL_CALL_OPEN)
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


# -- writing the format for members whose template has no tool support ----------------------------


def tools_instruction(tools: Sequence[Mapping[str, Any]]) -> str:
    """The system text that tells a member without native tool support how to call tools."""
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return (
        "You can call these tools:\n<tools>\n"
        f"{listing}\n</tools>\n"
        "To call a tool, reply with one block per call and nothing else:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": "<tool name>", "arguments": {{<arguments>}}}}\n'
        f"{TOOL_CALL_CLOSE}"
    )


def portable_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Messages for a template without tool support: tools described in the system message,
    earlier tool calls written out as text, tool results sent as user turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = str(m.get("content") or "")
        if m["role"] == "assistant" and m.get("tool_calls"):
            blocks = [
                f"{TOOL_CALL_OPEN}\n"
                + json.dumps({"name": c["function"]["name"], "arguments": _args(c)})
                + f"\n{TOOL_CALL_CLOSE}"
                for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "\n".join([content, *blocks]).strip()})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": content})
    if tools:
        text = tools_instruction(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _args(call: Mapping[str, Any]) -> Any:
    args = call["function"].get("arguments", {})
    if isinstance(args, str):
        try:
            return json.loads(args)
        except json.JSONDecodeError:
            return args
    return args
