"""Constrained decoding: the shared text must follow a grammar (tool calls, JSON schemas).

Small members rarely write a well-formed tool call or JSON instance by themselves. With a
constraint, the engine drops every union candidate that would make the text impossible to complete
into the required format (llguidance, matched over *bytes*, so any candidate string of any member is
checked the same way), and END may win only where the grammar accepts. When no candidate survives,
a member's best allowed token is taken instead (see ``decode``), so the output always parses.

The tool-call format (its tags, the shape of its grammar, its parsers) is ``tool_format``'s; this
module adds the JSON bounds and turns grammars into byte matchers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from .tool_format import call_object_schema, calls_grammar, tool_schema

__all__ = ["ByteMatcher", "Constraint", "bounded_schema"]

_EOS = 256
# Fixed separators: with free whitespace, small members pad JSON with spaces until the budget ends.
_LENIENT = {
    "x-guidance": {
        "json_allow_general_unicode_escapes": True,
        "whitespace_flexible": False,
        "item_separator": ", ",
        "key_separator": ": ",
    }
}


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def bounded_schema(schema: Any, max_string_length: int | None) -> Any:
    """The schema with the bounds that make every instance finish: objects with listed
    properties allow no others (as OpenAI's strict mode), and strings without a length, pattern
    or choices get ``maxLength``. Without bounds a small member can write a string forever."""
    if isinstance(schema, list):
        return [bounded_schema(s, max_string_length) for s in schema]
    if not isinstance(schema, dict):
        return schema
    # Maps of named subschemas are bounded name by name, and only so: each subschema is
    # visited once (visiting such a map also as a schema doubled the work at every level, so
    # a schema nested 60 objects deep never finished, and held the GIL meanwhile).
    maps = {k for k in _SUBSCHEMA_MAPS if isinstance(schema.get(k), dict)}
    out = {k: v if k in maps else bounded_schema(v, max_string_length) for k, v in schema.items()}
    for key in maps:
        out[key] = {k: bounded_schema(v, max_string_length) for k, v in schema[key].items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    bounded = {"maxLength", "enum", "const", "pattern", "format"}
    if schema.get("type") == "string" and max_string_length and not bounded & set(schema):
        out["maxLength"] = max_string_length
    return out


def _json_rule(schema: Mapping[str, Any]) -> str:
    """The Lark rule of one JSON instance of ``schema``, written with the fixed separators."""
    return "%json " + json.dumps({**schema, **_LENIENT})


class Constraint(BaseModel):
    """A grammar for the generated text, in llguidance's Lark dialect."""

    model_config = ConfigDict(frozen=True)

    lark: str
    kind: Literal["json_schema", "tool_calls", "lark", "regex"] = "lark"

    @classmethod
    def json_schema(
        cls, schema: Mapping[str, Any], max_string_length: int | None = 512
    ) -> Constraint:
        """The whole output is one JSON instance of ``schema`` (see ``bounded_schema``)."""
        rule = _json_rule(bounded_schema(dict(schema), max_string_length))
        return cls(lark=f"start: obj\nobj: {rule}\n", kind="json_schema")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls(lark=f"start: /{pattern}/\n", kind="regex")

    @classmethod
    def tool_calls(
        cls,
        tools: Sequence[Mapping[str, Any]],
        choice: str = "required",
        parallel: bool = True,
        max_string_length: int | None = 512,
    ) -> Constraint:
        """One or more tool calls (``required``, or a tool's name to force it), or, with
        ``auto``, either such calls or plain text (text may not start with ``<``)."""
        schemas = {
            name: bounded_schema(params, max_string_length)
            for name, params in (tool_schema(t) for t in tools)
        }
        obj = call_object_schema(schemas, choice)
        return cls(lark=calls_grammar(_json_rule(obj), choice, parallel), kind="tool_calls")


# -- matching bytes -------------------------------------------------------------------------------


class _ByteTokenizer:
    """llguidance sees a vocabulary of the 256 bytes plus EOS: any candidate string is its bytes."""

    eos_token_id = _EOS
    bos_token_id = None
    tokens: ClassVar[list[bytes]] = [bytes([b]) for b in range(256)] + [b"<|end|>"]
    special_token_ids: ClassVar[list[int]] = [_EOS]

    def __call__(self, s: bytes | str) -> list[int]:
        return list(s if isinstance(s, bytes) else s.encode())


@cache
def _byte_tokenizer() -> Any:
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - llguidance is a core dependency
        raise ConfigError("constrained decoding needs `pip install llguidance`") from e
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()), slices=[])


class ByteMatcher:
    """One row's grammar state, advanced by the bytes of each chosen string."""

    def __init__(self, constraint: Constraint) -> None:
        import llguidance

        grammar = llguidance.grammar_from("lark", constraint.lark)
        tok = _byte_tokenizer()
        error = llguidance.LLMatcher.validate_grammar(grammar, tok)
        if error:
            raise ConfigError(f"invalid grammar for constrained decoding: {error}")
        self._m = llguidance.LLMatcher(tok, grammar, log_level=0)

    def copy(self) -> ByteMatcher:
        """An independent matcher in the same state (to look ahead without moving this one)."""
        twin = object.__new__(ByteMatcher)
        twin._m = self._m.deep_copy()
        return twin

    def allows(self, piece: bytes) -> bool:
        """Could the text continue with ``piece`` (END is ``b""``) and still be completed?"""
        if not piece:
            return bool(self._m.is_accepting())
        return int(self._m.validate_tokens(list(piece))) == len(piece)

    def consume(self, piece: bytes) -> None:
        if piece and not self._m.consume_tokens(list(piece)):
            raise AssertionError(f"grammar rejected a validated string: {self._m.get_error()}")

    def forced_bytes(self) -> bytes:
        """Bytes the grammar forces next, whatever is chosen (e.g. ``"\n</tool_call>"``)."""
        return bytes(self._m.compute_ff_bytes())

    def finishing_byte(self, spellable: list[bool]) -> int | None:
        """An allowed byte after which the text is complete, else the lowest allowed byte (both
        among ``spellable``); None if the grammar allows none. The closing rule's last resort."""
        options = [b for b in self.allowed_bytes() if spellable[b]]
        for b in options:
            self._m.consume_tokens([b])
            done = self._m.is_accepting()
            self._m.rollback(1)
            if done:
                return b
        return options[0] if options else None

    def allowed_bytes(self) -> list[int]:
        """Every byte the grammar accepts next (for the last-resort fallback)."""
        return [b for b in range(256) if self._m.validate_tokens([b]) == 1]
