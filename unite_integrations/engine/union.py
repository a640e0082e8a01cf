"""The UniTE step as pure tensor functions: top-k -> union -> gather -> softmax -> mix -> choose.

Shapes: N members, B rows, k candidates per member, C = N*k union slots (duplicates masked),
V_i the size of member i's logits. Every member's logits are *extended* with one END column at
index V_i holding the max over its end-of-sequence logits, so that "stop" is one shared string.
No Python loop runs over a vocabulary or over candidates; loops run over members only (N is 2 or 3).

Steps 1 and 4 need each member's logits, which stay with the member: ``decode.gather_union``
asks every ``MemberBackend`` for its top-k and its logits at the union's columns, and joins them
with ``candidates``, ``scoring_cols`` and ``merge_scores`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "CandidateUnion",
    "StepPlan",
    "StepResult",
    "candidates",
    "choose",
    "decide",
    "merge_scores",
    "mix",
    "scoring_cols",
]


@dataclass
class StepPlan:
    """Per-ensemble constants of the step, each tensor already on its member's device."""

    end_ids: list[torch.Tensor]  # int64 [n_end_i]: member i's end-of-sequence ids
    bias: list[torch.Tensor]  # float [V_i + 1]: 0 for candidates, -inf for never-candidates
    gid: list[torch.Tensor]  # int64 [V_i + 1]: global string id (END = 0, -1 never a candidate)
    col_map: list[list[torch.Tensor]]  # [j][i] int64 [V_j + 1]: column of i scoring j's token
    weights: torch.Tensor  # float [N] on the primary device, sums to 1
    k: int


@dataclass
class StepResult:
    """What one step decided, on the primary device; one host transfer reads all of it."""

    src: torch.Tensor  # int64 [B]: member whose candidate slot won (first proposer)
    col: torch.Tensor  # int64 [B]: that candidate's column in the source member's logits
    gid: torch.Tensor  # int64 [B]: global string id of the choice (END = 0)
    own_col: torch.Tensor  # int64 [N, B]: column where member i proposed the choice itself, or -1
    prob: torch.Tensor  # float [N, B]: member i's union probability of the choice
    agree: torch.Tensor  # bool [B]: every member's own top-1 was the same string
    # Only when asked (``decide``'s ``top_n``): the n most likely strings of the mixed
    # distribution, most likely first; gid -1 where the union has fewer than n strings.
    top_prob: torch.Tensor | None = None  # float [B, n]
    top_gid: torch.Tensor | None = None  # int64 [B, n]


def mix(
    scores: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor, temperature: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax each member's scores over the union, then average with the member weights.

    scores [N, B, C], valid [B, C], temperature [B] -> (p [B, C], per-member p_i [N, B, C]).
    Greedy rows (temperature 0) average the plain softmax, as the paper does.
    """
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    z = scores / t.to(scores.dtype)[None, :, None]  # a greedy row divides by exactly 1
    z = z.masked_fill(~valid, float("-inf"))
    p_i = torch.softmax(z.float(), dim=-1)
    return torch.einsum("n,nbc->bc", weights.float(), p_i), p_i


def choose(
    p: torch.Tensor,
    primary: torch.Tensor,
    valid: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor:
    """Pick one slot per row. Greedy ties go to the primary member's ranking; sampling is nucleus.

    p, primary (the primary member's scores), valid: [B, C]; temperature, top_p and uniform (one
    draw in [0, 1) from each row's own generator): [B] -> slot [B]. A sampled row inverts its own
    nucleus CDF at its own draw, so its choice depends on nothing else in the batch.
    """
    p = p.masked_fill(~valid, -1.0)
    tied = p == p.amax(-1, keepdim=True)
    greedy = primary.masked_fill(~tied, float("-inf")).argmax(-1)
    sorted_p, order = p.clamp_min(0).sort(-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each slot
    sorted_p = sorted_p.masked_fill(before >= top_p[:, None], 0.0)
    sorted_p[:, 0] = sorted_p[:, 0].clamp_min(1e-12)  # the best slot always survives
    cdf = sorted_p.cumsum(-1)
    target = (uniform * cdf[:, -1])[:, None]
    pick = torch.searchsorted(cdf, target, right=True).clamp_max(p.shape[1] - 1)
    sampled = order.gather(1, pick).squeeze(1)
    return torch.where(temperature > 0, sampled, greedy)


@dataclass
class CandidateUnion:
    """The candidates of one step, before the choice."""

    gid: torch.Tensor  # int64 [B, C]: global string id per slot (-1: nobody may choose it)
    valid: torch.Tensor  # bool [B, C]: first occurrence of a string that may be chosen
    scores: torch.Tensor  # float [N, B, C]: every member's logit for every slot
    top_col: list[torch.Tensor]  # [N] int64 [B, k]: each member's proposals (its columns)


def candidates(
    top_val: list[torch.Tensor], top_col: list[torch.Tensor], plan: StepPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 2-3, the union: [N] ([B, k] biased values, [B, k] columns) -> (gid, valid) [B, C].

    gid is every slot's global string id (-1 for slots nobody may choose); valid marks the first
    occurrence of each string that may be chosen."""
    home = plan.weights.device
    gid = torch.cat(
        [
            g[c.to(g.device)].masked_fill(v.to(g.device) == float("-inf"), -1).to(home)
            for g, c, v in zip(plan.gid, top_col, top_val)
        ],
        dim=1,
    )  # [B, C]
    same = gid[:, :, None] == gid[:, None, :]  # [B, C, C]
    return gid, (gid >= 0) & ~same.tril(-1).any(-1)


def scoring_cols(top_col: list[torch.Tensor], plan: StepPlan) -> list[torch.Tensor]:
    """[N] [B, k] proposals -> [N] int64 [B, C]: the column of member i that scores each slot
    (its own id for a token it has, else the string's first sub-token), on member i's device."""
    n = len(top_col)
    return [
        torch.cat(
            [plan.col_map[j][i][top_col[j].to(plan.col_map[j][i].device)] for j in range(n)], 1
        )
        for i in range(n)
    ]


def merge_scores(scored: list[torch.Tensor], gid: torch.Tensor, plan: StepPlan) -> torch.Tensor:
    """Step 4: [N] [B, C] member logits at ``scoring_cols`` -> scores [N, B, C] on the primary
    device. A string proposed twice takes its best score, so a member that proposed it itself
    scores it with the id it proposed."""
    scores = torch.stack([s.to(plan.weights.device) for s in scored])  # [N, B, C]
    same = gid[:, :, None] == gid[:, None, :]  # [B, C, C]
    return scores[:, :, None, :].masked_fill(~same, float("-inf")).amax(-1)


def decide(
    union: CandidateUnion,
    plan: StepPlan,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
    allowed: torch.Tensor | None = None,
    top_n: int = 0,
) -> StepResult:
    """Steps 5-7: softmax per member over the union, weighted average, choice.

    ``temperature``, ``top_p``, ``uniform``: [B], each row's own (see ``choose``).

    ``allowed`` [B, C] (from a grammar) removes slots before the choice; the probabilities
    reported for provenance are those of the unconstrained union. ``top_n`` > 0 also returns
    each row's ``top_n`` most likely strings of the mixed distribution (top log-probabilities).
    """
    n, k = union.scores.shape[0], plan.k
    home = plan.weights.device
    gid, valid = union.gid, union.valid
    p, p_i = mix(union.scores, valid, plan.weights, temperature)
    pickable = valid if allowed is None else valid & allowed
    slot = choose(p, union.scores[0], pickable, temperature, top_p, uniform)  # [B]
    chosen = gid.gather(1, slot[:, None])  # [B, 1]
    # Provenance and feed-back facts: where each member proposed the choice itself.
    own_hit = torch.stack([(gid[:, i * k : (i + 1) * k] == chosen) for i in range(n)])  # [N,B,k]
    own_slot = own_hit.float().argmax(-1)  # first proposing slot of member i
    own_col = torch.stack(
        [union.top_col[i].to(home).gather(1, own_slot[i][:, None]).squeeze(1) for i in range(n)]
    ).masked_fill(~own_hit.any(-1), -1)
    cols = torch.cat([c.to(home) for c in union.top_col], dim=1)
    top1 = gid[:, [i * k for i in range(n)]]
    top_prob = top_gid = None
    if top_n:  # a duplicate or unchoosable slot ranks last, as -1, and is dropped by its gid
        top_prob, at = p.masked_fill(~valid, -1.0).topk(min(top_n, p.shape[1]), dim=-1)
        top_gid = gid.gather(1, at).masked_fill(top_prob < 0, -1)  # [B, n] each
    return StepResult(
        src=slot // k,
        col=cols.gather(1, slot[:, None]).squeeze(1),
        gid=chosen.squeeze(1),
        own_col=own_col,
        prob=p_i.gather(2, slot[None, :, None].expand(n, -1, 1)).squeeze(2),
        agree=(top1 == top1[:, :1]).all(1),
        top_prob=top_prob,
        top_gid=top_gid,
    )
