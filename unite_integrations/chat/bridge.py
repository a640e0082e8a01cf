"""The one sync/async bridge: run the synchronous engine from async code.

The engine is thread-safe and synchronous. Two kinds of threads serve async callers, so that
checking a request never waits behind decoding:

* ``checked`` runs work that never waits for the engine (building a request's grammar, the
  engine's encoding and budget checks, queueing it) in a pool of its own, whose threads are made
  as needed and reused. Nothing in that pool waits for a decoding step, so requests waiting for
  the engine can never take its threads; its bound (``CHECK_THREADS``) only caps a flood of
  requests whose checks are slow (a grammar from a deeply nested schema).
* ``thread_stream`` pumps a queued request's chunks from a worker thread of its own through an
  ``asyncio.Queue``, so the event loop only ever awaits. Cancellation reaches the engine: when
  the consumer of an async stream stops (``aclose``, ``break``, a cancelled task, ``wait_for``),
  the request is abandoned (cancelled, and its worker woken), so decoding stops instead of
  running to the token budget.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

__all__ = ["CHECK_THREADS", "checked", "thread_stream"]

T = TypeVar("T")

_ITEM, _ERROR, _DONE = 0, 1, 2

#: Most threads checking and queueing requests for async callers at once (``checked``), for
#: the process; they are made as needed (usually a few) and reused.
CHECK_THREADS = 32
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _checks() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                CHECK_THREADS, thread_name_prefix="unite-check"
            )
        return _pool


async def checked(fn: Callable[[], T], *, discard: Callable[[T], object] | None = None) -> T:
    """``fn()`` in the pool of checking threads (``fn`` must not wait for decoding). If the
    awaiting task is cancelled while ``fn`` runs, its result is handed to ``discard`` when it
    comes (e.g. to cancel a request queued for nobody)."""
    future = _checks().submit(contextvars.copy_context().run, fn)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if discard is not None:
            future.add_done_callback(lambda f: _discard(f, discard))
        raise


def _discard(future: concurrent.futures.Future[T], discard: Callable[[T], object]) -> None:
    if not future.cancelled() and future.exception() is None:
        discard(future.result())


async def thread_stream(
    make: Callable[[], Iterator[T]], *, abandon: Callable[[], object] | None = None
) -> AsyncGenerator[T, None]:
    """Iterate ``make()`` in a worker thread; the first item (or error) is awaited here, so bad
    input raises when the stream is requested. Leaving the async generator early (or cancelling
    the task that reads it) calls ``abandon`` (which should cancel the work and wake the worker)
    and stops the worker at its next item, which closes the sync iterator."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: int, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def pump() -> None:
        items: Iterator[T] | None = None
        try:
            items = make()
            for item in items:
                if stop.is_set():
                    break
                put(_ITEM, item)
        except BaseException as e:
            put(_ERROR, e)
        else:
            put(_DONE, None)
        finally:
            if items is not None:
                _close(items)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(pump,), name="unite-stream", daemon=True).start()

    def leave() -> None:
        stop.set()
        if abandon is not None:
            abandon()

    try:
        first = await queue.get()
    except BaseException:  # cancelled before the first item: the worker stops at it
        leave()
        raise
    if first[0] == _ERROR:
        raise first[1]

    async def gen() -> AsyncGenerator[T, None]:
        kind, value = first
        try:
            while kind != _DONE:
                if kind == _ERROR:
                    raise value
                yield value
                kind, value = await queue.get()
        finally:
            if kind != _DONE:  # left early: the work is abandoned
                leave()

    return gen()


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()
