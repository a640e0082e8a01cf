"""Tools, tool choice and structured output -> the engine's grammar; generated text -> calls.

``tool_choice`` reads every front end's spelling once; ``constraint`` turns a request into the
engine's ``Constraint`` (``engine/constraints.py``); ``ToolCallStream`` is the one streaming
parser: it splits streamed text into content and complete calls exactly as ``parse_tool_calls``
splits the whole text, so a stream and a call give the same content and the same calls.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.constraints import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    Constraint,
    parse_tool_calls,
    tool_schema,
)
from ..engine.inputs import check_nesting, check_tools
from ..engine.text import partial_suffix
from ..errors import ConfigError
from .types import ResponseFormat, ToolCall

__all__ = [
    "Grammar",
    "ToolCallStream",
    "grammar",
    "json_instruction",
    "parse_calls",
    "partial_suffix",
    "response_format",
    "tool_choice",
    "tool_names",
]


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


def response_format(value: object) -> ResponseFormat | None:
    """A ``ResponseFormat`` from OpenAI's dicts (``{"type": "json_object"}``,
    ``{"type": "json_schema", "json_schema": {"schema": ...}}``) or a bare JSON schema."""
    if value is None or isinstance(value, ResponseFormat):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"response_format is a {type(value).__name__}; give a JSON schema or "
            "{'type': 'json_object'} / {'type': 'json_schema', 'json_schema': {'schema': ...}}"
        )
    kind = value.get("type")
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind == "text":
        return None
    if kind == "json_schema" and "json_schema" in value:
        wrapper = value["json_schema"]
        if not isinstance(wrapper, Mapping):
            raise ConfigError(
                f"response_format.json_schema is a {type(wrapper).__name__}; give an object "
                "like {'name': ..., 'schema': {...}}",
                param="response_format.json_schema",
            )
        schema = wrapper.get("schema")
        _check_schema(schema, "response_format.json_schema.schema")
        return ResponseFormat("json_schema", dict(schema) if schema else {"type": "object"})
    _check_schema(value, "response_format")
    return ResponseFormat("json_schema", dict(value))


def _check_schema(schema: object, param: str) -> None:
    """A response format's JSON schema: a dict (or nothing), nested within ``MAX_NESTING``."""
    if schema is not None and not isinstance(schema, Mapping):
        raise ConfigError(
            f"{param} is a {type(schema).__name__}; give a JSON schema object like "
            "{'type': 'object', 'properties': {...}}",
            param=param,
        )
    check_nesting(param, schema, ConfigError, param)


def json_instruction(schema: Mapping[str, Any] | None) -> str:
    """What structured output asks for in words: the grammar enforces the form, but the members
    write better values when they know what the fields mean (as hosted APIs tell their models)."""
    if not schema or set(schema) <= {"type"}:
        return "Answer with a JSON object."
    return "Answer with a JSON object that follows this JSON schema:\n" + json.dumps(
        dict(schema), ensure_ascii=False
    )


@dataclass(frozen=True)
class Grammar:
    """What a request's tools and response format mean for decoding."""

    build: Callable[[], Constraint] | None
    """Builds the constraint (``None``: unconstrained). Kept apart from the checks because
    rewriting a deeply nested schema can take long: it runs where waiting is fine, never on an
    event loop."""
    tools: list[dict[str, Any]] | None
    """Tools shown to the members (``None`` with ``tool_choice="none"``)."""
    parse_calls: bool
    """Whether the answer is split into content and calls."""
    forced: bool
    """A forced call or structured output: the grammar decides where the output ends."""
    instruction: str | None = None


def grammar(
    tools: Sequence[Mapping[str, Any]],
    choice: object,
    parallel: bool,
    fmt: ResponseFormat | None,
    max_string_length: int | None,
) -> Grammar:
    """The grammar for a request (``ConfigError`` for a bad combination): every check is made
    here; the constraint itself is built by ``Grammar.build``."""
    names = tool_names(tools)
    chosen = tool_choice(choice, names)
    if names and chosen != "none":
        if fmt is not None:
            raise ConfigError("give either tools or a response_format, not both")
        specs = [dict(t) for t in tools]
        return Grammar(
            functools.partial(
                Constraint.tool_calls,
                specs,
                chosen,
                parallel=parallel,
                max_string_length=max_string_length,
            ),
            specs,
            True,
            chosen != "auto",
        )
    if fmt is not None:
        _check_schema(fmt.schema, "response_format")
        schema = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "object"}
        build = functools.partial(
            Constraint.json_schema, schema, max_string_length=max_string_length
        )
        return Grammar(build, None, False, True, json_instruction(schema))
    return Grammar(None, None, False, False)


def parse_calls(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """(content, calls) of a complete answer, as ``engine.constraints.parse_tool_calls`` splits
    it (content stripped around calls; a block that does not parse stays text)."""
    content, calls = parse_tool_calls(text)
    return content, tuple(ToolCall(c.id, c.name, c.arguments) for c in calls)


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
                _, calls = parse_calls(block)
                if calls:
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
