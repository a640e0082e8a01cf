"""One member's rows during a call: the ids it holds, their KV-cache columns, its next logits.

Rows of a batch change by different amounts each step: most append one id, some roll back a few
ids and append several (re-tokenization), finished rows append nothing. ``advance`` does all of it
in one forward pass: rolled-back ids are masked out of the attention (their cache columns stay, as
holes), each row's new ids are left-padded to a common length, and position ids count each row's
real tokens, so a row's numbers depend neither on its neighbours nor on the holes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["MemberBatch", "Update"]

#: (ids to keep, ids to append) for one row; None leaves the row as it is.
Update = tuple[int, list[int]] | None


class MemberBatch:
    def __init__(self, model: Any, prompts: list[list[int]], pad_id: int) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.ids: list[list[int]] = [[] for _ in prompts]
        self.cols: list[list[int]] = [[] for _ in prompts]
        self.n_prompt = [len(p) for p in prompts]
        self.cache: Any = None
        self.mask = torch.zeros(len(prompts), 0, dtype=torch.long, device=self.device)
        self.logits: torch.Tensor | None = None  # [B, V] at each row's last id
        self.forwards = 0
        self._prompts = prompts
        # transformers 5.x renamed ``past_key_values`` to ``cache``; accept both generations.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def next_logits(self) -> torch.Tensor:
        """[B, V] float32 logits after each row's last id."""
        assert self.logits is not None, "prefill() first"
        return self.logits.float()

    def prefill(self) -> None:
        self.advance([(0, list(p)) for p in self._prompts])

    def advance(self, updates: list[Update]) -> None:
        width = self.mask.shape[1]
        # 1. Rolled-back ids leave holes: their columns are masked out, never cropped, so no row
        #    re-feeds anything because of another, and sliding-window caches need no rollback.
        segs: list[list[int]] = []
        for r, u in enumerate(updates):
            keep, new = u if u is not None else (len(self.ids[r]), [])
            dropped = self.cols[r][keep:]
            if dropped:
                self.mask[r, dropped] = 0
            self.ids[r] = self.ids[r][:keep] + new
            self.cols[r] = self.cols[r][:keep]
            segs.append(new)
        m = max(len(s) for s in segs)
        if m == 0:
            return
        # 2. Left-pad the new ids to m; row r's take columns width+m-len .. width+m-1, and its
        #    position ids continue from its own count of real tokens.
        inp = torch.full((len(segs), m), self.pad_id, dtype=torch.long)
        seg_mask = torch.zeros(len(segs), m, dtype=torch.long)
        pos = torch.zeros(len(segs), m, dtype=torch.long)
        for r, seg in enumerate(segs):
            if seg:
                start = len(self.ids[r]) - len(seg)
                inp[r, m - len(seg) :] = torch.tensor(seg)
                seg_mask[r, m - len(seg) :] = 1
                pos[r, m - len(seg) :] = torch.arange(start, start + len(seg))
                self.cols[r] += range(width + m - len(seg), width + m)
        self.mask = torch.cat([self.mask, seg_mask.to(self.device)], dim=1)
        with torch.inference_mode():
            out = self.model(
                input_ids=inp.to(self.device),
                attention_mask=self.mask,
                position_ids=pos.to(self.device),
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: self.cache},
            )
        self.cache = getattr(out, self._cache_arg)
        self.logits = out.logits[:, -1, :]
        self.forwards += 1
