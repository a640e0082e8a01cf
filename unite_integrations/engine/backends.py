"""Where a member's forward passes run, behind one narrow interface the decode loop calls.

The union step needs from each member only a few numbers per row: its top-k candidates (after its
candidate bias) and its logits at the union's columns. ``MemberBackend`` asks for exactly those,
so no vocabulary-sized row has to leave the member: an in-process member (``LocalMember``)
answers from the logits it holds; a remote one (a Ray actor) sends O(rows x k) numbers a step.

Per step the decode loop calls, for every member: ``advance`` (feed back the chosen string's ids:
a remote member may only *issue* the forward pass here, so all members compute concurrently),
then ``top`` (candidates), then ``gather`` (scores at the union's columns). Rows join with
``add_rows`` and leave with ``keep_rows``. ``ids``/``n_prompt`` mirror the ids each row holds
(a row prefilled in part holds fewer ids than its prompt until its first ``advance``),
which the driver needs for re-tokenization.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .sequences import MemberBatch, Update

__all__ = ["LocalMember", "MemberBackend"]


class MemberBackend(Protocol):
    """One member's rows in flight, row r at index r, extended columns (END at index V)."""

    @property
    def ids(self) -> list[list[int]]:
        """[r]: the ids row r holds, its prompt included."""
        ...

    @property
    def n_prompt(self) -> list[int]:
        """[r]: how many of row r's ids are its prompt."""
        ...

    def add_rows(self, prompts: list[list[int]], now: list[int] | None = None) -> None:
        """Prefill ``prompts`` and append their rows; with ``now``, only the first ``now[r]``
        ids of prompt r, or more where a prefix store holds them (``ids`` tells; the row's
        first ``advance`` appends the rest)."""

    def keep_rows(self, rows: list[int]) -> None:
        """Keep only these rows, in this order."""

    def advance(self, updates: list[Update]) -> None:
        """Row r keeps ``updates[r][0]`` ids and appends ``updates[r][1]`` (None: unchanged)."""

    def top(
        self, k: int, ban_end: torch.Tensor | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, k], columns [B, k]) of the extended logits plus the candidate bias;
        ``ban_end`` [B] bool sets END to -inf on those rows (here and in ``gather``). With
        ``rows``, those rows only ([B', k]; ``ban_end`` is theirs): nothing is computed for
        the others (a gated row's)."""
        ...

    def gather(self, cols: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """cols int64 [B, C] -> float [B, C]: extended logits (no bias) of the last ``top``'s
        rows; with ``rows``, those of its rows (a ``top`` of every row, read for some)."""
        ...

    def candidates(self, r: int, n: int) -> list[int]:
        """Row r's n best columns by logit plus bias, END excluded (a grammar's fallback)."""
        ...

    def logits_at(self, r: int, cols: list[int]) -> list[float]:
        """Row r's logits (no bias) at ``cols``."""
        ...


class LocalMember:
    """A member in this process: a ``MemberBatch`` and the member's END ids and candidate bias."""

    def __init__(self, batch: MemberBatch, end_ids: torch.Tensor, bias: torch.Tensor) -> None:
        self.batch, self.end_ids, self.bias = batch, end_ids, bias
        self._ext: torch.Tensor | None = None  # [B, V+1] the last ``top``'s extended logits

    @property
    def ids(self) -> list[list[int]]:
        return self.batch.ids

    @property
    def n_prompt(self) -> list[int]:
        return self.batch.n_prompt

    def add_rows(self, prompts: list[list[int]], now: list[int] | None = None) -> None:
        self.batch.add_rows(prompts, now)

    def keep_rows(self, rows: list[int]) -> None:
        self.batch.keep_rows(rows)

    def advance(self, updates: list[Update]) -> None:
        self.batch.advance(updates)

    def top(
        self, k: int, ban_end: torch.Tensor | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.batch.next_logits()  # [B, V]
        if rows is not None:
            z = z.index_select(0, torch.tensor(rows, device=z.device))  # [B', V]
        end = z.index_select(1, self.end_ids).amax(1, keepdim=True)  # [B, 1]
        if ban_end is not None:
            end = end.masked_fill(ban_end.to(end.device)[:, None], float("-inf"))
        self._ext = torch.cat([z, end], dim=1)  # [B, V+1]
        val, col = (self._ext + self.bias).topk(k, dim=-1)
        return val, col

    def gather(self, cols: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        assert self._ext is not None, "top() first"
        ext = self._ext
        if rows is not None:
            ext = ext.index_select(0, torch.tensor(rows, device=ext.device))
        return ext.gather(1, cols.to(ext.device))

    def candidates(self, r: int, n: int) -> list[int]:
        z = self.batch.next_logits()[r] + self.bias[:-1]
        out: list[int] = z.topk(min(n, z.numel())).indices.tolist()
        return out

    def logits_at(self, r: int, cols: list[int]) -> list[float]:
        z = self.batch.next_logits()[r]
        out: list[float] = z[torch.tensor(cols, dtype=torch.long, device=z.device)].tolist()
        return out
