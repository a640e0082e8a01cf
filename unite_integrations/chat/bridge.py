"""The one sync/async bridge: run the synchronous engine from async code.

The engine is thread-safe and synchronous. A stream is pumped by a worker thread through an
``asyncio.Queue``, so the event loop only ever awaits. Cancellation reaches the engine: when the
consumer of an async stream stops (``aclose``, ``break``, a cancelled task, ``wait_for``), the
worker closes the sync iterator at the engine's next chunk, which cancels the engine request, so
decoding stops instead of running to the token budget.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any, TypeVar

__all__ = ["primed", "thread_stream"]

T = TypeVar("T")

_ITEM, _ERROR, _DONE = 0, 1, 2
_NOTHING: Any = object()


def primed(items: Iterator[T]) -> Generator[T, None, None]:
    """Start ``items`` now (so bad input raises at the call, not at the first ``next``) and
    return a generator over all of them. Closing or dropping the generator closes ``items``."""
    first = next(items, _NOTHING)

    def gen() -> Generator[T, None, None]:
        try:
            if first is not _NOTHING:
                yield first
                yield from items
        finally:
            _close(items)

    return gen()


async def thread_stream(make: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
    """Iterate ``make()`` in a worker thread; the first item (or error) is awaited here, so bad
    input raises when the stream is requested. Leaving the async generator early (or cancelling
    the task that reads it) stops the worker at its next item and closes the sync iterator."""
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
    try:
        first = await queue.get()
    except BaseException:  # cancelled before the first item: the worker stops at it
        stop.set()
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
            stop.set()

    return gen()


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()
