"""A member's output layer over a few rows at the cost of sixteen, on a CPU, where that is faster.

The output layer is a [V, hidden] matrix far larger than a CPU's caches (Gemma-3-270M's is 262k x
640, 671 MB in float32), so each pass over it is a read of the whole matrix from memory. MKL's
sgemm runs a few rows in passes of about three (a pass per three rows), and sixteen rows or more
in one: measured on the development machine (torch 2.13.0+cpu, MKL 2024.2, AVX512, 2 threads),
Gemma-3's head took 27 ms for 1 row, 62 for 4, 98 for 8, 132 for 10, 166 for 15 and 64 for 16.
The engine computes the head over every decoding row each step (the rows left at batch 16 once
some finish, the voting rows of a gated step, a side batch of prompts), so most of its steps
fell in that trough. ``pad_head_rows`` gives the head rows padded to sixteen where that is
faster, measured once per row count on the machine itself (another CPU or BLAS may have no
trough: the padding is then never chosen). The padded rows are zeros and their outputs dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PAD_ROWS", "pad_head_rows"]

#: Rows the head is padded to (the smallest count MKL's sgemm takes in one pass, measured).
PAD_ROWS = 16

#: Weights below which a head is left alone: it fits in a CPU's caches, a pass costs little.
MIN_HEAD_WEIGHTS = 1 << 24


def pad_head_rows(model: Any) -> bool:
    """Make ``model``'s output layer pad a few rows to ``PAD_ROWS`` where measured faster; True
    where it now may (a plain floating-point linear head of at least ``MIN_HEAD_WEIGHTS``
    weights on a CPU), False where it is left as it was."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Linear) or isinstance(head.forward, RowPaddedForward):
        return False
    weight = head.weight
    if (
        weight.device.type != "cpu"
        or type(weight.data) is not torch.Tensor  # a quantized weight's own kernels
        or not weight.dtype.is_floating_point
        or weight.numel() < MIN_HEAD_WEIGHTS
    ):
        return False
    head.forward = RowPaddedForward(head.forward)
    return True


class RowPaddedForward:
    """A linear layer's forward that runs 2 to ``PAD_ROWS - 1`` rows padded with zero rows to
    ``PAD_ROWS`` where that is faster: the first pass of each row count runs plain and is timed,
    and is compared with a padded pass, timed once (twice, the faster kept) for all counts; the
    padding is chosen where it took at most ``SPEEDUP`` of the plain pass's time. Nothing runs
    twice but that one padded pass."""

    SPEEDUP = 0.8

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.plain = forward
        self.padded: dict[int, bool] = {}  # row count -> whether padding was faster
        self.wide: float | None = None  # seconds of a padded pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 1 < rows < PAD_ROWS or not self.padded.get(rows, True):
            return self.plain(x)
        flat = x.reshape(rows, x.shape[-1])
        wide = torch.cat([flat, flat.new_zeros(PAD_ROWS - rows, flat.shape[-1])])
        if rows not in self.padded:
            if self.wide is None:
                self.wide = _seconds(self.plain, wide)
            start = time.perf_counter()
            out = self.plain(x)
            self.padded[rows] = self.wide <= self.SPEEDUP * (time.perf_counter() - start)
            return out
        out = self.plain(wide)[:rows]  # [rows, V]
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _seconds(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """The faster of two timed passes of ``forward(x)``."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        forward(x)
        best = min(best, time.perf_counter() - start)
    return best
