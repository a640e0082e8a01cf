"""Concurrent calls on one shared engine: a bounded queue in front of one continuous batch.

The engine is shared by web servers, LangChain executors and async adapters, so calls arrive from
many threads. One worker thread per engine decodes; callers hand it a ``Request`` and read typed
events (``Delta``, ``Done``, ``Failed``) from the request's own queue. Between two decode steps
the worker ``admit``s waiting requests into the running batch (their prefill, then their rows step
with the others) and retires rows the step they finish, so a short request never waits for a long
one and requests with different options share a batch. Rows are independent: a greedy row decodes
exactly as it would alone, and a sampled row draws from its own generator.

Bounds keep memory flat under load: at most ``max_rows`` rows in flight and ``max_queue``
requests waiting; a call beyond that fails at once with ``OverloadedError``. ``close()`` (also run
at interpreter exit) stops the worker between two steps and fails every waiting and in-flight call
with ``EngineClosedError``, so a process never dies with the worker inside a forward pass.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EngineClosedError, OverloadedError
from .config import GenerationOptions
from .constraints import ByteMatcher, Constraint

if TYPE_CHECKING:
    from .results import GenerationResult

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_QUEUE",
    "Delta",
    "Done",
    "Event",
    "Failed",
    "Job",
    "Request",
    "Scheduler",
]

#: Most rows decoded together; requests that do not fit wait for rows to finish.
MAX_BATCH_ROWS = 64
#: Most requests waiting to join the batch; one more fails at once with ``OverloadedError``.
MAX_QUEUE = 256


@dataclass(frozen=True)
class Job:
    """What a request asks for: ``prompts[i][r]`` is member i's ids for row r."""

    prompts: list[list[list[int]]]
    options: GenerationOptions
    constraint: Constraint | None = None
    #: The constraint's grammar, compiled once when the call was made (each row copies it).
    matcher: ByteMatcher | None = None
    #: Row r's seed (``UniTEEngine.submit(seeds=...)``): several samples of one prompt in one
    #: request, each with a random stream of its own; None: every row takes ``options.seed``.
    seeds: tuple[int | None, ...] | None = None

    @property
    def n_rows(self) -> int:
        return len(self.prompts[0])


@dataclass(frozen=True)
class Delta:
    """Text of a streamed row newly safe to show; ``row``: which row of the request (0..n-1)."""

    text: str
    row: int = 0


@dataclass(frozen=True)
class Done:
    """The request's results, one per row; ``texts``: a stream's last delta of each row (the
    text its stop strings held back until it finished; empty for a request that does not
    stream)."""

    results: list[GenerationResult]
    texts: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The first row's last delta (a stream of one prompt has no other)."""
        return self.texts[0] if self.texts else ""


@dataclass(frozen=True)
class Failed:
    """The request failed (or the engine closed) with ``error``."""

    error: BaseException


Event = Delta | Done | Failed


@dataclass(eq=False)
class Request:
    """One call: its job, whether it streams, and the queue of its events."""

    job: Job
    stream: bool = False
    events: queue.SimpleQueue[Event] = field(default_factory=queue.SimpleQueue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop this request: its rows leave the batch at the next step (async front ends call
        this when their caller is cancelled; a stream calls it when it is closed or collected)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def next_event(self) -> Delta | Done:
        """The next event; a ``Failed`` one is raised."""
        event = self.events.get()
        if isinstance(event, Failed):
            raise event.error
        return event


class Scheduler:
    """The bounded waiting queue and the worker thread that runs ``serve(self)``.

    ``serve`` is the engine's decode loop; it calls ``admit`` between steps and returns when
    ``admit`` answers None (closed).
    """

    def __init__(
        self,
        serve: Callable[[Scheduler], None],
        max_rows: int = MAX_BATCH_ROWS,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        self._serve = serve
        self.max_rows = max_rows
        self.max_queue = max_queue
        self._waiting: list[Request] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._rows = 0  # rows in the batch or being admitted into it (the worker sets it)
        self.closed = False
        _live.add(self)

    @property
    def queued(self) -> int:
        """Requests waiting to join the batch."""
        return len(self._waiting)

    def load(self) -> tuple[int, int]:
        """(requests waiting, rows in flight), read together: a request taken from the queue is
        counted in flight from that moment, so the two are never both 0 while it prefills."""
        with self._cond:
            return len(self._waiting), self._rows

    def running(self, rows: int) -> None:
        """The worker's count of rows in flight after a step (finished and cancelled rows gone)."""
        with self._cond:
            self._rows = rows

    def submit(self, requests: list[Request]) -> None:
        """Queue these requests (all or none); ``OverloadedError`` when the queue is full."""
        with self._cond:
            if self.closed:
                raise EngineClosedError("the engine is closed: build a new UniTEEngine")
            self._waiting = [r for r in self._waiting if not r.cancelled]
            if len(self._waiting) + len(requests) > self.max_queue:
                raise OverloadedError(
                    f"the engine already has {len(self._waiting)} requests waiting "
                    f"(max_queue={self.max_queue}): retry later, or raise max_queue"
                )
            self._waiting += requests
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="unite-engine", daemon=True)
                self._worker.start()
            self._cond.notify()

    def admit(self, rows_in_flight: int) -> list[Request] | None:
        """Waiting requests that fit beside ``rows_in_flight`` rows, in arrival order (the worker
        calls this between steps). Blocks while nothing runs and nothing waits; None once closed."""
        with self._cond:
            while True:
                if self.closed:
                    return None
                # A request abandoned while it waited is dropped before it costs a prefill.
                self._waiting = [r for r in self._waiting if not r.cancelled]
                if self._waiting or rows_in_flight:
                    break
                self._cond.wait()
            taken: list[Request] = []
            while self._waiting and (
                rows_in_flight + self._waiting[0].job.n_rows <= self.max_rows or not rows_in_flight
            ):
                r = self._waiting.pop(0)
                taken.append(r)
                rows_in_flight += r.job.n_rows
            self._rows = rows_in_flight
            return taken

    def arrivals_fit(self, rows_in_flight: int) -> bool:
        """Whether a request waits that ``admit`` would take now beside ``rows_in_flight`` rows
        (the worker asks before a forward that only prefills: admitting first costs nobody)."""
        with self._cond:
            first = next((r for r in self._waiting if not r.cancelled), None)
            return first is not None and rows_in_flight + first.job.n_rows <= self.max_rows

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker after its current step; waiting calls fail with ``EngineClosedError``
        (in-flight ones too, failed by the worker)."""
        with self._cond:
            self.closed = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for r in waiting:
            r.events.put(Failed(EngineClosedError("the engine was closed before this call ran")))
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)

    def _run(self) -> None:
        try:
            self._serve(self)
        except BaseException:  # the worker is gone: fail who waits, refuse later calls
            self.close(timeout=0)
            raise


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def _close_all() -> None:
    """At interpreter exit, stop every worker between two steps (no abort inside a forward)."""
    for s in list(_live):
        s.close()


try:  # runs before non-daemon threads are joined and before atexit handlers
    threading._register_atexit(_close_all)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # pragma: no cover - other Pythons, or already exiting
    atexit.register(_close_all)
