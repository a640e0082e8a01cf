"""A step's choices on the host (``Picks``, one transfer from the device per step) and what a
row keeps of each string it chose (``StepRecord``, read back into provenance)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .union import StepResult
from .vocab import END

__all__ = ["Picks", "StepRecord"]


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One string a row chose: what its provenance reports (``results.build_result``)."""

    gid: int  # global string id of the choice
    own: list[int]  # [N]: the column where member i proposed it itself, or -1
    prob: list[float]  # [N]: member i's union probability of it (the primary's alone if gated)
    agree: bool  # every member's own top-1 was the same string
    gated: bool  # the primary chose it alone (the others did not vote)


@dataclass
class Picks:
    """One step's choices on the host, per row (``own``/``prob``: per row, per member)."""

    src: list[int]
    col: list[int]
    gid: list[int]
    agree: list[bool]
    own: list[list[int]]
    prob: list[list[float]]
    gated: list[bool] = field(default_factory=list)
    # [r]: the most likely strings of the mixed distribution, (gid, probability) ([] unless
    # ``top_logprobs`` is asked)
    likeliest: list[list[tuple[int, float]]] = field(default_factory=list)

    @classmethod
    def of(cls, res: StepResult) -> Picks:
        """The one device-to-host transfer of a step."""
        likeliest = []
        if res.top_gid is not None and res.top_prob is not None:
            pairs = zip(res.top_gid.tolist(), res.top_prob.tolist())
            likeliest = [[(g, q) for g, q in zip(gs, qs) if g >= 0] for gs, qs in pairs]
        return cls(
            res.src.tolist(),
            res.col.tolist(),
            res.gid.tolist(),
            res.agree.tolist(),
            res.own_col.T.tolist(),
            res.prob.T.tolist(),
            [False] * len(res.src),
            likeliest,
        )

    @classmethod
    def alone(cls, res: StepResult, n: int) -> Picks:
        """The primary's own decisions (a one-member ``StepResult``) as gated picks of an
        n-member ensemble: the others proposed nothing and gave no probability."""
        p = cls.of(res)
        rest = n - 1
        own = [o + [-1] * rest for o in p.own]
        prob = [q + [0.0] * rest for q in p.prob]
        gated = [True] * len(p.src)
        return cls(p.src, p.col, p.gid, [False] * len(p.src), own, prob, gated, p.likeliest)

    @classmethod
    def none(cls, b: int, n: int) -> Picks:
        """Placeholder picks for ``b`` rows of an n-member ensemble (rows that decide nothing
        this step; the deciding ones are ``put`` in)."""
        return cls(
            [0] * b, [0] * b, [END] * b, [False] * b, [[-1] * n] * b, [[0.0] * n] * b, [False] * b
        )

    def put(self, r: int, other: Picks, n: int) -> None:
        """Row r takes row n of ``other``'s picks (its likeliest strings too, where ``other``
        has them: placeholder picks have none of their own)."""
        if other.likeliest and not self.likeliest:
            self.likeliest = [[] for _ in self.src]
        for f in ("src", "col", "gid", "agree", "own", "prob", "gated", "likeliest"):
            if f != "likeliest" or other.likeliest:  # likeliest: only when asked
                getattr(self, f)[r] = getattr(other, f)[n]

    def record(self, r: int) -> StepRecord:
        """Row r's choice, as the row keeps it."""
        return StepRecord(self.gid[r], self.own[r], self.prob[r], self.agree[r], self.gated[r])
