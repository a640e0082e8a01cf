"""Prompt prefixes a member has already run: their KV-cache columns, kept for later prompts.

Few-shot evaluations and chat services send many prompts that begin alike (the same examples, the
same system prompt). A causal model's keys and values at position j depend on the ids up to j
only, so a prompt whose first ids are a stored prompt's first ids can take those columns instead
of running them through the model again (vLLM's automatic prefix caching). The store holds blocks
of ``BLOCK`` ids, each keyed by its parent block and its own ids, so a lookup compares ids
exactly (no hash can collide) and prompts sharing a prefix share its blocks. When it holds more
than its capacity (in bytes of KV columns, or in ids) it drops the least recently used blocks; a
lookup marks a prompt's blocks used from the last to the first, so parents outlive their
children.

Only whole blocks are stored; a prompt always runs its last id itself (its logits are needed).
A row that leaves the batch stores every id its member held for it, the generated text
included (``MemberBatch.keep_rows``), so the next turn of a conversation, which re-sends it,
runs only what is new.

The store is on by default (``prefix_cache="auto"``): ``capacity`` reads the size a user gives
(ids, bytes, a share of the device's free memory) and ``AUTO_SHARE`` sets the default.
"""

from __future__ import annotations

import itertools
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["AUTO_CAP", "AUTO_SHARE", "BLOCK", "PrefixStore", "capacity", "check_size"]

#: Ids per stored block: a prompt reuses its longest stored prefix in whole blocks.
BLOCK = 16
#: ``prefix_cache="auto"`` (the default): this share of the memory free on the member's device
#: when it loads, at most ``AUTO_CAP`` bytes per member.
AUTO_SHARE = 0.10
AUTO_CAP = 2 * 1024**3

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2}
_UNITS |= {"gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*|%)\s*$", re.IGNORECASE)

#: A store's size: ``(ids, bytes)``, each None where it sets no limit.
Capacity = tuple[int | None, int | None]


def check_size(spec: int | str) -> str | None:
    """None when ``spec`` is a store size ``capacity`` reads, else why not (for ``ConfigError``)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        return "give an int of ids, a size such as '512MiB' or '10%', 'auto', or 0 for none"
    if isinstance(spec, int):
        return None if spec >= 0 else "a count of ids is >= 0"
    if spec.strip().lower() == "auto":
        return None
    match = _SIZE.match(spec)
    if match is None or match[2].lower() not in {*_UNITS, "%"}:
        return (
            f"{spec!r} is not a size: write bytes with a unit (B, KB, MB, GB, KiB, MiB, GiB), "
            "a share of the free memory such as '10%', 'auto', or an int of ids"
        )
    if match[2] == "%" and not 0 <= float(match[1]) <= 100:
        return "a share of the free memory is between 0% and 100%"
    return None


def capacity(spec: int | str, device: torch.device | str = "cpu") -> Capacity:
    """What a store of size ``spec`` may hold on ``device``: an int counts ids (0: nothing), a
    size such as ``"512MiB"`` counts bytes, ``"10%"`` is that share of the memory free on the
    device now, ``"auto"`` is ``AUTO_SHARE`` of it, at most ``AUTO_CAP``."""
    if isinstance(spec, int):
        return spec, None
    text = spec.strip().lower()
    if text == "auto":
        return None, min(int(AUTO_SHARE * free_memory(device)), AUTO_CAP)
    match = _SIZE.match(text)
    assert match is not None, check_size(spec)
    if match[2] == "%":
        return None, int(float(match[1]) / 100 * free_memory(device))
    return None, int(float(match[1]) * _UNITS[match[2]])


def free_memory(device: torch.device | str) -> int:
    """Bytes free on ``device`` now: the GPU's free memory, or the host's available memory."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 * 1024**3


_Key = tuple[int, tuple[int, ...]]  # (the parent block's serial, 0 for none; the block's ids)


@dataclass
class _Block:
    key: _Key
    serial: int  # the key of its children's parent
    keys: list[torch.Tensor]  # per layer [H, BLOCK, D]
    values: list[torch.Tensor]


class PrefixStore:
    """One member's stored prefixes (KV columns per layer), up to ``capacity`` ids and/or
    ``max_bytes`` bytes (an int capacity counts ids, as ``prefix_cache=N`` does)."""

    def __init__(self, capacity: int | None = None, max_bytes: int | None = None) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()
        self._serial = itertools.count(1)
        self.reused = 0  # ids taken from the store instead of a forward pass
        self.stored = 0  # ids written into it
        self.bytes = 0  # bytes of KV columns held now

    @classmethod
    def sized(cls, spec: int | str, device: torch.device | str = "cpu") -> PrefixStore | None:
        """A store of size ``spec`` (see ``capacity``) on ``device``; None for a size of 0."""
        ids, max_bytes = capacity(spec, device)
        if ids == 0 or max_bytes == 0:
            return None
        return cls(ids, max_bytes)

    def clear(self) -> None:
        """Drop every stored block (the counts stay)."""
        self._blocks = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        """Ids held."""
        return len(self._blocks) * BLOCK

    def _full(self, ids: int = 0, nbytes: int = 0) -> bool:
        """Whether the store holds more than its size (with ``ids``/``nbytes`` more: would)."""
        over_ids = self.capacity is not None and len(self) + ids > self.capacity
        return over_ids or (self.max_bytes is not None and self.bytes + nbytes > self.max_bytes)

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
        if self.capacity is not None and self.capacity < BLOCK:
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
                if not self._make_room(_nbytes(block), chain):
                    break  # only its own parents could leave for it: the prefix stays
                self._blocks[key] = block
                self.stored += BLOCK
                self.bytes += _nbytes(block)
            chain.append(block)
        self._used(chain)
        while self._full():  # a block larger than the whole store: it does not stay either
            _, dropped = self._blocks.popitem(last=False)
            self.bytes -= _nbytes(dropped)

    def _make_room(self, nbytes: int, chain: list[_Block]) -> bool:
        """Evict the least recently used blocks until one more block of ``nbytes`` fits, before
        it is added: the store never holds more than its size, not even while a prompt's blocks
        go in (another thread reads ``bytes`` meanwhile). False, evicting nothing more, where
        only ``chain`` (the new block's parents, which a child cannot outlive) is left to go."""
        self._used(chain)
        parents = {b.key for b in chain}
        while self._blocks and self._full(BLOCK, nbytes):
            oldest = next(iter(self._blocks))
            if oldest in parents:
                return False
            self.bytes -= _nbytes(self._blocks.pop(oldest))
        return True


def _nbytes(block: _Block) -> int:
    return sum(int(t.nbytes) for t in [*block.keys, *block.values])
