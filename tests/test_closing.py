"""Constrained rows close as late as is safe: the budget left is compared, every step, with the
steps the closing rule needs from the grammar state, so the model writes its own arguments."""

from __future__ import annotations

import json

import pytest
from conftest import REAL_MODELS_MISSING
from test_constraints import CONVERSATIONS, PERSON, TOOLS

from unite_integrations import MemberSpec, UniTEEngine
from unite_integrations.engine.constraints import ByteMatcher, Constraint
from unite_integrations.engine.grammar import closing_need
from unite_integrations.engine.tool_format import parse_tool_calls
from unite_integrations.errors import ConfigError


@pytest.fixture(scope="module")
def roomy(tiny_dirs) -> UniTEEngine:
    return UniTEEngine(
        [
            MemberSpec(source=str(tiny_dirs[f]), context_window=4096)
            for f in ("bytelevel_bpe", "sentencepiece_bpe")
        ],
        top_k=5,
        check_invariants=True,
    )


def shortest(engine: UniTEEngine, constraint: Constraint) -> int:
    return closing_need(engine._ens, ByteMatcher(constraint), b"", 10_000)


CASES = {
    "forced call, unbounded strings": Constraint.tool_calls(
        TOOLS, "get_weather", max_string_length=None
    ),
    "any call": Constraint.tool_calls(TOOLS, "required", max_string_length=16),
    "schema, unbounded strings": Constraint.json_schema(PERSON, max_string_length=None),
    "regex": Constraint.regex("[a-z]+b"),
}


def parses(kind: str, text: str) -> bool:
    if kind == "json_schema":
        data = json.loads(text)
        return isinstance(data["name"], str) and isinstance(data["age"], int)
    if kind == "regex":
        return text[-1] == "b" and text[:-1].isalpha()
    content, calls = parse_tool_calls(text)
    return bool(calls) and content == ""


@pytest.mark.parametrize("case", list(CASES))
def test_every_budget_that_holds_the_shortest_text_gives_a_parsing_one(roomy, case):
    constraint = CASES[case]
    need = shortest(roomy, constraint)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        roomy.generate(["x"], constraint=constraint, max_new_tokens=need - 1)
    prompts = CONVERSATIONS[:2] if constraint.kind == "tool_calls" else ["A person:", "x"]
    for budget in range(need, need + 36, 5):
        for r in roomy.generate(prompts, tools=TOOLS, constraint=constraint, max_new_tokens=budget):
            assert parses(constraint.kind, r.text), (budget, r.text)
            assert r.finish_reason == "stop", (budget, r.text)


def test_the_closing_starts_no_earlier_than_it_must(roomy):
    """At the shortest budget every step is the closing rule's; one more step and the model
    chooses at least once (probabilities of a union choice are above 0)."""
    constraint = CASES["schema, unbounded strings"]
    need = shortest(roomy, constraint)
    tight = roomy.generate(["A person:"], constraint=constraint, max_new_tokens=need)[0]
    assert tight.usage.output_tokens == need - 1  # the END is the last step
    roomy_budget = roomy.generate(["A person:"], constraint=constraint, max_new_tokens=need + 20)[0]
    assert json.loads(roomy_budget.text)
    assert any(max(t.probs.values()) > 0 for t in roomy_budget.provenance.tokens)


MAGIC = [
    {
        "type": "function",
        "function": {
            "name": "magic_function",
            "description": "Applies a magic function to an input.",
            "parameters": {
                "type": "object",
                "properties": {"input": {"type": "integer"}},
                "required": ["input"],
            },
        },
    }
]


@pytest.mark.real
@pytest.mark.skipif(REAL_MODELS_MISSING is not None, reason=str(REAL_MODELS_MISSING))
def test_real_pair_forced_call_keeps_the_models_argument_at_32_tokens():
    engine = UniTEEngine(["smollm2-135m-instruct", "gemma-3-270m"])
    conversation = [
        {"role": "user", "content": "What is the value of magic_function(3)? Use the tool."}
    ]
    constraint = Constraint.tool_calls(MAGIC, "magic_function")
    r = engine.generate([conversation], tools=MAGIC, constraint=constraint, max_new_tokens=32)[0]
    _, calls = parse_tool_calls(r.text)
    assert [(c.name, c.arguments) for c in calls] == [("magic_function", {"input": 3})], r.text
    engine.close()


def _closing_walk(engine: UniTEEngine, matcher: ByteMatcher, limit: int) -> int:
    """The closing rule followed one call a step, as the rule reads: the literal count."""
    from unite_integrations.engine.grammar import closing_token

    m, ens = matcher.copy(), engine._ens
    for n in range(limit):
        i, t = closing_token(ens, m)
        if i < 0:
            return limit
        if t == ens.members[i].vocab.size:
            return n + 1
        m.consume(ens.members[i].vocab.canon[t] or b"")
    return limit


def _deep(n: int) -> dict[str, object]:
    return (
        {"type": "object", "properties": {"a": _deep(n - 1)}, "required": ["a"]}
        if n
        else {"type": "string"}
    )


LONG_FORCED = {
    "a 300-byte property name": Constraint.json_schema(
        {"type": "object", "properties": {"q" * 300: {"type": "integer"}}, "required": ["q" * 300]}
    ),
    "a schema nested 60 objects deep": Constraint.json_schema(_deep(60), max_string_length=8),
    "a regex of a long literal, then a choice": Constraint.regex("(abc ){40}(x|yz)+"),
    "a forced call": CASES["forced call, unbounded strings"],
}


@pytest.mark.parametrize("case", list(LONG_FORCED))
def test_the_closing_count_walks_forced_runs_as_the_rule_does(roomy, case):
    """``closing_need`` consumes a forced run longer than any token in one call: the count is
    the rule's, one call a step, from the start and from states part of the way."""
    matcher = ByteMatcher(LONG_FORCED[case])
    for _ in range(4):
        need = closing_need(roomy._ens, matcher, b"", 5_000)
        assert need == _closing_walk(roomy, matcher, 5_000)
        assert closing_need(roomy._ens, matcher, b"", need - 1) == need - 1  # the limit holds
        forced = matcher.forced_bytes()
        if not forced:
            break
        matcher.consume(forced[: max(1, len(forced) // 3)])


def test_a_schema_nested_60_deep_is_served_and_parses(roomy):
    """It was never served: bounding its strings visited each level twice (2^60 calls)."""
    constraint = Constraint.json_schema(_deep(60), max_string_length=4)
    need = shortest(roomy, constraint)
    [result] = roomy.generate(["A value:"], constraint=constraint, max_new_tokens=need + 8)
    data = json.loads(result.text)
    for _ in range(60):
        data = data["a"]
    assert isinstance(data, str)


def test_a_budget_the_context_window_cannot_hold_is_refused_at_the_call(tiny_dirs):
    """The budget check counts the room the prompt leaves in the context window, not only
    ``max_new_tokens``: a grammar that cannot close there is refused, never cut mid-JSON."""
    small = UniTEEngine(
        [
            MemberSpec(source=str(tiny_dirs[f]), context_window=160)
            for f in ("bytelevel_bpe", "sentencepiece_bpe")
        ],
        top_k=5,
    )
    constraint = Constraint.json_schema(_deep(12), max_string_length=4)
    need = closing_need(small._ens, ByteMatcher(constraint), b"", 10_000)
    assert need < 150  # it fits an empty window, not one holding a long prompt
    with pytest.raises(ConfigError, match="context window"):
        small.generate(["word " * 30], constraint=constraint, max_new_tokens=need + 50)
    [ok] = small.generate(["x"], constraint=constraint, max_new_tokens=need + 50)
    assert json.loads(ok.text)
    small.close()


def test_a_60_deep_schema_beside_a_normal_request_costs_that_request_nothing_in_steps(roomy):
    """The pathological request of issue 26, with its schema in its prompt as the chat core
    writes it (over a thousand ids): the normal request beside it is answered in as many
    engine steps as it has tokens (plus its admission), with the text it gets alone; the deep
    one is answered and parses."""
    schema = _deep(60)
    constraint = Constraint.json_schema(schema, max_string_length=4)
    deep_prompt = "Answer in JSON following this schema: " + json.dumps(schema)
    assert all(len(m.encode_prompt(deep_prompt)) > 1000 for m in roomy.members)
    normal = {"max_new_tokens": 12, "min_new_tokens": 12}
    alone = roomy.generate(["Once upon a time"], **normal)[0].text
    need = shortest(roomy, constraint)
    [deep] = roomy.submit([deep_prompt], constraint=constraint, max_new_tokens=need + 8)
    before = roomy.stats["steps"]
    [result] = roomy.generate(["Once upon a time"], **normal)
    assert roomy.stats["steps"] - before <= 12 + 2
    assert result.text == alone
    [answer] = deep.next_event().results
    data = json.loads(answer.text)
    for _ in range(60):
        data = data["a"]
    assert isinstance(data, str)
