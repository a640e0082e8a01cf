"""The worker's view of the requests in flight: each request's rows admitted (with their own
options and random generators), their deltas and results reported as they come, and a failure
handed to whoever waits. The decode loop (``UniTEEngine._serve``) owns one ``LiveRequests``; front ends
read the events it puts (``stream_chunk`` makes one a ``StreamChunk``)."""

from __future__ import annotations

from typing import Any

import torch

from .batch import Ensemble, RowState
from .generation_options import GenerationOptions
from .results import StreamChunk
from .scheduler import Delta, Done, Failed, Request
from .text import RowText

__all__ = ["LiveRequests", "stream_chunk"]


class LiveRequests:
    """The worker's view of the requests in flight and their rows (in the order of the call)."""

    def __init__(self) -> None:
        self.rows: dict[Request, list[RowState]] = {}

    def admit(
        self, ens: Ensemble, arrivals: list[Request]
    ) -> tuple[list[list[list[int]]], list[RowState]]:
        """Rows for the arrivals, and each member's prompts for them (``[i][r]``)."""
        home = ens.plan.weights.device
        prompts: list[list[list[int]]] = [[] for _ in ens.members]
        new: list[RowState] = []
        for req in arrivals:
            job, opts = req.job, req.job.options
            try:  # a request that cannot start fails alone, before it touches the batch
                # Rows with seeds of their own (``submit(seeds=...)``): options of their own.
                row_opts = [opts] * job.n_rows
                if job.seeds is not None:
                    row_opts = [opts.model_copy(update={"seed": s}) for s in job.seeds]
                rows = [
                    RowState(
                        RowText(opts.stop),
                        o,
                        matcher=job.matcher.copy() if job.matcher else None,
                        generator=_generator(o, home),
                        n_in=[len(p[r]) for p in job.prompts],
                        owner=req,
                    )
                    for r, o in enumerate(row_opts)
                ]
            except Exception as e:
                req.events.put(Failed(e))
                continue
            self.rows[req] = rows
            new += rows
            for i, p in enumerate(job.prompts):
                prompts[i] += p
        return prompts, new

    def report(self, result: Any) -> None:
        """Stream each row's deltas (tagged with the row); hand finished requests their
        results, with each row's last delta; forget cancelled ones. A request whose report
        raises fails alone (its rows leave at the next step); the others and the loop go on."""
        for req, rows in list(self.rows.items()):
            try:
                if req.cancelled:
                    del self.rows[req]
                elif all(row.finish_reason is not None for row in rows):
                    finals = [row.text.take_delta(final=True) for row in rows] if req.stream else []
                    req.events.put(Done([result(row) for row in rows], tuple(finals)))
                    del self.rows[req]
                elif req.stream:
                    for r, row in enumerate(rows):
                        if delta := row.text.take_delta():
                            req.events.put(Delta(delta, row=r))
            except Exception as e:
                req.cancel()  # its rows, if any are still decoding, leave at the next step
                req.events.put(Failed(e))
                self.rows.pop(req, None)

    def fail(self, error: BaseException) -> None:
        for req in self.rows:
            req.events.put(Failed(error))
        self.rows.clear()


def stream_chunk(event: Delta | Done, row: int = 0) -> StreamChunk:
    """A streamed request's event as a chunk of its row: its text, and with the last one the
    result (a ``Done`` event ends every row: ``row`` picks whose last chunk)."""
    if isinstance(event, Delta):
        return StreamChunk(text=event.text, row=event.row)
    result = event.results[row]
    text = event.texts[row] if event.texts else ""
    return StreamChunk(text=text, finish_reason=result.finish_reason, result=result, row=row)


def _generator(opts: GenerationOptions, device: torch.device) -> torch.Generator | None:
    """A sampled row's own generator: the same seed gives the same text in any batch."""
    if opts.temperature <= 0:
        return None
    gen = torch.Generator(device=device)
    if opts.seed is None:
        gen.seed()  # a fresh random seed, leaving torch's global generator alone
    else:
        gen.manual_seed(opts.seed)
    return gen
