"""Members with sliding-window layers (Gemma-2/3's kind) stay exact in the engine.

A sliding layer sees the last ``window`` tokens. The engine leaves hole columns in a member's KV
cache (rolled-back ids of re-tokenization, other rows' longer takes when gated members catch up,
rows that join at other widths); a window counted in columns would lose real tokens behind them.
Here the second member is a tiny Gemma-3 whose window (4) every sequence passes, and the engine
is checked against the literal reference, whose every score is a fresh forward over the ids.
"""

from __future__ import annotations

import pytest
from conftest import PROMPTS
from reference import as_engine_text, reference_of
from tiny_models import tiny_model_dir

from unite_integrations import UniTEEngine

WINDOW = 4
N = 16


@pytest.fixture(scope="module", params=["gemma3", "mistral"])
def windowed(request, make_engine, tiny_dirs) -> UniTEEngine:  # type: ignore[no-untyped-def]
    # Gemma-3: a sliding layer then a full one, a mask per layer type; Mistral: every layer
    # slides and its config names no layer types, so one mask serves them all.
    member = tiny_model_dir(
        "sentencepiece_bpe", sliding_window=WINDOW, sliding_layout=request.param
    )
    engine: UniTEEngine = make_engine(tiny_dirs["bytelevel_bpe"], member)
    assert engine.members[1].model.config.sliding_window == WINDOW
    return engine


def test_the_tiny_member_has_a_sliding_layer_that_prompts_pass(windowed: UniTEEngine) -> None:
    member = windowed.members[1]
    config = member.model.config
    if config.model_type == "mistral":
        assert getattr(config, "layer_types", None) is None
    else:
        assert config.model_type == "gemma3_text"
        assert config.layer_types[0] == "sliding_attention"
    assert all(len(member.encode_prompt(p)) > WINDOW for p in PROMPTS[:8])


def test_batched_engine_equals_the_reference_past_the_window(windowed: UniTEEngine) -> None:
    prompts = PROMPTS[:6]
    got = windowed.generate(prompts, max_new_tokens=N)
    rolled_back = 0
    for prompt, result in zip(prompts, got):
        expected = reference_of(windowed, prompt, N)
        assert result.text == as_engine_text(expected.text), prompt
        rolled_back += sum(1 not in p for p in expected.proposers)
    assert rolled_back > 0, "the windowed member never took a string it did not propose"


def test_gated_batched_equals_row_by_row_past_the_window(windowed: UniTEEngine) -> None:
    prompts = PROMPTS[:8]
    batched = windowed.generate(prompts, max_new_tokens=N, gate=0.3)
    single = [windowed.generate([p], max_new_tokens=N, gate=0.3)[0] for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]
    shares = [r.provenance.gated_share for r in batched]
    assert any(0 < s < 1 for s in shares), shares  # members catch up over several strings
