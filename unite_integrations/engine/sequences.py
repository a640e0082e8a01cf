"""One member's rows during a call: the ids it holds, their KV-cache columns, its next logits.

Rows of a batch change by different amounts each step: most append one id, some roll back a few
ids and append several (re-tokenization), finished rows append nothing. ``advance`` does all of it
in one forward pass: the cache is cropped to the lowest column any row must drop, each row feeds its
re-fed and new ids left-padded to a common length, and the attention mask keeps holes where padding
was. Position ids count each row's real tokens, so a row's numbers do not depend on its neighbours.
"""

from __future__ import annotations

import inspect
from bisect import bisect_left
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
        plan = [u if u is not None else (len(ids), []) for u, ids in zip(updates, self.ids)]
        # 1. The lowest cache column that some row must drop.
        cut = width
        for (keep, _), cols in zip(plan, self.cols):
            if keep < len(cols):
                cut = min(cut, cols[keep])
        if cut < width and not self._crop(cut):
            cut = 0
        # 2. Per row: kept ids whose columns were cropped (re-fed) and then the new ids.
        segs: list[list[int]] = []
        starts: list[int] = []
        for r, (keep, new) in enumerate(plan):
            cached = bisect_left(self.cols[r], cut, hi=min(keep, len(self.cols[r])))
            segs.append(self.ids[r][cached:keep] + new)
            starts.append(cached)
            self.ids[r] = self.ids[r][:keep] + new
            self.cols[r] = self.cols[r][:cached]
        m = max(len(s) for s in segs)
        if m == 0:
            return
        # 3. Left-pad the segments to m; real tokens take columns cut+m-len .. cut+m-1.
        inp = torch.full((len(segs), m), self.pad_id, dtype=torch.long)
        seg_mask = torch.zeros(len(segs), m, dtype=torch.long)
        pos = torch.zeros(len(segs), m, dtype=torch.long)
        for r, (seg, start) in enumerate(zip(segs, starts)):
            if seg:
                inp[r, m - len(seg) :] = torch.tensor(seg)
                seg_mask[r, m - len(seg) :] = 1
                pos[r, m - len(seg) :] = torch.arange(start, start + len(seg))
                self.cols[r] += range(cut + m - len(seg), cut + m)
        self.mask = torch.cat([self.mask[:, :cut], seg_mask.to(self.device)], dim=1)
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

    def _crop(self, cut: int) -> bool:
        """Drop cache columns from ``cut``; False when the cache cannot (then re-encode all)."""
        try:
            self.cache.crop(cut)
        except Exception:  # e.g. a sliding-window layer past its window cannot be cropped
            self.cache = None
            self.mask = self.mask[:, :0]
            for cols in self.cols:
                cols.clear()
            return False
        self.mask = self.mask[:, :cut]
        return True
