"""Concurrent calls on one shared engine: queued, and batched together when they can be.

The engine is shared by web servers, LangChain executors and async adapters, so calls arrive from
many threads. One worker thread per engine decodes; callers hand it a ``Request`` and read results
from the request's own queue. Requests waiting at the same time with the same options and grammar
are decoded as one batch: rows are independent and greedy rows decode exactly as they would alone,
so every caller gets the answer it would get by itself, sooner. Each batch builds its own KV
caches, so calls never share state.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Request", "Scheduler"]

#: Most rows decoded together; more waiting requests go in the next batch.
MAX_BATCH_ROWS = 64


@dataclass
class Request:
    """One call: its rows (``n_rows``), what may share a batch with it (``key``), and where the
    worker puts its events: ("delta", str), ("done", payload) or ("error", exception)."""

    n_rows: int
    key: Hashable
    payload: Any
    stream: bool = False
    events: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False

    def wait(self) -> tuple[str, Any]:
        kind, value = self.events.get()
        if kind == "error":
            raise value
        return kind, value


class Scheduler:
    """A daemon worker that runs ``run_group(requests)`` for each batch of compatible requests."""

    def __init__(self, run_group: Callable[[list[Request]], None]) -> None:
        self._run_group = run_group
        self._pending: list[Request] = []
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, request: Request) -> Request:
        with self._ready:
            self._pending.append(request)
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="unite-engine", daemon=True)
                self._worker.start()
            self._ready.notify()
        return request

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                group = self._take_group()
            if not group:
                continue
            try:
                self._run_group(group)
            except BaseException as e:  # every caller of the batch sees the failure
                for r in group:
                    r.events.put(("error", e))

    def _take_group(self) -> list[Request]:
        # A request abandoned while it waited (a stream closed before its first chunk) is dropped
        # here: decoding it would cost a batch and delay everyone behind it.
        self._pending = [r for r in self._pending if not r.cancelled]
        if not self._pending:
            return []
        first = self._pending.pop(0)
        group, rows = [first], first.n_rows
        for r in list(self._pending):
            if r.key == first.key and rows + r.n_rows <= MAX_BATCH_ROWS:
                group.append(r)
                rows += r.n_rows
                self._pending.remove(r)
        return group
