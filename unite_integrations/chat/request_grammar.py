"""A request's tools, tool choice and structured output -> the engine's grammar.

``grammar`` checks every combination once and says what the request means for decoding (a
``Grammar``); ``response_format`` reads OpenAI's spellings of structured output. The tool-call
format itself (tags, parsing, the streaming parser, ``tool_choice``) is
``engine.tool_format``'s; the constraint is the engine's ``Constraint`` (``engine/constraints.py``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.constraints import Constraint
from ..engine.inputs import check_nesting
from ..engine.tool_format import tool_choice, tool_names
from ..errors import ConfigError
from .types import ResponseFormat

__all__ = ["Grammar", "grammar", "json_instruction", "response_format"]


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
