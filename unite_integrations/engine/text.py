"""The shared generated text of one row: stop strings, and what is safe to stream yet.

Text is kept as bytes, because a chosen string can be part of a UTF-8 character. Streaming holds
back (a) an incomplete UTF-8 character at the end and (b) any tail that could be the start of a stop
string, so a stop string split across steps is never emitted.
"""

from __future__ import annotations

from typing import Any, overload

__all__ = ["RowText", "complete_utf8_prefix", "partial_suffix"]


def complete_utf8_prefix(data: bytes | bytearray) -> int:
    """Length of ``data`` without a trailing, still-completable UTF-8 character."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for its lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return n - back if need > back else n
    return n


@overload
def partial_suffix(text: str, tag: str) -> int: ...
@overload
def partial_suffix(text: bytes | bytearray, tag: bytes) -> int: ...
def partial_suffix(text: Any, tag: Any) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``: what a stream
    must hold back because it may be the start of ``tag`` (a stop string, a tool-call tag)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class RowText:
    def __init__(self, stop: tuple[str, ...]) -> None:
        self.raw = bytearray()
        self.stops = [s.encode() for s in stop]
        self.end: int | None = None  # where the text ends once a stop string was found
        self.emitted = 0

    def append(self, piece: bytes) -> bool:
        """Add a chosen string; True when a stop string now occurs (the text is cut before it)."""
        old = len(self.raw)
        self.raw += piece
        hits = [i for s in self.stops if (i := self.raw.find(s, max(0, old - len(s) + 1))) >= 0]
        if hits:
            self.end = min(hits)
        return self.end is not None

    def take_delta(self, final: bool = False) -> str:
        """Newly safe text since the last call; ``final`` flushes everything up to the end."""
        if self.end is not None:
            safe = self.end
        elif final:
            safe = len(self.raw)
        else:
            safe = len(self.raw) - self._stop_prefix_overlap()
            safe = complete_utf8_prefix(self.raw[:safe])
        if safe <= self.emitted:
            return ""
        delta = bytes(self.raw[self.emitted : safe]).decode("utf-8", errors="replace")
        self.emitted = safe
        return delta

    @property
    def text(self) -> str:
        end = len(self.raw) if self.end is None else self.end
        return bytes(self.raw[:end]).decode("utf-8", errors="replace")

    def _stop_prefix_overlap(self) -> int:
        """Longest tail of the text that is a proper prefix of some stop string."""
        return max((partial_suffix(self.raw, s) for s in self.stops), default=0)
