"""``EngineMetrics``: an engine's load now and its totals so far, for a server's /metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .prefix import PrefixStore
from .scheduler import Scheduler

__all__ = ["EngineMetrics", "engine_metrics"]


@dataclass(frozen=True)
class EngineMetrics:
    """The engine's load now and its totals so far."""

    queued: int  # requests waiting to join the batch
    rows_in_flight: int  # rows decoding now
    requests: int  # requests admitted so far
    steps: int  # union steps decoded so far
    max_batch_rows: int
    max_queue: int
    # ``prefix_cache``, all in-process members together: prompt ids taken from the stores
    # instead of a forward pass, and ids written into them (0 without a prefix cache)
    prefix_ids_reused: int = 0
    prefix_ids_stored: int = 0
    # bytes of KV columns the stores hold now, and at most (0 where a store counts ids)
    prefix_bytes_held: int = 0
    prefix_bytes_max: int = 0
    # bytes of the KV caches of the rows in flight (in-process members, room to grow included):
    # with the weights and the stores, what the process holds; bounded by ``max_batch_rows``
    kv_bytes: int = 0
    batches: int = 0  # admissions so far: steps that let waiting requests join the batch


def engine_metrics(
    scheduler: Scheduler, stats: Mapping[str, int], stores: Sequence[PrefixStore]
) -> EngineMetrics:
    """The metrics of an engine with this scheduler, these running totals (``stats``) and
    these prefix stores."""
    queued, rows = scheduler.load()
    return EngineMetrics(
        queued=queued,
        rows_in_flight=rows,
        requests=stats["requests"],
        steps=stats["steps"],
        max_batch_rows=scheduler.max_rows,
        max_queue=scheduler.max_queue,
        prefix_ids_reused=sum(s.reused for s in stores),
        prefix_ids_stored=sum(s.stored for s in stores),
        prefix_bytes_held=sum(s.bytes for s in stores),
        prefix_bytes_max=sum(s.max_bytes or 0 for s in stores),
        kv_bytes=stats["kv_bytes"],
        batches=stats["batches"],
    )
