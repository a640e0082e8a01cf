"""``GET /metrics``: Prometheus text exposition, written by hand (no client library needed).

The server counts what it serves (requests by endpoint and status, prompt and completion tokens,
requests in flight, the ensemble's agreement over all answers); the engine reports what it
schedules (requests, decode steps, rows in flight, queue depth), read at scrape
time so the figures are never stale.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    """Counters of one server, safe to update from the event loop and from worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0
        self.cancelled = 0
        self._agreement_sum = 0.0
        self._answers = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, status)] += 1

    def counted(self, endpoint: str, status: int) -> None:
        """A request answered before it started (a bad body, a wrong key)."""
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def answer(self, prompt_tokens: int, completion_tokens: int, agreement_rate: float) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self._agreement_sum += agreement_rate
            self._answers += 1

    def disconnected(self) -> None:
        with self._lock:
            self.cancelled += 1

    def render(self, engine_stats: Mapping[str, Any]) -> str:
        """The exposition text, with the engine's figures (``engine_stats``) as ``unite_engine_*``."""
        with self._lock:
            lines = [
                "# HELP unite_requests_total HTTP requests answered, by endpoint and status.",
                "# TYPE unite_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'unite_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            rate = self._agreement_sum / self._answers if self._answers else 0.0
            lines += _metric(
                "unite_prompt_tokens_total",
                "counter",
                "Prompt tokens (primary member's count).",
                self.prompt_tokens,
            )
            lines += _metric(
                "unite_completion_tokens_total",
                "counter",
                "Generated tokens (union steps).",
                self.completion_tokens,
            )
            lines += _metric(
                "unite_requests_in_flight", "gauge", "Requests being answered now.", self.in_flight
            )
            lines += _metric(
                "unite_requests_cancelled_total",
                "counter",
                "Requests whose client went away before the answer ended.",
                self.cancelled,
            )
            lines += _metric(
                "unite_agreement_rate",
                "gauge",
                "Mean share of decisions where every member's top-1 agreed.",
                rate,
            )
        for key, value in sorted(engine_stats.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kind = "counter" if key in _COUNTERS else "gauge"
                name = f"unite_engine_{_snake(key)}" + ("_total" if kind == "counter" else "")
                lines += _metric(
                    name, kind, _ENGINE_HELP.get(key, f"Engine figure {key!r}."), value
                )
        return "\n".join(lines) + "\n"


#: Engine figures that only grow; the others (queue depth, rows in flight, limits) are gauges.
_COUNTERS = frozenset({"requests", "batches", "steps", "prefix_ids_reused", "prefix_ids_stored"})


_ENGINE_HELP = {
    "queue_depth": "Requests waiting to join the running batch.",
    "rows_in_flight": "Rows decoding now.",
    "max_batch_rows": "Most rows decoded together.",
    "max_queue": "Most waiting requests; beyond, requests get 429.",
    "requests": "Requests the engine admitted.",
    "steps": "Union steps decoded.",
    "batches": "Admissions (requests joining at one step share one).",
    "prefix_ids_reused": "Prompt ids the members took from their prefix caches (no forward).",
    "prefix_ids_stored": "Ids (prompts and answers) written into the members' prefix caches.",
    "prefix_bytes_held": "Bytes of KV columns the members' prefix caches hold now.",
    "prefix_bytes_max": "Bytes the members' prefix caches may hold together (LRU beyond).",
    "kv_bytes": "Bytes of the KV caches of the rows in flight (room to grow included).",
}


def _snake(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key).lower()


def _metric(name: str, kind: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
