"""The compatibility check and `unite eval` on the two real offline models."""

from __future__ import annotations

import pytest
from conftest import real_models_mark

from unite_integrations.compat import check_compatibility, evaluate
from unite_integrations.compat.evaluate import ENSEMBLE

pytestmark = [
    pytest.mark.real,
    real_models_mark,
]

ALIASES = ["smollm2-135m-instruct", "gemma-3-270m"]


def test_quick_check_on_the_real_pair():
    r = check_compatibility(ALIASES, scores={"smollm2-135m-instruct": 0.10, "gemma-3-270m": 0.17})
    assert r.mode == "quick" and r.primary == "gemma-3-270m"
    assert r.verdict == "incompatible"  # a 41% gap
    v = r.pairs[0].vocabulary
    assert v is not None and v.vocab_sizes == (49152, 262144)
    assert v.identical_word_share is not None and v.identical_word_share > 0.5
    assert v.topk_overlap is not None and 0 < v.topk_overlap < 1
    assert r.recommendation.members == ["gemma-3-270m"]


@pytest.mark.slow
def test_measured_check_and_eval_on_the_real_pair():
    r = check_compatibility(ALIASES, task="short-answer", n_items=8, progress=False)
    assert r.mode == "measured" and r.n_items == 8
    assert all(m.score is not None and m.median_response_chars for m in r.members)
    report = evaluate(ALIASES, ["triviaqa"], split="dev", limit=8, progress=False)
    d = report.datasets[0]
    assert [x.system for x in d.results] == [*ALIASES, ENSEMBLE] and d.n == 8
