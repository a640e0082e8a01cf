"""The tool-call format's round trips: what is written is read back, whole or streamed, and what
the grammar forces is what the parsers read."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unite_integrations.engine.constraints import ByteMatcher, Constraint
from unite_integrations.engine.tool_format import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ToolCall,
    ToolCallStream,
    parse_calls,
    parse_tool_calls,
    portable_messages,
    tool_choice,
)
from unite_integrations.errors import ConfigError

# Text without "<": a string holding a tag is outside the format (the parser's one limit).
_TEXT = st.text(st.characters(blacklist_characters="<", blacklist_categories=("Cs",)))
_NAMES = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_ARGUMENTS = st.dictionaries(_TEXT, _JSON, max_size=4)


def _block(name: str, arguments: Any) -> str:
    return (
        f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"
    )


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.lists(st.tuples(_NAMES, _ARGUMENTS), min_size=1, max_size=3))
def test_portable_rendering_parses_back_to_the_same_calls(content, calls):
    """An earlier assistant turn, written out for a template without tools, reads back as the
    same calls (arguments given as a dict or as a JSON string) and the same content."""
    message = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": f"c{i}", "function": {"name": n, "arguments": a if i % 2 else json.dumps(a)}}
            for i, (n, a) in enumerate(calls)
        ],
    }
    [rendered] = portable_messages([message], None)
    text, parsed = parse_tool_calls(rendered["content"])
    assert [(c.name, c.arguments) for c in parsed] == calls
    assert text == content.strip()
    assert len({c.id for c in parsed}) == len(parsed)


_PIECES = st.one_of(
    _TEXT,
    st.sampled_from(["<", "<tool", "<tool_call", "</tool_call>", " ", "\n", "a < b", "中文 😀"]),
    st.builds(_block, _NAMES, _ARGUMENTS),
    st.just(f"{TOOL_CALL_OPEN}\n{{not json}}\n{TOOL_CALL_CLOSE}"),
    st.just(f'{TOOL_CALL_OPEN}\n["a list"]\n{TOOL_CALL_CLOSE}'),
    st.just(f'{TOOL_CALL_OPEN}\n{{"name": "cut", "arguments": {{"a": '),  # cut off by the budget
)


def _streamed(text: str, cuts: list[int]) -> list[str | ToolCall]:
    stream = ToolCallStream()
    out: list[str | ToolCall] = []
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    for a, b in itertools.pairwise(bounds):
        out += stream.feed(text[a:b])
    return out + stream.finish()


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=6), st.lists(st.integers(min_value=0), max_size=8))
def test_a_stream_splits_any_text_as_the_whole_answer_is_split(pieces, cuts):
    """Fed in any pieces, the streaming parser gives the content and the calls that parsing the
    whole answer gives: calls whole and in order, malformed blocks as text, the same spaces.
    Its one limit: text before the first call that starts with a space keeps it (the stream
    cannot yet know that calls will follow and the whole answer be stripped). Outputs never
    start so: a tool grammar starts with a call, or with text after ``auto`` and then no call."""
    text = "".join(pieces).lstrip()
    out = _streamed(text, cuts)
    content, calls = parse_calls(text)
    assert "".join(p for p in out if isinstance(p, str)) == content
    assert [(c.name, c.arguments) for c in out if isinstance(c, ToolCall)] == [
        (c.name, c.arguments) for c in calls
    ]


_TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("get_weather", "add")
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["get_weather", "add"]), st.dictionaries(_NAMES, _NAMES)),
        min_size=1,
        max_size=3,
    )
)
def test_what_the_grammar_accepts_parses_as_the_calls_written(calls):
    """Blocks as the grammar forces them (one per line, JSON with fixed separators) are accepted
    whole, and parse back to the calls written, with nothing left as content."""
    text = "\n".join(_block(n, a) for n, a in calls)
    matcher = ByteMatcher(Constraint.tool_calls(_TOOLS, max_string_length=None))
    assert matcher.allows(text.encode())
    matcher.consume(text.encode())
    assert matcher.allows(b"")  # END: the answer is complete
    content, parsed = parse_tool_calls(text)
    assert content == "" and [(c.name, c.arguments) for c in parsed] == calls


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        (False, "none"),
        ("none", "none"),
        (True, "required"),
        ("any", "required"),
        ("required", "required"),
        ("add", "add"),
        ({"type": "function", "function": {"name": "add"}}, "add"),
        ({"name": "add"}, "add"),
    ],
)
def test_tool_choice_reads_every_spelling(choice, expected):
    assert tool_choice(choice, ["get_weather", "add"]) == expected


@pytest.mark.parametrize(
    ("choice", "names", "message"),
    [
        ("sub", ["add"], r"tool_choice 'sub' is not .*\(add\)"),
        ("required", [], "needs tools"),
        ({"function": {}}, ["add"], "names no tool"),
        (3, ["add"], "tool_choice 3"),
    ],
)
def test_tool_choice_refuses_what_it_cannot_honour(choice, names, message):
    with pytest.raises(ConfigError, match=message):
        tool_choice(choice, names)


def test_tool_call_is_the_chat_core_s_tool_call():
    """One type: the chat core's public ``ToolCall`` is the format's."""
    from unite_integrations.chat import ToolCall as chat_tool_call
    from unite_integrations.chat.types import ToolCall as types_tool_call

    assert chat_tool_call is ToolCall and types_tool_call is ToolCall
    [call] = parse_calls(_block("add", {"a": 1}))[1]
    assert type(call) is ToolCall and call == ToolCall(call.id, "add", {"a": 1})
