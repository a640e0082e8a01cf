"""The engine's worker after a step (or an admission) raised: the requests at fault fail
alone; the others go on in a batch rebuilt from what their rows held."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .batch import Batch, Ensemble, RowState
from .decode import step
from .results import GenerationResult
from .scheduler import Failed, Request

__all__ = ["LiveRequests", "recover"]


class LiveRequests(Protocol):
    """The worker's requests in flight and their rows (``live.LiveRequests``)."""

    rows: dict[Request, list[RowState]]

    def report(self, result: Any) -> None:
        """Hand finished requests their results (``result`` builds a finished row's)."""

    def fail(self, error: BaseException) -> None:
        """Fail every request in flight with ``error``."""


def recover(
    ens: Ensemble,
    chunk: int,
    batch: Batch | None,
    live: LiveRequests,
    error: Exception,
    result: Callable[[RowState], GenerationResult],
) -> Batch | None:
    """After a step (or an admission) raised: find the requests at fault and fail them
    alone. Each request in flight is rebuilt in a batch of its own from what its rows held
    (``Batch.held``, every member) and takes one step there: one that raises again, or
    whose rows the failure left half-changed, fails with its error; the others go on in
    one batch rebuilt from their rows. One request alone is at fault by itself. Costs a
    prefill of each row's text so far, twice, only when something failed.

    ``chunk``: the batches' prefill chunk; ``result``: builds a finished row's result. The
    batch to go on with, or None where no request can go on."""
    requests = list(live.rows)
    if batch is None or len(requests) <= 1:
        live.fail(error)
        return None
    index = {id(row): r for r, row in enumerate(batch.rows)}
    going: list[tuple[list[RowState], list[list[list[int]]], list[list[int]]]] = []
    for req in requests:
        rows = live.rows[req]
        try:
            if all(id(row) in index for row in rows):  # rows of the batch: what they held
                at = [index[id(row)] for row in rows]
                if not all(batch.consistent(r) for r in at):
                    raise error  # the failure struck inside one of these rows
                held, n_prompt = batch.state(at)
            else:  # admitted this step: its prompts
                held = [list(map(list, p)) for p in req.job.prompts]
                n_prompt = [[len(p) for p in ps] for ps in held]
            solo = Batch(ens, chunk)
            solo.restore(rows, held, n_prompt)
            step(ens, solo)
            solo.keep([r for r, row in enumerate(solo.rows) if row.finish_reason is None])
            solo.forward()
            going.append((solo.rows, *solo.state(range(len(solo.rows)))))
        except Exception as e:  # this request is at fault: it fails alone
            req.events.put(Failed(e))
            del live.rows[req]
    live.report(result)
    rebuilt = Batch(ens, chunk)
    try:
        for rows, held, n_prompt in going:
            if rows and not rows[0].owner.cancelled:
                rebuilt.restore(rows, held, n_prompt)
    except Exception as e:  # the rebuild itself failed: no request can go on
        live.fail(e)
        return None
    return rebuilt
