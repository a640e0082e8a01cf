"""The mixing and sampling step (``engine/union.py``) against an independent computation.

``mix``/``choose``/``decide`` at temperature > 0 and top-p < 1: many seeded draws of one row must
follow the distribution computed here in plain Python (softmax of scores / t per member over the
valid slots, weighted average, nucleus cut, renormalise). The bounds are per-category binomial
bounds at z = 6.5 (a false alarm rate near 1e-10 per category) and a chi-square bound at a false
alarm rate near 1e-9; the generator is seeded, so a run is deterministic and a pass stays a pass.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from unite_integrations.engine.backends import LocalMember
from unite_integrations.engine.decode import gather_union
from unite_integrations.engine.union import CandidateUnion, StepPlan, choose, decide, mix


# The step takes per-row settings ([B] tensors) and one uniform draw per row from the row's own
# generator; these helpers give every row the same settings and draw from one seeded generator.
def _rows(x: float, b: int) -> torch.Tensor:
    return torch.full((b,), float(x))


def _draws(gen: torch.Generator | None, b: int) -> torch.Tensor:
    return torch.rand(b, generator=gen) if gen is not None else torch.zeros(b)


def mix_(scores, valid, weights, t):
    return mix(scores, valid, weights, _rows(t, valid.shape[0]))


def choose_(p, primary, valid, t, top_p, gen):
    b = p.shape[0]
    return choose(p, primary, valid, _rows(t, b), _rows(top_p, b), _draws(gen, b))


def decide_(union, plan, t, top_p, gen, allowed=None):
    b = union.gid.shape[0]
    return decide(union, plan, _rows(t, b), _rows(top_p, b), _draws(gen, b), allowed)


class _Extended:
    """A member backend over fixed extended logits [B, V + 1] (END last): steps 1-4 then run
    through the engine's own ``gather_union``."""

    def __init__(self, ext: torch.Tensor, bias: torch.Tensor) -> None:
        self.ext, self.bias = ext, bias

    def top(self, k, ban_end, rows=None):
        return (self.ext + self.bias).topk(k, dim=-1)

    def gather(self, cols, rows=None):
        return self.ext.gather(1, cols)


def propose(ext, plan):
    """Steps 1-4 (top-k, union, scores) from every member's extended logits."""
    return gather_union([_Extended(z, b) for z, b in zip(ext, plan.bias)], plan, None)


DRAWS = 40_000
Z = 6.5

# Two members that disagree: member 0 likes slots 0-1, member 1 likes slots 2-3; slot 5 is a
# duplicate (invalid) with a high score, which must never be drawn.
SCORES = [
    [3.0, 2.6, 0.4, 0.1, -0.5, 5.0, -1.0, 1.2],
    [0.2, -0.3, 2.9, 2.2, 1.0, 5.0, 0.5, -2.0],
]
VALID = [True, True, True, True, True, False, True, True]


def expected_distribution(
    scores: list[list[float]], valid: list[bool], weights: list[float], t: float, top_p: float
) -> list[float]:
    """The spec's step 5-7 for one row, in plain floats."""
    total = sum(weights)
    p = [0.0] * len(valid)
    for w, row in zip(weights, scores):
        e = [math.exp(s / t) if ok else 0.0 for s, ok in zip(row, valid)]
        for c in range(len(p)):
            p[c] += w / total * e[c] / sum(e)
    order = sorted(range(len(p)), key=lambda c: -p[c])
    kept, above = [], 0.0
    for c in order:
        if p[c] > 0 and (above < top_p or not kept):
            kept.append(c)
        above += p[c]
    mass = sum(p[c] for c in kept)
    return [p[c] / mass if c in kept else 0.0 for c in range(len(p))]


def chi2_critical(df: int, z: float = 6.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at the normal quantile z (~1e-9 for 6)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def assert_follows(counts: list[int], probs: list[float]) -> None:
    n = sum(counts)
    for c, (k, p) in enumerate(zip(counts, probs)):
        if p == 0.0:
            assert k == 0, f"slot {c} has probability 0 but was drawn {k} times"
            continue
        sd = math.sqrt(n * p * (1 - p))
        assert abs(k - n * p) <= Z * sd + 1, f"slot {c}: {k} draws, expected {n * p:.0f} ± {sd:.0f}"
    kept = [c for c, p in enumerate(probs) if p > 0]
    stat = sum((counts[c] - n * probs[c]) ** 2 / (n * probs[c]) for c in kept)
    assert stat <= chi2_critical(max(len(kept) - 1, 1)), f"chi-square {stat:.1f}"


def _draw(weights: list[float], t: float, top_p: float, seed: int) -> list[int]:
    scores = torch.tensor(SCORES)[:, None, :].expand(-1, DRAWS, -1)  # [N, B, C]
    valid = torch.tensor(VALID)[None, :].expand(DRAWS, -1)
    w = torch.tensor(weights) / sum(weights)
    p, _ = mix_(scores, valid, w, t)
    gen = torch.Generator().manual_seed(seed)
    slot = choose_(p, scores[0], valid, t, top_p, gen)
    return torch.bincount(slot, minlength=len(VALID)).tolist()


@pytest.mark.parametrize(
    ("weights", "t", "top_p"),
    [
        ([0.5, 0.5], 0.7, 0.8),
        ([0.8, 0.2], 0.5, 0.9),
        ([0.2, 0.8], 1.5, 0.95),
        ([0.6, 0.4], 1.0, 1.0),
        ([0.5, 0.5], 2.0, 0.5),
    ],
)
def test_mix_then_choose_samples_the_spec_distribution(weights, t, top_p):
    probs = expected_distribution(SCORES, VALID, weights, t, top_p)
    counts = _draw(weights, t, top_p, seed=1234)
    assert_follows(counts, probs)


def test_mix_equals_the_plain_computation():
    scores = torch.tensor(SCORES)[:, None, :]
    valid = torch.tensor(VALID)[None, :]
    for weights, t in (([0.7, 0.3], 0.6), ([0.1, 0.9], 1.7)):
        p, p_i = mix_(scores, valid, torch.tensor(weights), t)
        want = expected_distribution(SCORES, VALID, weights, t, 1.0)
        assert p[0].tolist() == pytest.approx(want, abs=1e-6)
        for i in range(2):
            one = expected_distribution(SCORES[i : i + 1], VALID, [1.0], t, 1.0)
            assert p_i[i, 0].tolist() == pytest.approx(one, abs=1e-6)


def test_greedy_mix_is_the_plain_softmax_average_and_ties_go_to_the_primary():
    scores = torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0]]])  # slots 0 and 1 tie
    valid = torch.ones(1, 3, dtype=torch.bool)
    p, _ = mix_(scores, valid, torch.tensor([0.5, 0.5]), 0.0)
    assert p[0].tolist() == pytest.approx(
        expected_distribution(scores[:, 0].tolist(), [True] * 3, [1, 1], 1.0, 1.0), abs=1e-6
    )
    primary = torch.tensor([[0.0, 2.0, 5.0]])  # the primary prefers slot 1 among the tied
    assert choose_(p, primary, valid, 0.0, 1.0, None).tolist() == [1]


def test_top_p_keeps_the_best_slot_even_when_it_alone_passes_top_p():
    counts = _draw([0.5, 0.5], 0.3, 0.01, seed=7)
    best = max(
        range(len(VALID)), key=lambda c: expected_distribution(SCORES, VALID, [1, 1], 0.3, 1.0)[c]
    )
    assert counts[best] == DRAWS


def _decision_plan(weights: list[float], k: int) -> StepPlan:
    """A plan for ``decide`` on a hand-made union: only the weights and k are read there."""
    return StepPlan(end_ids=[], bias=[], gid=[], col_map=[], weights=torch.tensor(weights), k=k)


def test_decide_samples_the_spec_distribution_with_weights():
    """The whole decision (``decide``) on a hand-made union: weights, temperature, top-p."""
    n, k, draws = 2, 4, DRAWS
    # Slots: member 0 proposed strings 1,2,3,4; member 1 proposed 3,5,1,6 (3 and 1 repeat).
    gid = torch.tensor([1, 2, 3, 4, 3, 5, 1, 6])[None, :].expand(draws, -1)
    valid = torch.tensor([True] * 4 + [False, True, False, True])[None, :].expand(draws, -1)
    scores = torch.tensor(SCORES)[:, None, :].expand(-1, draws, -1)
    plan = _decision_plan([0.75, 0.25], k)
    top_col = [torch.arange(k)[None, :].expand(draws, -1) for _ in range(n)]
    union = CandidateUnion(gid, valid, scores, top_col)
    res = decide_(union, plan, 0.8, 0.85, torch.Generator().manual_seed(99))
    counts = torch.bincount(res.gid, minlength=7).tolist()
    probs = expected_distribution(SCORES, valid[0].tolist(), [0.75, 0.25], 0.8, 0.85)
    by_string = [0.0] * 7
    for c, g in enumerate(gid[0].tolist()):
        by_string[g] += probs[c]
    assert_follows(counts, by_string)


# ------------------------------------------------------------------ steps 1-4 on a hand-made plan


def _plan(weights=(0.5, 0.5), k=3):
    """Two members: A has 5 tokens, B has 4; END is column V (gid 0); gids name strings."""
    inf = float("-inf")
    gid_a = torch.tensor([1, 2, 3, -1, 4, 0])  # token 3 is a special (never a candidate)
    gid_b = torch.tensor([2, 5, 1, 6, 0])
    # col_map[j][i][t]: column of member i that scores member j's token t.
    a_to_b = torch.tensor([2, 0, 1, 0, 2, 4])  # 1->B's 2 ("1"), 2->B's 0, 3->first sub-token 1
    b_to_a = torch.tensor([1, 0, 0, 4, 5])  # 5->A's first sub-token 0, 6->A's 4 (sub-token)
    return StepPlan(
        end_ids=[torch.tensor([3]), torch.tensor([3])],
        bias=[
            torch.tensor([0.0, 0.0, 0.0, inf, 0.0, 0.0]),
            torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]),
        ],
        gid=[gid_a, gid_b],
        col_map=[[torch.arange(6), a_to_b], [b_to_a, torch.arange(5)]],
        weights=torch.tensor(weights),
        k=k,
    )


def test_a_members_end_column_is_the_best_end_logit():
    z = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, -1.0, -2.0, -4.0]])
    member = LocalMember(
        SimpleNamespace(next_logits=lambda: z), torch.tensor([1, 3]), torch.zeros(5)
    )
    member.top(5, None)
    ext = member.gather(torch.arange(5).expand(2, -1))
    assert ext.tolist() == [[0.0, 1.0, 5.0, 2.0, 2.0], [3.0, -1.0, -2.0, -4.0, -1.0]]


def test_propose_builds_the_union_and_scores_every_string_in_every_member():
    plan = _plan()
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5]])  # top-3 candidates: 0, 1, 4 (3 is special)
    b = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0]])  # top-3: 2, 1, 0
    u = propose([a, b], plan)
    assert u.top_col[0].tolist() == [[0, 1, 4]] and u.top_col[1].tolist() == [[2, 1, 0]]
    assert u.gid.tolist() == [[1, 2, 4, 1, 5, 2]]
    assert u.valid.tolist() == [[True, True, True, False, True, False]]
    # Member A scores B's "5" with its first sub-token (column 0); B scores A's "4" with 2.
    assert u.scores[0].tolist() == [[4.0, 3.0, 2.5, 4.0, 4.0, 3.0]]
    assert u.scores[1].tolist() == [[3.0, 1.0, 3.0, 3.0, 2.0, 1.0]]
    res = decide_(u, plan, 0.0, 1.0, None)
    # p over valid slots [1, 2, 4, 5]: A softmax(4,3,2.5,4), B softmax(3,1,3,2); "1" wins.
    assert res.gid.tolist() == [1] and res.src.tolist() == [0] and res.col.tolist() == [0]
    assert res.own_col.tolist() == [[0], [2]]  # both proposed "1": A as its 0, B as its 2
    assert res.agree.item()  # both members' own top-1 is "1"
    e = math.exp
    want = [e(4) / (2 * e(4) + e(3) + e(2.5)), e(3) / (2 * e(3) + e(1) + e(2))]
    assert res.prob[:, 0].tolist() == pytest.approx(want, abs=1e-6)
    # A sure of "2", B fairly sure of "5": equal weights follow A, weights (0.1, 0.9) follow B.
    a2 = torch.tensor([[1.0, 6.0, 0.0, 9.0, 0.5, -2.0]])  # top-3: "2", "1", "4"
    b2 = torch.tensor([[1.0, 2.5, 0.5, -1.0, -3.0]])  # top-3: "5", "2", "1"
    equal = decide_(propose([a2, b2], plan), plan, 0.0, 1.0, None)
    assert equal.gid.tolist() == [2] and equal.src.tolist() == [0] and not equal.agree.item()
    heavy = _plan(weights=(0.1, 0.9))
    leaning = decide_(propose([a2, b2], heavy), heavy, 0.0, 1.0, None)
    assert leaning.gid.tolist() == [5] and leaning.src.tolist() == [1]
    assert leaning.own_col.tolist() == [[-1], [1]]  # A never proposed "5"


def test_decide_on_a_batch_keeps_rows_apart():
    """Two rows decided together: each its own maximum, its own agreement, integer sources."""
    plan = _plan()
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5], [1.0, 6.0, 0.0, 9.0, 0.5, -2.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0], [1.0, 2.5, 0.5, -1.0, -3.0]])
    res = decide_(propose([a, b], plan), plan, 0.0, 1.0, None)
    assert res.gid.tolist() == [1, 2]
    assert res.agree.tolist() == [True, False]
    assert res.src.dtype == torch.int64 and res.src.tolist() == [0, 0]
    assert res.col.tolist() == [0, 1]


def test_end_is_a_candidate_and_can_win():
    plan = _plan()
    a = torch.tensor([[0.0, 0.1, 0.0, 9.0, 0.2, 7.0]])  # END (column 5) far ahead
    b = torch.tensor([[0.0, 0.1, 0.2, 0.0, 6.0]])  # END (column 4) far ahead
    u = propose([a, b], plan)
    assert u.gid[0, 0].item() == 0 and u.valid[0, 0].item()
    assert decide_(u, plan, 0.0, 1.0, None).gid.tolist() == [0]


def test_slots_past_a_members_candidates_are_never_valid():
    """k=6: A has only 5 candidates (token 3 is special), so its last slot is empty (-1)."""
    plan = _plan_with_k(6)
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5]])
    b = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0, 0.5]])
    u = propose([a, b], plan)
    assert u.gid[0, :6].tolist() == [1, 2, 4, 3, 0, -1]
    assert not u.valid[0, 5].item()


def _plan_with_k(k: int) -> StepPlan:
    plan = _plan(k=k)
    plan.bias[1] = torch.cat([plan.bias[1], torch.tensor([0.0])])
    plan.gid[1] = torch.tensor([2, 5, 1, 6, 0, 7])
    plan.col_map = [
        [torch.arange(6), torch.tensor([2, 0, 1, 0, 2, 4])],
        [torch.tensor([1, 0, 0, 4, 5, 0]), torch.arange(6)],
    ]
    return plan


def test_adjacent_duplicate_strings_keep_only_the_first():
    plan = _plan()
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 3.5, 0.5]])  # top-3: "1", "4", "2"
    b = torch.tensor([[3.0, 1.0, 0.5, -1.0, 0.0]])  # top-3: "2", "5", "1": "2" right after "2"
    u = propose([a, b], plan)
    assert u.gid.tolist() == [[1, 4, 2, 2, 5, 1]]
    assert u.valid.tolist() == [[True, True, True, False, True, False]]


def test_a_member_scores_a_string_it_proposed_with_its_own_best_id():
    """A string proposed twice takes each member's best score for it: B's own id for "1" (its
    column 3, a second token with the same bytes) beats the column A's token maps to (2)."""
    plan = _plan()
    plan.gid[1] = torch.tensor([2, 5, 1, 1, 0])
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5]])  # top-3: "1", "2", "4"
    b = torch.tensor([[1.0, 2.0, 0.0, 3.0, -5.0]])  # top-3: "1" (col 3), "5", "2"
    u = propose([a, b], plan)
    assert u.gid.tolist() == [[1, 2, 4, 1, 5, 2]]
    assert u.scores[1, 0, 0].item() == 3.0  # slot 0 (A's "1") read B's column 2 (0.0) alone


def test_greedy_ties_on_the_mix_go_to_the_primary_members_scores():
    plan = _plan(weights=(0.0, 1.0))  # the mix is B's alone; A only breaks ties
    a = torch.tensor([[3.0, 2.0, 1.0, 9.0, 0.0, -9.0]])  # A proposes "1", "2", "3"
    b = torch.tensor([[2.0, 2.0, -9.0, -9.0, -9.0]])  # B: "2", "3" and "5" tie exactly at 2
    res = decide_(propose([a, b], plan), plan, 0.0, 1.0, None)
    assert res.gid.tolist() == [5]  # A scores "5" with its column 0 (3.0), above "2" and "3"


def test_a_grammar_mask_removes_slots_before_the_choice():
    plan = _plan()
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5]])
    b = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0]])
    u = propose([a, b], plan)
    allowed = torch.tensor([[False, True, True, True, True, True]])  # "1" is not allowed
    res = decide_(u, plan, 0.0, 1.0, None, allowed)
    assert res.gid.tolist() == [5]  # the best of the rest (p: "5" .27, "4" .24, "2" .10)
    assert decide_(u, plan, 0.0, 1.0, None).gid.tolist() == [1]


def test_top_p_cut_is_strictly_at_the_mass_above():
    """A slot whose mass above equals top_p exactly is cut (mass strictly above >= top_p)."""
    p = torch.tensor([[0.5, 0.25, 0.25]]).expand(4000, -1)
    valid = torch.ones(4000, 3, dtype=torch.bool)
    slots = choose_(p, p, valid, 1.0, 0.5, torch.Generator().manual_seed(3))
    assert slots.tolist() == [0] * 4000


def test_sampling_uses_only_the_given_generator():
    p = torch.tensor([[0.3, 0.3, 0.4]]).expand(64, -1)
    valid = torch.ones(64, 3, dtype=torch.bool)
    state = torch.get_rng_state()
    one = choose_(p, p, valid, 1.0, 1.0, torch.Generator().manual_seed(11))
    two = choose_(p, p, valid, 1.0, 1.0, torch.Generator().manual_seed(11))
    assert one.tolist() == two.tolist()
    assert torch.equal(torch.get_rng_state(), state)  # the global generator was not touched
    # A sampled row's choice is a function of its own draw: the same draw, the same slot.
    u = torch.full((64,), 0.5)
    t, tp = _rows(1.0, 64), _rows(1.0, 64)
    assert choose(p, p, valid, t, tp, u).tolist() == choose(p, p, valid, t, tp, u).tolist()
    plan = _plan()
    u = propose(
        [
            torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5]]).expand(64, -1),
            torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0]]).expand(64, -1),
        ],
        plan,
    )
    r1 = decide_(u, plan, 1.0, 1.0, torch.Generator().manual_seed(4)).gid.tolist()
    r2 = decide_(u, plan, 1.0, 1.0, torch.Generator().manual_seed(4)).gid.tolist()
    assert r1 == r2 and torch.equal(torch.get_rng_state(), state)


def test_greedy_choice_is_per_row():
    p = torch.tensor([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    assert choose_(p, torch.zeros(2, 3), valid, 0.0, 1.0, None).tolist() == [1, 2]


def test_temperature_reaches_the_union_choice():
    plan = _plan(weights=(0.3, 0.7))
    a = torch.tensor([[4.0, 3.0, 1.0, 9.0, 2.5, 0.5], [1.0, 6.0, 0.0, 9.0, 0.5, -2.0]])
    b = torch.tensor([[1.0, 2.0, 3.0, -1.0, 0.0], [1.0, 2.5, 0.5, -1.0, -3.0]])
    u = propose([a, b], plan)
    hot = [
        decide_(u, plan, 5.0, 1.0, torch.Generator().manual_seed(s)).gid.tolist() for s in range(40)
    ]
    assert len({tuple(h) for h in hot}) > 1  # temperature reaches the choice


def test_sampling_reaches_the_last_slot_when_nothing_is_cut():
    """top_p = 1 and every slot valid: the least likely slot keeps its share."""
    probs = [0.5, 0.3, 0.2]
    p = torch.tensor([probs]).expand(DRAWS, -1)
    valid = torch.ones(DRAWS, 3, dtype=torch.bool)
    slots = choose_(p, p, valid, 1.0, 1.0, torch.Generator().manual_seed(21))
    assert_follows(torch.bincount(slots, minlength=3).tolist(), probs)


def test_a_draw_on_a_cdf_boundary_takes_the_next_slot():
    """Slot k is chosen when cdf[k-1] <= draw * total < cdf[k]."""
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75]])
    valid = torch.ones(3, 2, dtype=torch.bool)
    ones = torch.ones(3)
    draws = torch.tensor([0.5, 0.0, 0.25])
    assert choose(p, p, valid, ones, ones, draws).tolist() == [1, 0, 1]


@pytest.mark.parametrize("top_n", [1, 3, 6, 10])
def test_decide_reports_the_top_n_strings_of_the_mixed_distribution(top_n):
    """``top_n``: each row's most likely valid strings, most likely first, by the plain mix (no
    top-p cut); past the row's valid slots the gid is -1. Two rows with different scores."""
    k = 4
    gid = torch.tensor([[1, 2, 3, 4, 3, 5, 1, 6], [4, 3, 2, 1, 6, 5, 3, 1]])
    valid = torch.tensor([[True] * 4 + [False, True, False, True], [True] * 6 + [False, False]])
    rows = [SCORES, [list(reversed(SCORES[0])), list(reversed(SCORES[1]))]]
    scores = torch.tensor(rows).transpose(0, 1)  # [N, B, C]
    plan = _decision_plan([0.75, 0.25], k)
    union = CandidateUnion(gid, valid, scores, [torch.arange(k).expand(2, -1)] * 2)
    res = decide(union, plan, _rows(0.8, 2), _rows(0.7, 2), torch.zeros(2), top_n=top_n)
    assert res.top_prob is not None and res.top_gid is not None
    n = min(top_n, 8)
    assert res.top_prob.shape == res.top_gid.shape == (2, n)
    for b in range(2):
        probs = expected_distribution(rows[b], valid[b].tolist(), [0.75, 0.25], 0.8, 1.0)
        order = sorted((c for c in range(8) if valid[b, c]), key=lambda c: -probs[c])[:n]
        want_gid = [int(gid[b, c]) for c in order] + [-1] * (n - len(order))
        assert res.top_gid[b].tolist() == want_gid
        got = res.top_prob[b, : len(order)].tolist()
        assert got == pytest.approx([probs[c] for c in order], abs=1e-6)
    assert decide(union, plan, _rows(0.8, 2), _rows(0.7, 2), torch.zeros(2)).top_gid is None


def test_top_n_reports_valid_strings_whose_probability_underflows_to_zero():
    """At a tiny temperature every string but the best has probability 0.0 in float32: they are
    still reported (log-probability -inf), and only duplicate or unchoosable slots give -1."""
    gid = torch.tensor([[1, 2, 3, 4, 3, 5, 1, 6]])
    valid = torch.tensor([[True] * 4 + [False, True, False, True]])
    scores = torch.tensor(SCORES)[:, None, :]
    plan = _decision_plan([0.5, 0.5], 4)
    union = CandidateUnion(gid, valid, scores, [torch.arange(4)[None, :]] * 2)
    res = decide(union, plan, _rows(0.001, 1), _rows(1.0, 1), torch.zeros(1), top_n=8)
    assert res.top_prob is not None and res.top_gid is not None
    zero = res.top_prob[0] == 0
    assert res.top_gid[0, 0].item() == 5 and res.top_prob[0, 0].item() == 1.0  # both's best
    assert int(zero.sum()) == 5  # the other five valid strings
    assert sorted(res.top_gid[0][zero].tolist()) == [1, 2, 3, 4, 6]
    assert res.top_gid[0, 6:].tolist() == [-1, -1]  # the two duplicate slots
