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


def test_gated_members_catch_up_across_tokenizers(hetero: UniTEEngine) -> None:
    """A middle gate mixes gated and voted steps: catch-up forwards of several strings."""
    results = hetero.generate(PROMPTS, max_new_tokens=N, gate=0.3)
    shares = [r.provenance.gated_share for r in results]
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
    """Requests with different gates decode in one batch; each equals its own solo run."""
    full = hetero.submit(PROMPTS[:4], max_new_tokens=N)
    gated = hetero.submit(PROMPTS[4:8], max_new_tokens=N, gate=0.3)
    texts = [r.text for req in full + gated for r in _done(req)]
    assert texts[:4] == _texts(hetero, PROMPTS[:4])
    assert texts[4:] == _texts(hetero, PROMPTS[4:8], gate=0.3)


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
