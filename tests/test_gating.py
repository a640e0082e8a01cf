"""Gated ensembling (``gate``): the primary alone where it is confident, the union elsewhere.

Every engine here checks at every forward that each member's ids, with the ids it has still to
take, spell the shared text (``check_invariants=True``), so the lazy members' catch-up (several
strings in one multi-token forward) is checked at every step too.
"""

from __future__ import annotations

import pytest
from conftest import PROMPTS

from unite_integrations import UniTEEngine
from unite_integrations.errors import ConfigError

N = 12


def _texts(engine: UniTEEngine, prompts: list[str], **kw: object) -> list[str]:
    return [r.text for r in engine.generate(prompts, max_new_tokens=N, **kw)]


def test_gate_one_is_full_unite(trio: UniTEEngine) -> None:
    full = trio.generate(PROMPTS[:6], max_new_tokens=N)
    gated = trio.generate(PROMPTS[:6], max_new_tokens=N, gate=1.0)
    assert [r.text for r in gated] == [r.text for r in full]
    assert [r.provenance for r in gated] == [r.provenance for r in full]
    assert all(r.provenance.gated_share == 0 for r in gated)


def test_gate_zero_is_the_primary_alone(trio: UniTEEngine) -> None:
    alone = trio.member_engine(0)
    prompts = PROMPTS[:8]
    gated = trio.generate(prompts, max_new_tokens=N, gate=0.0)
    assert [r.text for r in gated] == _texts(alone, prompts)
    for r in gated:
        assert r.provenance.gated_share == 1.0
        assert all(t.gated and t.proposers == [trio.member_names[0]] for t in r.provenance.tokens)
        assert all(list(t.probs) == [trio.member_names[0]] for t in r.provenance.tokens)
        # The others gave no probability, so the primary wins every gated token; no vote, so no
        # agreement.
        assert all(t.winner == trio.member_names[0] for t in r.provenance.tokens)
        assert r.provenance.win_share[trio.member_names[0]] == (1.0 if r.provenance.tokens else 0)
        assert r.provenance.agreement_rate == 0.0


def test_gated_tokens_report_the_primarys_own_top_logprobs(trio: UniTEEngine) -> None:
    """A gated token's top strings are the primary's distribution alone, as its one-member
    engine reports them."""
    alone = trio.member_engine(0)
    prompts = PROMPTS[:4]
    gated = trio.generate(prompts, max_new_tokens=N, gate=0.0, top_logprobs=3)
    for g, a in zip(gated, alone.generate(prompts, max_new_tokens=N, top_logprobs=3)):
        assert g.text == a.text
        assert [t.logprob for t in g.provenance.tokens] == pytest.approx(
            [t.logprob for t in a.provenance.tokens], abs=1e-6
        )
        for tg, ta in zip(g.provenance.tokens, a.provenance.tokens):
            assert tg.top is not None and ta.top is not None and len(tg.top) == 3
            assert [c.text for c in tg.top] == [c.text for c in ta.top]
            assert [c.logprob for c in tg.top] == pytest.approx(
                [c.logprob for c in ta.top], abs=1e-6
            )


def _rows_and_ids_seen(model):  # type: ignore[no-untyped-def]
    """A hook recording (rows, ids per row) of each forward pass of ``model``, and its handle."""
    seen: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda _m, a, kw: seen.append(tuple((kw.get("input_ids") if kw else a[0]).shape[:2])),
        with_kwargs=True,
    )
    return seen, handle


def test_the_others_prefill_a_row_that_never_votes_by_one_id(trio: UniTEEngine) -> None:
    """Lazy prefill: at gate 0 the members other than the primary take each row's first id in
    one forward when the rows join, without their output layer (nobody reads those logits),
    and nothing more; the prompt waits for a vote that never comes. At gate 1 (full UniTE)
    they prefill the whole prompt."""
    prompts = PROMPTS[:4]
    others = [m.model for m in trio.members[1:]]
    hooks = [_rows_and_ids_seen(m.get_decoder()) for m in others]
    heads = [_rows_and_ids_seen(m.get_output_embeddings()) for m in others]
    try:
        trio.generate(prompts, max_new_tokens=N, gate=0.0)
        assert [seen for seen, _ in hooks] == [[(4, 1)], [(4, 1)]]
        assert [seen for seen, _ in heads] == [[], []]
        for seen, _ in hooks:
            seen.clear()
        trio.generate(prompts, max_new_tokens=N, gate=1.0)
        for member, (seen, _) in zip(trio.members[1:], hooks):
            longest = max(len(member.encode_prompt(p)) for p in prompts)
            assert seen[0] == (4, longest)
        assert all(seen for seen, _ in heads)
    finally:
        for _, handle in hooks + heads:
            handle.remove()


def test_a_row_prefilled_lazily_votes_later_with_its_whole_prompt(hetero: UniTEEngine) -> None:
    """A row whose first vote comes after gated steps: the other member's first catch-up
    carries the prompt (but its first id) and the text so far; every member's ids spell the
    text (the engine's invariant check), and the row equals its solo run."""
    other = hetero.members[1]
    seen, handle = _rows_and_ids_seen(other.model.get_decoder())
    try:
        results = hetero.generate(PROMPTS[:6], max_new_tokens=N, gate=0.3)
    finally:
        handle.remove()
    late = [r for r in results if r.provenance.tokens and r.provenance.tokens[0].gated]
    assert any(not t.gated for r in late for t in r.provenance.tokens), "no late first vote"
    longest = max(len(other.encode_prompt(p)) for p in PROMPTS[:6])
    assert seen[0] == (6, 1) and max(n for _, n in seen[1:]) >= longest - 1
    single = [hetero.generate([p], max_new_tokens=N, gate=0.3)[0].text for p in PROMPTS[:6]]
    assert [r.text for r in results] == single


def test_gated_members_catch_up_across_tokenizers(hetero: UniTEEngine) -> None:
    """A middle gate mixes gated and voted steps: catch-up forwards of several strings."""
    results = hetero.generate(PROMPTS, max_new_tokens=N, gate=0.3)
    shares = [r.provenance.gated_share for r in results]
    # A token is gated only where the primary alone gave it at least the gate (its top-1
    # probability over its own candidates).
    primary = hetero.member_names[0]
    gated = [t.probs[primary] for r in results for t in r.provenance.tokens if t.gated]
    assert gated and min(gated) >= 0.3 and max(gated) <= 1.0
    assert any(0 < s < 1 for s in shares), shares  # rows both gate and vote
    assert sum(s == 0 for s in shares) < len(shares)  # and some rows gate


def test_batched_equals_row_by_row_with_gating(hetero: UniTEEngine) -> None:
    prompts = PROMPTS[:10]
    batched = hetero.generate(prompts, max_new_tokens=N, gate=0.3)
    single = [hetero.generate([p], max_new_tokens=N, gate=0.3)[0] for p in prompts]
    assert [_facts(r) for r in batched] == [_facts(r) for r in single]


def _facts(r):  # type: ignore[no-untyped-def]
    """What must not depend on the batch (probabilities may differ in the last bits)."""
    return r.text, r.finish_reason, [t.gated for t in r.provenance.tokens]


def test_rows_with_and_without_gate_share_a_batch(hetero: UniTEEngine) -> None:
    """Requests with different gates join in one prefill and decode in one batch; each equals
    its own solo run (the rows without a gate are prefilled whole by every member, the others
    lazily, in the same forward)."""
    joins = hetero.stats["batches"]
    with hetero._scheduler._cond:  # the worker admits both requests at once
        full = hetero.submit(PROMPTS[:4], max_new_tokens=N)
        gated = hetero.submit(PROMPTS[4:8], max_new_tokens=N, gate=0.3)
    texts = [r.text for req in full + gated for r in _done(req)]
    assert hetero.stats["batches"] == joins + 1
    assert texts[:4] == _texts(hetero, PROMPTS[:4])
    assert texts[4:] == _texts(hetero, PROMPTS[4:8], gate=0.3)


def test_a_lazily_prefilled_prompt_of_two_ids_reaches_every_member(hetero: UniTEEngine) -> None:
    """The shortest prompt a lazy prefill splits: the other member takes its first id when the
    row joins and its second as pending text; the invariant check fails if that id is lost."""
    other = hetero.members[1]
    prompt = next(w for w in ("a", "I", "The", "Hi", "Once") if len(other.encode_prompt(w)) == 2)
    gated = hetero.generate([prompt], max_new_tokens=N, gate=0.9)[0]
    assert any(not t.gated for t in gated.provenance.tokens)  # it voted: the id was consumed
    assert _texts(hetero, [prompt, *PROMPTS[:3]], gate=0.9)[0] == gated.text


def _done(request):  # type: ignore[no-untyped-def]
    event = request.next_event()
    return event.results


def test_sampled_gating_is_reproducible(hetero: UniTEEngine) -> None:
    kw = {"temperature": 0.8, "seed": 7, "gate": 0.3}
    assert _texts(hetero, PROMPTS[:4], **kw) == _texts(hetero, PROMPTS[:4], **kw)


def test_streaming_with_gating(hetero: UniTEEngine) -> None:
    chunks = list(hetero.stream(PROMPTS[1], max_new_tokens=N, gate=0.3))
    assert "".join(c.text for c in chunks) == chunks[-1].result.text  # type: ignore[union-attr]
    alone = hetero.generate([PROMPTS[1]], max_new_tokens=N, gate=0.3)[0]
    assert _facts(chunks[-1].result) == _facts(alone)


def test_gated_share_counts_gated_tokens(hetero: UniTEEngine) -> None:
    for r in hetero.generate(PROMPTS[:6], max_new_tokens=N, gate=0.3):
        p = r.provenance
        n_gated = sum(t.gated for t in p.tokens)
        decisions = len(p.tokens) + (r.finish_reason == "stop")
        assert n_gated <= round(p.gated_share * decisions) <= n_gated + 1  # END may be gated
        assert p.summary()["gated_share"] == p.gated_share


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.9", True, float("nan")])
def test_bad_gate_is_refused(hetero: UniTEEngine, bad: object) -> None:
    with pytest.raises(ConfigError, match="gate"):
        hetero.generate(["x"], max_new_tokens=2, gate=bad)


# -- the option through every front end ---------------------------------------------------------


def test_chat_core_resolves_gate() -> None:
    from unite_integrations.chat import ChatDefaults
    from unite_integrations.chat.options import engine_options
    from unite_integrations.chat.types import ChatOptions

    assert engine_options(ChatDefaults(), ChatOptions()).gate is None  # full UniTE
    assert engine_options(ChatDefaults(gate=0.9), ChatOptions()).gate == 0.9
    assert engine_options(ChatDefaults(gate=0.9), ChatOptions(gate=1.0)).gate == 1.0
    with pytest.raises(ConfigError, match="gate"):
        engine_options(ChatDefaults(), ChatOptions(gate=2.0))


def test_adapters_pass_gate() -> None:
    from langchain_core.messages import HumanMessage

    from unite_integrations.langchain._messages import to_core_request
    from unite_integrations.llama_index._messages import call_options

    req = to_core_request([HumanMessage("hi")], None, {"gate": 0.7}, "m")
    assert req.options.gate == 0.7
    assert call_options({"gate": 0.7}).gate == 0.7


def test_langchain_and_llama_index_fields_gate(tiny_dirs, cache_dir) -> None:  # type: ignore[no-untyped-def]
    """The field gates every call; a call's ``gate`` overrides it (1.0: full UniTE)."""
    from llama_index.core.llms import ChatMessage

    from unite_integrations.langchain import UniTEChatModel
    from unite_integrations.llama_index import UniTELLM

    members = [str(tiny_dirs["bytelevel_bpe"]), str(tiny_dirs["sentencepiece_bpe"])]
    kw = {"members": members, "top_k": 5, "cache_dir": str(cache_dir)}
    gated = UniTEChatModel(**kw, max_tokens=6, gate=0.0)  # type: ignore[arg-type]
    full = UniTEChatModel(**kw, max_tokens=6)  # type: ignore[arg-type]
    assert gated.invoke("Hello world").content == full.invoke("Hello world", gate=0.0).content
    assert gated.invoke("Hello world", gate=1.0).content == full.invoke("Hello world").content
    assert gated.invoke("Hello world").response_metadata["provenance"]["gated_share"] == 1.0
    li = UniTELLM(**kw, max_new_tokens=6, gate=0.0)  # type: ignore[arg-type]
    msg = [ChatMessage(role="user", content="Hello world")]
    assert li.chat(msg).message.content == gated.invoke("Hello world").content


def test_cli_parses_gate() -> None:
    from unite_integrations.cli import _parser

    assert _parser().parse_args(["generate", "x", "--gate", "0.9"]).gate == 0.9
    assert _parser().parse_args(["generate", "x"]).gate is None
    args = _parser().parse_args(["eval", "-d", "arc", "--gate", "0.5"])
    assert args.gate == 0.5


def test_server_extension_field_gate(hetero: UniTEEngine) -> None:
    pytest.importorskip("uvicorn")
    import httpx
    from server_harness import running

    user = [{"role": "user", "content": "Hello world"}]
    want = hetero.generate([user], max_new_tokens=6, gate=0.0)[0]
    with running(hetero, model_name="tiny") as url:
        body = {"model": "tiny", "messages": user, "max_tokens": 6, "unite": {"gate": 0.0}}
        r = httpx.post(url + "/chat/completions", json=body, timeout=60).json()
        assert r["choices"][0]["message"]["content"] == want.text
        assert r["unite"]["gated_share"] == 1.0
        body["unite"] = {"gate": 1.5}
        bad = httpx.post(url + "/chat/completions", json=body, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "unite.gate"


def test_a_row_gates_where_the_primarys_top_probability_reaches_its_gate_exactly() -> None:
    """``_needs_vote`` on a hand-made union: two equal candidates give the primary 0.5 each, so a
    gate of exactly 0.5 gates (probability >= gate), a gate just above it votes."""
    from types import SimpleNamespace

    import torch

    from unite_integrations.engine.decode import _needs_vote
    from unite_integrations.engine.union import CandidateUnion

    scores = torch.tensor([[[0.0, 0.0, -1e9], [2.0, 0.0, 0.0]]])  # [N=1, B=2, k=3]
    valid = torch.tensor([[True, True, False], [True, True, True]])
    alone = CandidateUnion(torch.zeros(2, 3, dtype=torch.long), valid, scores, [])
    ens = SimpleNamespace(alone=SimpleNamespace(weights=torch.ones(1)))
    top = float(torch.softmax(scores[0, 1], -1).max())  # float32, as the engine computes it
    assert _needs_vote(ens, alone, [0.5, top]) == [False, False]  # type: ignore[arg-type]
    assert _needs_vote(ens, alone, [0.5001, top + 1e-6]) == [True, True]  # type: ignore[arg-type]


def test_a_grammar_row_beside_gated_rows_still_takes_the_fallback(hetero: UniTEEngine) -> None:
    """A row under a grammar always votes; beside rows that gate, its flag "no union string fits"
    must still reach the grammar fallback. Random tiny members rarely propose JSON, so the row
    needs the fallback within the steps the gated rows share with it."""
    import json

    from unite_integrations.engine.constraints import Constraint

    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    kw: dict[str, object] = {
        "constraint": Constraint.json_schema(schema, max_string_length=8),
        "max_new_tokens": 40,
    }
    alone = hetero.generate(["x"], **kw)[0]  # type: ignore[arg-type]
    joins = hetero.stats["batches"]
    with hetero._scheduler._cond:  # the worker admits both requests at once
        grammar = hetero.submit(["x"], **kw)  # type: ignore[arg-type]
        gated = hetero.submit(PROMPTS[:2], max_new_tokens=N, gate=0.0)
    got = _done(grammar[0])[0]
    assert hetero.stats["batches"] == joins + 1
    assert all(t.gated for r in _done(gated[0]) for t in r.provenance.tokens)
    taken = [n for n, t in enumerate(got.provenance.tokens) if not any(t.probs.values())]
    assert taken and taken[0] < N  # the fallback, while the gated rows were in the batch
    assert json.loads(got.text)["age"] == json.loads(alone.text)["age"]
    assert _facts(got) == _facts(alone)


def test_a_grammar_row_never_gates(hetero: UniTEEngine) -> None:
    """A gate on a constrained call is ignored (only the union's candidates are filtered by the
    grammar): every token is voted, and the text is the call's without a gate."""
    from unite_integrations.engine.constraints import Constraint

    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    kw: dict[str, object] = {
        "constraint": Constraint.json_schema(schema, max_string_length=8),
        "max_new_tokens": 40,
    }
    plain = hetero.generate(["x"], **kw)[0]  # type: ignore[arg-type]
    gated = hetero.generate(["x"], gate=0.0, **kw)[0]  # type: ignore[arg-type]
    assert gated.provenance.tokens and not any(t.gated for t in gated.provenance.tokens)
    assert _facts(gated) == _facts(plain)
