"""Constrained decoding: forced tool calls and structured output always parse."""

from __future__ import annotations

import json

import pytest

from unite_integrations import MemberSpec, UniTEEngine
from unite_integrations.engine.constraints import Constraint, bounded_schema
from unite_integrations.engine.tool_format import parse_tool_calls, portable_messages
from unite_integrations.errors import ConfigError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
}
CONVERSATIONS = [
    [{"role": "user", "content": "What's the weather in Paris?"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Add 2 and 3"}],
    [{"role": "user", "content": "你好"}],
]


@pytest.fixture(scope="module")
def roomy(tiny_dirs) -> UniTEEngine:
    """Tool descriptions need more than the tiny models' 512 positions (RoPE copes)."""
    return UniTEEngine(
        [
            MemberSpec(source=str(tiny_dirs[f]), context_window=4096)
            for f in ("bytelevel_bpe", "sentencepiece_bpe")
        ],
        top_k=5,
        check_invariants=True,
    )


@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_forced_tool_calls_always_parse(roomy, choice):
    constraint = Constraint.tool_calls(TOOLS, choice, max_string_length=24)
    results = roomy.generate(CONVERSATIONS, tools=TOOLS, constraint=constraint, max_new_tokens=160)
    for r in results:
        content, calls = parse_tool_calls(r.text)
        assert calls, r.text
        assert content == ""
        for call in calls:
            assert call.name in {"get_weather", "add"} if choice == "required" else {choice}
            params = next(t for t in TOOLS if t["function"]["name"] == call.name)
            assert set(call.arguments) == set(params["function"]["parameters"]["required"])


def test_structured_output_always_parses(roomy):
    constraint = Constraint.json_schema(PERSON, max_string_length=24)
    for r in roomy.generate(
        ["A person:", "JSON:", "名字"], constraint=constraint, max_new_tokens=120
    ):
        data = json.loads(r.text)
        assert isinstance(data["name"], str) and len(data["name"]) <= 24
        assert isinstance(data["age"], int)
        assert set(data) <= {"name", "age", "tags"}


def test_auto_tool_choice_gives_text_or_calls(roomy):
    constraint = Constraint.tool_calls(TOOLS, "auto", max_string_length=24)
    for r in roomy.generate(CONVERSATIONS, tools=TOOLS, constraint=constraint, max_new_tokens=120):
        text, calls = parse_tool_calls(r.text)
        # Whatever "auto" chose, every block is a complete, valid call: none is left in the text.
        assert "<tool_call>" not in text, r.text
        for call in calls:
            params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
            assert set(call.arguments) == set(params[call.name]["required"]), r.text


def test_grammar_fallback_is_used_and_marked_in_provenance(roomy):
    """Random tiny members rarely propose JSON: chosen tokens outside the union carry
    probability 0 for every member in provenance."""
    r = roomy.generate(
        ["x"], constraint=Constraint.json_schema(PERSON, max_string_length=8), max_new_tokens=120
    )[0]
    assert json.loads(r.text)
    taken = [t for t in r.provenance.tokens if all(p == 0 for p in t.probs.values())]
    assert taken
    # A member's own token taken instead of the union's choice: it alone proposed it, and it is
    # not a decision the members agreed on.
    assert all(len(t.proposers) == 1 for t in taken)
    voted = len(r.provenance.tokens) + (r.finish_reason == "stop")  # the final END is a decision
    assert r.provenance.agreement_rate * voted <= voted - len(taken) + 1e-9


def test_bounded_schema_adds_bounds_only_where_missing():
    s = bounded_schema(PERSON, 10)
    assert s["additionalProperties"] is False
    assert s["properties"]["name"]["maxLength"] == 10
    assert s["properties"]["tags"]["items"]["maxLength"] == 10
    kept = bounded_schema({"type": "string", "enum": ["a"]}, 10)
    assert "maxLength" not in kept
    open_obj = bounded_schema({"type": "object", "properties": {}, "additionalProperties": True}, 5)
    assert open_obj["additionalProperties"] is True


def test_parse_tool_calls_keeps_malformed_blocks_as_text():
    text = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Sure." and calls[0].name == "add" and calls[0].arguments == {"a": 1, "b": 2}
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert parse_tool_calls(broken) == (broken, [])
    assert parse_tool_calls("no calls") == ("no calls", [])
    unclosed = '<tool_call>\n{"name": "add", "arguments": {}}\n' + text[len("Sure.\n") :]
    content, calls = parse_tool_calls(unclosed)
    assert [c.name for c in calls] == ["add"] and calls[0].arguments == {"a": 1, "b": 2}


def test_bad_tool_choice_and_tools():
    with pytest.raises(ConfigError, match=r"tool_choice 'nope' .*\(get_weather, add\)"):
        Constraint.tool_calls(TOOLS, "nope")
    with pytest.raises(ConfigError, match="at least one tool"):
        Constraint.tool_calls([])
    with pytest.raises(ConfigError, match="no name"):
        Constraint.tool_calls([{"type": "function", "function": {"parameters": {}}}])


def test_portable_messages_spell_tool_calls_and_results_for_templates_without_tools():
    messages = [
        {"role": "user", "content": "Add 1 and 2"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "content": "3", "tool_call_id": "c1"},
    ]
    out = portable_messages(messages, TOOLS)
    assert out[0]["role"] == "system" and "<tools>" in out[0]["content"]
    assert out[2]["role"] == "assistant"
    assert parse_tool_calls(out[2]["content"])[1][0].arguments == {"a": 1, "b": 2}
    assert out[3] == {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}


def test_unicode_tool_arguments_survive_parsing():
    """Non-ASCII arguments, written raw or as JSON escapes, come back as the same text."""
    raw = '<tool_call>\n{"name": "lookup", "arguments": {"customer_name": "你好啊集团 😀"}}\n</tool_call>'
    escaped = json.dumps({"name": "lookup", "arguments": {"customer_name": "こんにちは株式会社"}})
    text, calls = parse_tool_calls(f"Sure. {raw} and <tool_call>\n{escaped}\n</tool_call>")
    assert text.strip() == "Sure.  and".strip()
    assert [c.arguments["customer_name"] for c in calls] == ["你好啊集团 😀", "こんにちは株式会社"]
    assert "\\u" in escaped  # the second block really used escapes


# -- the fallback when no union string fits (grammar.best_allowed), on hand-made members ----------


class _Backend:
    """A member backend reduced to what the fallback reads: its ranked candidates and logits."""

    def __init__(self, ranked: list[int], logits: dict[int, float]) -> None:
        self.ranked, self.logits = ranked, logits

    def candidates(self, r: int, n: int) -> list[int]:
        return self.ranked[:n]

    def logits_at(self, r: int, cols: list[int]) -> list[float]:
        return [self.logits[c] for c in cols]


def _member(pieces: list[bytes]):
    from types import SimpleNamespace

    from unite_integrations.engine.vocab import Vocab

    byte_ids = [-1] * 256
    for i, p in enumerate(pieces):
        if len(p) == 1:
            byte_ids[p[0]] = i
    exact = {p: i for i, p in enumerate(pieces)}
    vocab = Vocab(None, list(pieces), [], byte_ids, exact, "hand-made")
    return SimpleNamespace(vocab=vocab)


def test_fallback_takes_the_best_allowed_candidate_then_the_next_member_then_a_byte():
    from types import SimpleNamespace

    from unite_integrations.engine.constraints import ByteMatcher
    from unite_integrations.engine.grammar import best_allowed

    # Member 0: id 0 spells b"a" (a byte token at id 0), id 3 b"ab", id 4 b"zz"; member 1: b"c".
    m0 = _member([b"a", b"b", b"c", b"ab", b"zz"])
    m1 = _member([b"zz", b"cb"])
    ens = SimpleNamespace(members=[m0, m1])
    grammar = ByteMatcher(Constraint.regex("ab|cb|a|c"))
    logits0 = {0: 3.0, 1: 0.0, 2: 1.0}
    # The primary's most likely allowed candidate; a disallowed one ranked first is skipped.
    best = best_allowed(ens, [_Backend([4, 3, 0], logits0), _Backend([1], {})], 0, grammar)
    assert best == (0, 3)
    # None of the primary's candidates fits: the next member's.
    best = best_allowed(ens, [_Backend([4], logits0), _Backend([0, 1], {})], 0, grammar)
    assert best == (1, 1)
    # No candidate fits: the primary's most likely allowed byte ('a' is id 0, 'c' is id 2).
    assert best_allowed(ens, [_Backend([4], logits0), _Backend([0], {})], 0, grammar) == (0, 0)
    logits0 = {0: 1.0, 1: 9.0, 2: 3.0}  # 'b' is likelier still, but not allowed
    assert best_allowed(ens, [_Backend([4], logits0), _Backend([0], {})], 0, grammar) == (0, 2)
    # The grammar accepts the text as it is: END (the primary's END column, its vocabulary size).
    grammar.consume(b"a")
    assert best_allowed(ens, [_Backend([4], logits0), _Backend([0], {})], 0, grammar) == (0, 5)


def test_fallback_refuses_a_grammar_the_primary_cannot_spell():
    from types import SimpleNamespace

    from unite_integrations.engine.constraints import ByteMatcher
    from unite_integrations.engine.grammar import best_allowed

    ens = SimpleNamespace(members=[_member([b"a", b"zz"])])
    grammar = ByteMatcher(Constraint.regex("q"))
    with pytest.raises(
        AssertionError, match=r"^the grammar allows no byte the primary member can spell$"
    ):
        best_allowed(ens, [_Backend([1], {0: 0.0})], 0, grammar)  # type: ignore[arg-type]


def test_a_grammar_that_allows_everything_changes_nothing_but_the_last_step(hetero):
    """Rows with an allow-all grammar, decoding in one batch with rows without one, choose what
    the union chooses; the closing rule ends them with END at their last step (the grammar
    accepts there), so their text is the free text of one step less."""
    from conftest import PROMPTS

    n = 10
    anything = Constraint.regex(r"(.|\n)*")
    free = hetero.submit(PROMPTS[:4], max_new_tokens=n + 4)  # in flight all along
    ruled = hetero.submit(PROMPTS[:4], max_new_tokens=n, constraint=anything)
    free_results = [r for req in free for r in req.next_event().results]
    ruled_results = [r for req in ruled for r in req.next_event().results]
    shorter = hetero.generate(PROMPTS[:4], max_new_tokens=n - 1)
    assert [r.text for r in free_results] == [
        r.text for r in hetero.generate(PROMPTS[:4], max_new_tokens=n + 4)
    ]
    assert [r.text for r in ruled_results] == [r.text for r in shorter]
    for got, want in zip(ruled_results, shorter):
        assert [t.proposers for t in got.provenance.tokens] == [
            t.proposers for t in want.provenance.tokens
        ]


# -- the closing rule (grammar.closing_token, grammar.closing_need), on hand-made members -----------


def _closing_ens(*pieces: list[bytes], unusable: tuple[tuple[int, int], ...] = ()):
    from types import SimpleNamespace

    members = [_member(list(p)) for p in pieces]
    usable = [[True] * len(p) for p in pieces]
    for i, t in unusable:
        usable[i][t] = False
    longest = max(len(b) for p in pieces for b in p)
    return SimpleNamespace(members=members, usable=usable, longest=longest)


def test_closing_token_takes_the_longest_forced_token_of_any_usable_member():
    from unite_integrations.engine.constraints import ByteMatcher
    from unite_integrations.engine.grammar import closing_token

    m0, m1 = [b"a", b"ab", b"x"], [b"y", b"abc"]
    forced = ByteMatcher(Constraint.regex("abc"))
    assert closing_token(_closing_ens(m0, m1), forced) == (1, 1)  # b"abc", member 1's
    assert closing_token(_closing_ens(m0, m1, unusable=((1, 1),)), forced) == (0, 1)  # b"ab"
    assert closing_token(_closing_ens([b"a", b"x"], [b"y"]), forced) == (0, 0)  # b"a", id 0
    assert closing_token(_closing_ens([b"x"], [b"y", b"a"]), forced) == (1, 1)  # one byte forced
    done = ByteMatcher(Constraint.regex("a"))
    done.consume(b"a")
    assert closing_token(_closing_ens(m0, m1), done) == (0, 3)  # END: the primary's size


def test_closing_token_prefers_closers_in_order_then_a_finishing_byte():
    from unite_integrations.engine.constraints import ByteMatcher
    from unite_integrations.engine.grammar import closing_token

    choice = ByteMatcher(Constraint.regex('(\\}y|"x)'))  # nothing forced: '"' before '}'
    assert closing_token(_closing_ens([b'"', b"}", b"q"], [b"y"]), choice) == (0, 0)
    assert closing_token(_closing_ens([b"q", b"}"], [b"y"]), choice) == (0, 1)  # no '"' byte
    ab = ByteMatcher(Constraint.regex("(a|b)"))  # no closer allowed: a byte that finishes
    assert closing_token(_closing_ens([b"q", b"b", b"a"], [b"y"]), ab) == (0, 2)
    unusable = _closing_ens([b"q", b"b", b"a"], [b"y", b"z", b"w"], unusable=((0, 2),))
    assert closing_token(unusable, ab) == (0, 1)  # 'a' may not be chosen: 'b'
    # member 1's usability does not matter for the primary's bytes
    other = _closing_ens([b"q", b"b", b"a"], [b"y", b"z", b"w"], unusable=((1, 2),))
    assert closing_token(other, ab) == (0, 2)
    assert closing_token(_closing_ens([b"a", b"b"], [b"y"]), ab) == (0, 0)  # 'a' is id 0
    nothing = ByteMatcher(Constraint.regex("q"))
    assert closing_token(_closing_ens([b"a", b"b"], [b"y"]), nothing) == (-1, -1)


def test_closing_need_counts_the_closing_rules_steps_after_a_piece():
    from unite_integrations.engine.constraints import ByteMatcher
    from unite_integrations.engine.grammar import closing_need

    ens = _closing_ens([b"a", b"b", b"c", b"bc"], [b"y"])
    matcher = ByteMatcher(Constraint.regex("abc"))
    assert closing_need(ens, matcher, b"a", 10) == 2  # b"bc", then END
    assert closing_need(ens, matcher, b"ab", 10) == 2  # b"c", then END
    assert closing_need(ens, matcher, b"a", 1) == 1  # at most the limit
    assert matcher.allows(b"abc")  # the row's own matcher did not move
    assert closing_need(ens, ByteMatcher(Constraint.regex("aq")), b"a", 7) == 7  # cannot close


def test_the_smallest_budgets_the_engine_accepts_still_close_the_json(roomy):
    """The closing rule counts the steps to close after each candidate: with the smallest budget
    the engine accepts for a schema, and one or two more, the text still parses."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    constraint = Constraint.json_schema(schema)
    budgets = []
    for budget in range(1, 40):
        try:
            r = roomy.generate(["x", "A:"], constraint=constraint, max_new_tokens=budget)
        except ConfigError:
            assert not budgets  # once a budget is enough, every larger one is
            continue
        budgets.append(budget)
        for one in r:
            assert isinstance(json.loads(one.text)["a"], int), (budget, one.text)
        if len(budgets) == 3:
            break
    assert len(budgets) == 3 and budgets[0] > 2


def _accepts(constraint: Constraint, text: str) -> bool:
    """Whether the constraint's grammar accepts ``text`` as a whole (its bytes, then END)."""
    from unite_integrations.engine.constraints import ByteMatcher

    m, data = ByteMatcher(constraint), text.encode()
    if not m.allows(data):
        return False
    m.consume(data)
    return m.allows(b"")


def _call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


WEATHER = _call("get_weather", '{"city": "Paris", "days": 2}')
ADD = _call("add", '{"a": 1, "b": 2.5}')


@pytest.mark.parametrize(
    ("choice", "parallel", "text", "ok"),
    [
        ("required", True, WEATHER, True),
        ("required", True, ADD, True),
        ("required", True, WEATHER + "\n" + ADD, True),  # parallel calls, one per line
        ("required", False, WEATHER + "\n" + ADD, False),
        ("required", False, WEATHER, True),
        ("required", True, "It is sunny.", False),  # required: no plain text
        ("required", True, "", False),
        ("any", True, ADD, True),
        ("add", True, ADD, True),  # a forced tool: that one only
        ("add", True, WEATHER, False),
        ("get_weather", True, WEATHER + "\n" + WEATHER, True),
        ("auto", True, "It is sunny.", True),  # auto: text or calls
        ("auto", True, WEATHER, True),
        ("auto", True, "<b>sunny</b>", False),  # text may not start with "<"
        ("required", True, _call("get_time", '{"city": "Paris", "days": 2}'), False),
        ("required", True, _call("get_weather", '{"city": "Paris"}'), False),  # required args
        ("required", True, _call("get_weather", '{"city": "Paris", "days": 2, "x": 1}'), False),
        ("required", True, _call("get_weather", '{"city": "Paris", "days": "2"}'), False),
        ("required", True, _call("get_weather", '{"city": "' + "P" * 25 + '", "days": 2}'), False),
        ("required", True, _call("get_weather", '{"city": "' + "P" * 24 + '", "days": 2}'), True),
        ("required", True, WEATHER.replace('"arguments"', '"args"'), False),
        ("required", True, WEATHER.replace("</tool_call>", "</tool>"), False),
    ],
)
def test_tool_call_grammar_accepts_exactly_the_calls_it_should(choice, parallel, text, ok):
    constraint = Constraint.tool_calls(TOOLS, choice, parallel=parallel, max_string_length=24)
    assert _accepts(constraint, text) is ok


def test_tool_schema_takes_bare_and_parameterless_tools():
    """A tool given as the function itself, and one without parameters (its arguments: {})."""
    from unite_integrations.engine.tool_format import tool_schema

    bare = {
        "name": "ping",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
    }
    assert tool_schema(bare) == ("ping", bare["parameters"])
    empty = {"type": "function", "function": {"name": "now"}}
    assert tool_schema(empty) == ("now", {"type": "object", "properties": {}})
    c = Constraint.tool_calls([bare, empty])
    assert _accepts(c, _call("now", "{}")) and _accepts(c, _call("ping", '{"n": 3}'))
    assert not _accepts(c, _call("now", '{"n": 3}'))
    for nameless in ({"type": "function", "function": {"name": ""}}, {"name": 3}):
        with pytest.raises(ConfigError, match="no name"):
            tool_schema(nameless)


def test_constraint_kinds_and_the_default_string_bound():
    """Each constructor names its kind (error messages quote it); JSON strings are bounded at
    512 characters unless told otherwise."""
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    c = Constraint.json_schema(schema)
    assert c.kind == "json_schema" and Constraint.regex("a+").kind == "regex"
    assert Constraint.tool_calls(TOOLS).kind == "tool_calls"
    assert _accepts(c, '{"s": "' + "x" * 512 + '"}')
    assert not _accepts(c, '{"s": "' + "x" * 513 + '"}')


def test_byte_matcher_finishing_and_allowed_bytes():
    """``finishing_byte`` prefers an allowed byte that completes the text over a lower one that
    does not, else the lowest allowed; ``allowed_bytes`` lists bytes only (never END)."""
    from unite_integrations.engine.constraints import ByteMatcher, _ByteTokenizer

    every = [True] * 256
    m = ByteMatcher(Constraint.regex("[0-9]+x|x"))
    assert m.finishing_byte(every) == ord("x")
    m = ByteMatcher(Constraint.regex("[bc]d"))
    assert m.finishing_byte(every) == ord("b")
    assert m.finishing_byte([b != ord("b") for b in range(256)]) == ord("c")
    m = ByteMatcher(Constraint.regex("a?"))
    assert m.allows(b"") and m.allowed_bytes() == [ord("a")]
    assert _ByteTokenizer()("é") == [0xC3, 0xA9] and _ByteTokenizer()(b"\xff") == [255]


@pytest.mark.parametrize("key", ["properties", "$defs", "definitions", "patternProperties"])
def test_bounded_schema_reads_name_maps_as_names(key):
    """Under ``properties``, ``$defs``, ``definitions`` and ``patternProperties`` the keys are
    names, not keywords: a property called "properties" is bounded as a property and gets no
    ``additionalProperties`` beside it."""
    s = bounded_schema({key: {"properties": {"type": "string"}}}, 7)
    assert s[key] == {"properties": {"type": "string", "maxLength": 7}}


@pytest.mark.parametrize("bound", ["maxLength", "enum", "const", "pattern", "format"])
def test_bounded_schema_keeps_strings_that_are_bounded_already(bound):
    value = {"maxLength": 3, "enum": ["a"], "const": "a", "pattern": "^a$", "format": "date"}[bound]
    s = bounded_schema({"type": "string", bound: value}, 7)
    assert s == {"type": "string", bound: value}


def test_bounded_schema_bounds_strings_inside_lists_of_schemas():
    s = bounded_schema({"anyOf": [{"type": "string"}, {"type": "integer"}]}, 7)
    assert s == {"anyOf": [{"type": "string", "maxLength": 7}, {"type": "integer"}]}
    assert bounded_schema({"type": "string"}, None) == {"type": "string"}


@pytest.mark.parametrize(
    ("text", "calls", "content"),
    [
        # a malformed block, then good ones: the good ones still parse, the bad one stays text
        (
            "<tool_call>\n{oops}\n</tool_call> " + ADD,
            [("add", {"a": 1, "b": 2.5})],
            "<tool_call>\n{oops}\n</tool_call>",
        ),
        (
            "<tool_call>\n[1, 2]\n</tool_call>" + ADD,
            [("add", {"a": 1, "b": 2.5})],
            "<tool_call>\n[1, 2]\n</tool_call>",
        ),
        (
            _call("x", "{}").replace('"name": "x", ', "") + ADD,
            [("add", {"a": 1, "b": 2.5})],
            _call("x", "{}").replace('"name": "x", ', ""),
        ),
        # arguments under "parameters", as a JSON string, as plain text, of the wrong type, absent
        ('<tool_call>{"name": "f", "parameters": {"k": 1}}</tool_call>', [("f", {"k": 1})], ""),
        (
            '<tool_call>{"name": "f", "arguments": "{\\"k\\": 2}"}</tool_call>',
            [("f", {"k": 2})],
            "",
        ),
        (
            '<tool_call>{"name": "f", "arguments": "Paris"}</tool_call>',
            [("f", {"input": "Paris"})],
            "",
        ),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', [("f", {})], ""),
        ('<tool_call>{"name": "f"}</tool_call>', [("f", {})], ""),
        ("  no calls here  ", [], "  no calls here  "),  # nothing parsed: the text as it was
    ],
)
def test_parse_tool_calls_cases(text, calls, content):
    import re

    got_content, got = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in got] == calls
    assert got_content == content
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in got)
    assert len({c.id for c in got}) == len(got)


def test_tool_call_grammar_defaults_and_its_object_shape():
    """Defaults: ``required``, parallel calls, strings bounded at 512; a call object holds a name
    and its arguments, both required, and nothing else."""
    c = Constraint.tool_calls(TOOLS)
    assert _accepts(c, WEATHER + "\n" + ADD) and not _accepts(c, "It is sunny.")
    assert _accepts(c, _call("get_weather", '{"city": "' + "P" * 512 + '", "days": 2}'))
    assert not _accepts(c, _call("get_weather", '{"city": "' + "P" * 513 + '", "days": 2}'))
    assert not _accepts(c, '<tool_call>\n{"name": "add"}\n</tool_call>')
    assert not _accepts(c, ADD.replace('"name"', '"id": "1", "name"'))
    one = Constraint.tool_calls(TOOLS[1:])  # a single tool: no anyOf
    assert _accepts(one, ADD) and not _accepts(one, WEATHER)
