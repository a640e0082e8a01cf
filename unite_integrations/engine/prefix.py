"""Prompt prefixes a member has already run: their KV-cache columns, kept for later prompts.

Few-shot evaluations and chat services send many prompts that begin alike (the same examples, the
same system prompt). A causal model's keys and values at position j depend on the ids up to j
only, so a prompt whose first ids are a stored prompt's first ids can take those columns instead
of running them through the model again (vLLM's automatic prefix caching). The store holds blocks
of ``BLOCK`` ids, each keyed by its parent block and its own ids, so a lookup compares ids
exactly (no hash can collide) and prompts sharing a prefix share its blocks. When it holds more
than its capacity (in ids) it drops the least recently used blocks; a lookup marks a prompt's
blocks used from the last to the first, so parents outlive their children.

Only whole blocks of prompt ids are stored; a prompt always runs its last id itself (its logits
are needed), and the generated text is not stored.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["BLOCK", "PrefixStore"]

#: Ids per stored block: a prompt reuses its longest stored prefix in whole blocks.
BLOCK = 16


_Key = tuple[int, tuple[int, ...]]  # (the parent block's serial, 0 for none; the block's ids)


@dataclass
class _Block:
    key: _Key
    serial: int  # the key of its children's parent
    keys: list[torch.Tensor]  # per layer [H, BLOCK, D]
    values: list[torch.Tensor]


class PrefixStore:
    """One member's stored prompt prefixes (KV columns per layer), up to ``capacity`` ids."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()
        self._serial = itertools.count(1)
        self.reused = 0  # ids taken from the store instead of a forward pass
        self.stored = 0  # ids written into it

    def clear(self) -> None:
        """Drop every stored block (the counts stay)."""
        self._blocks = OrderedDict()

    def __len__(self) -> int:
        """Ids held."""
        return len(self._blocks) * BLOCK

    def match(self, ids: Sequence[int], limit: int) -> list[_Block]:
        """The stored blocks spelling the longest stored prefix of ``ids[:limit]``, first first."""
        out: list[_Block] = []
        parent = 0
        for start in range(0, min(limit, len(ids)) - BLOCK + 1, BLOCK):
            block = self._blocks.get((parent, tuple(ids[start : start + BLOCK])))
            if block is None:
                break
            out.append(block)
            parent = block.serial
        self._used(out)
        return out

    def _used(self, chain: list[_Block]) -> None:
        """Mark a chain of blocks used, children before parents: parents leave last."""
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    def columns(
        self, blocks: list[_Block], start: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer [H, n, D] keys and values of the blocks' ids from ``start`` on."""
        first = start // BLOCK
        keys = [
            torch.cat(ks, dim=1)[:, start % BLOCK :]
            for ks in zip(*(b.keys for b in blocks[first:]))
        ]
        values = [
            torch.cat(vs, dim=1)[:, start % BLOCK :]
            for vs in zip(*(b.values for b in blocks[first:]))
        ]
        self.reused += BLOCK * len(blocks) - start
        return keys, values

    def extend(
        self,
        blocks: list[_Block],
        ids: Sequence[int],
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> None:
        """Store the whole blocks of ``ids`` that follow ``blocks`` (its stored prefix, from
        ``match``); ``keys``/``values`` are per layer [H, n, D] for ``ids[len(blocks) * BLOCK:]``."""
        if self.capacity < BLOCK:
            return
        chain, first = list(blocks), len(blocks) * BLOCK
        for start in range(first, len(ids) - BLOCK + 1, BLOCK):
            key = (chain[-1].serial if chain else 0, tuple(ids[start : start + BLOCK]))
            block = self._blocks.get(key)  # stored meanwhile: an equal prompt in the same batch
            if block is None:
                at = slice(start - first, start - first + BLOCK)
                block = _Block(
                    key,
                    next(self._serial),
                    [k[:, at].clone() for k in keys],
                    [v[:, at].clone() for v in values],
                )
                self._blocks[key] = block
                self.stored += BLOCK
            chain.append(block)
        self._used(chain)
        while len(self) > self.capacity:
            self._blocks.popitem(last=False)
