"""The rows in flight and the ensemble they decode with: each member's backend, each row's state.

``Ensemble`` is built once per engine (loaded members, the precomputed ``StepPlan``, the string
table). ``Batch`` holds, for the rows decoding now, every member's ``MemberBackend`` and each
row's ``RowState``, index r everywhere, and the ids each member has still to take for each row
(``updates``): the decode step (``decode.step``) writes them, ``Batch.forward`` and
``Batch.catch_up`` feed them to the members. Rows join (``add``, chunked prefill) and leave
(``keep``) between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from .backends import LocalMember, MemberBackend
from .constraints import ByteMatcher
from .generation_options import GenerationOptions
from .members import LoadedMember
from .picks import StepRecord
from .prefix import PrefixStore
from .results import FinishReason
from .sequences import MemberBatch, Update, apply_update
from .text import RowText
from .union import StepPlan

__all__ = [
    "IDLE_CHUNKS",
    "PREFILL_CHUNK",
    "Batch",
    "Ensemble",
    "RowState",
    "gate_of",
    "prefill_chunk",
    "prefill_share",
]


@dataclass
class Ensemble:
    """Loaded members plus the precomputed step plan; built once per engine."""

    members: list[LoadedMember]
    plan: StepPlan
    strings: list[bytes]  # gid -> bytes (gid 0, END, is b"")
    exact: list[list[torch.Tensor]]  # [j][i] bool [V_j + 1] on the CPU
    col_host: list[list[torch.Tensor]]  # [j][i] int64 [V_j + 1] on the CPU
    window: int
    pool: ThreadPoolExecutor | None = None  # set when members live on different devices
    check_invariants: bool = False
    usable: list[list[bool]] = field(default_factory=list)  # [i][t]: token t may be chosen
    #: Member i's stored prompt prefixes (``prefix_cache``), kept across batches; [] keeps none.
    stores: list[PrefixStore] = field(default_factory=list)
    #: Opens member i's backend for a new batch (default: in process, ``LocalMember``).
    open_member: Callable[[int], MemberBackend] | None = None
    alone: StepPlan = field(init=False)  # the primary member as a one-member ensemble
    longest: int = field(init=False)  # bytes of the longest token of any member

    def __post_init__(self) -> None:
        self.longest = max((len(b) for m in self.members for b in m.vocab.exact), default=1)
        p = self.plan
        self.alone = StepPlan(
            end_ids=p.end_ids[:1],
            bias=p.bias[:1],
            gid=p.gid[:1],
            col_map=[p.col_map[0][:1]],
            weights=torch.ones(1, device=p.weights.device),
            k=p.k,
        )

    def backend(self, i: int) -> MemberBackend:
        """A fresh, empty backend for member i."""
        if self.open_member is not None:
            return self.open_member(i)
        m = self.members[i]
        store = self.stores[i] if self.stores else None
        return LocalMember(
            MemberBatch(m.model, [], m.pad_id, store), self.plan.end_ids[i], self.plan.bias[i]
        )


@dataclass
class RowState:
    """One row in flight: its options, text, grammar state and random generator."""

    text: RowText
    opts: GenerationOptions = field(default_factory=GenerationOptions)
    matcher: ByteMatcher | None = None
    generator: torch.Generator | None = None  # a sampled row's own: same seed, same text
    n_in: list[int] = field(default_factory=list)  # prompt tokens per member
    finish_reason: FinishReason | None = None  # set once, when the row is done
    steps: list[StepRecord] = field(default_factory=list)  # one per chosen string, END excluded
    decisions: int = 0  # decisions taken, the final END included
    voted: int = 0  # of which the members voted on (not gated)
    agreed: int = 0  # of which every member's own top-1 was the same string
    # Per chosen string (as ``steps``), when ``opts.top_logprobs``: the most likely strings of
    # the mixed distribution it was chosen from, (gid, probability), most likely first.
    likeliest: list[list[tuple[int, float]]] = field(default_factory=list)
    owner: Any = None  # what the worker reports this row to (a scheduler request)


#: Prompt ids each member runs per step for rows still being prefilled (chunked prefill): a long
#: prompt joins the batch with one id and runs the rest this many ids a step, the oldest row
#: first, beside the rows already decoding, so they and short newcomers never wait for it whole.
#: On a CPU a forward costs a fixed part about as large as a one-row decoding step plus its
#: tokens: on the real pair 64 ids cost 1.9 ms an id, 256 1.3, 512 1.2 (a whole prompt's cost),
#: and a RAG burst ran 0.63x, 1.27x, 1.38-1.47x its one-at-a-time throughput (docs/engine.md). A
#: GPU is busy only with larger chunks (vLLM schedules 2,048 or more): its 512 is untuned.
PREFILL_CHUNK = {"cpu": 512, "cuda": 512}


#: Chunks a step runs at most: when every row is still being prefilled (nobody decodes, so
#: nobody waits), or when few decode beside many waiting (``prefill_share``).
IDLE_CHUNKS = 4


def prefill_chunk(device: torch.device | str) -> int:
    """The default chunk for members whose first is on ``device`` (a GPU's for any but CPU)."""
    return PREFILL_CHUNK["cpu" if torch.device(device).type == "cpu" else "cuda"]


def prefill_share(waiting: int, decoding: int) -> int:
    """Chunks of prompt a step runs with ``waiting`` rows being prefilled beside ``decoding``
    rows: one while as many rows decode as wait (each decoding row's time between tokens stays
    about a chunk's), up to ``IDLE_CHUNKS`` while few decode beside many waiting (a burst's first
    answers wait longer between tokens and the burst's prompts are done sooner: on a CPU a
    step's forwards cost a fixed part, so fewer, larger steps finish the burst sooner)."""
    if not decoding:
        return IDLE_CHUNKS
    return min(IDLE_CHUNKS, max(1, waiting // decoding))


def gate_of(row: RowState) -> float | None:
    """The row's gate where it can ever take the primary's token alone (a gate below 1, no
    grammar); None where it votes every step. The one gate predicate of the engine."""
    gate = row.opts.gate
    return gate if gate is not None and gate < 1 and row.matcher is None else None


class Batch:
    """The rows in flight: each member's backend and each row's state, index r in all."""

    def __init__(self, ens: Ensemble, chunk: int = PREFILL_CHUNK["cpu"]) -> None:
        self.ens = ens
        self.chunk = chunk
        self.members = [ens.backend(i) for i in range(len(ens.members))]
        self.rows: list[RowState] = []
        # [i][r]: the ids member i has still to take for row r (the text it has not seen), set
        # by ``step``; the primary's and ungated rows' are taken by ``forward``, the others' by
        # ``catch_up`` when the row next votes.
        self.updates: list[list[Update]] = [[] for _ in ens.members]

    def add(self, prompts: list[list[list[int]]], rows: list[RowState]) -> None:
        """Prefill newcomers (``prompts[i][r]``: member i's ids for new row r) and join them.

        A prompt longer than ``chunk`` joins with its first id; the rest is pending, and
        ``forward`` runs it ``chunk`` ids a step (chunked prefill): the row decides nothing
        until every member that votes for it holds its whole prompt (``ready``).

        The members other than the primary prefill a row that may gate lazily: its first id now,
        the rest as pending ids of its first catch-up, so a row that never votes costs them one
        id instead of its prompt (a prefill-bound request at gate 0 costs the primary alone)."""
        if not rows:
            return
        lazy = [gate_of(row) is not None for row in rows]
        calls = []
        for i, (b, ps) in enumerate(zip(self.members, prompts)):
            now = [1 if (g and i) or len(p) > self.chunk else len(p) for g, p in zip(lazy, ps)]
            calls.append(partial(b.add_rows, ps, now))
        _run_members(self.ens, calls)
        for us, b, ps in zip(self.updates, self.members, prompts):  # a store may give more
            held = [len(ids) for ids in b.ids[len(b.ids) - len(ps) :]]
            us += [(n, p[n:]) if n < len(p) else None for n, p in zip(held, ps)]
        self.rows += rows

    def keep(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (finished and cancelled rows leave)."""
        for b in self.members:
            b.keep_rows(keep)
        self.rows = [self.rows[r] for r in keep]
        self.updates = [[u[r] for r in keep] for u in self.updates]

    def cache_bytes(self) -> int:
        """Bytes of the in-process members' KV caches for the rows in flight (a remote
        member's live in its own process)."""
        return sum(b.batch.cache_bytes for b in self.members if isinstance(b, LocalMember))

    def ready(self) -> list[bool]:
        """[B] whether row r may decide: every member that votes for it holds its whole prompt
        (a row being prefilled in chunks waits; a gated row's other members may lag)."""
        return [
            self.updates[0][r] is None
            and (gate_of(row) is not None or all(us[r] is None for us in self.updates[1:]))
            for r, row in enumerate(self.rows)
        ]

    def forward(self) -> None:
        """One forward pass per member over the ids each row takes this step: the primary takes
        every row's, the others only those of rows without a gate (gated rows' wait). Rows
        being prefilled take their next chunk, at most ``chunk`` ids a member, oldest first."""
        if self.rows:
            eager = [gate_of(row) is None for row in self.rows]
            prompt = self.members[0].n_prompt
            waiting = sum(u is not None and u[0] < n for u, n in zip(self.updates[0], prompt))
            budget = self.chunk * prefill_share(waiting, len(prompt) - waiting)
            self._advance([[True] * len(eager)] + [eager] * (len(self.members) - 1), budget)

    def catch_up(self, vote: list[bool]) -> None:
        """The members other than the primary consume the pending text of the rows that vote
        (one multi-token forward each; a no-op where nothing is pending)."""
        if any(u is not None for us in self.updates[1:] for u in us):
            self._advance([[False] * len(vote)] + [vote] * (len(self.members) - 1))

    def _advance(self, take: list[list[bool]], budget: int | None = None) -> None:
        """Member i feeds row r its pending ids where ``take[i][r]``; they are then no longer
        pending. With a ``budget``, a member feeds about that many ids of pending prompts (the
        ones the chunked prefill still owes) a step, in row order, whole prompts where they
        nearly fit (``_piece``): the rest stays pending."""
        todo = [[u if t else None for u, t in zip(us, ts)] for us, ts in zip(self.updates, take)]
        rest = [[None if t else u for u, t in zip(us, ts)] for us, ts in zip(self.updates, take)]
        if budget is not None:
            for i, us in enumerate(todo):
                left = budget
                for r, u in enumerate(us):
                    if u is not None and len(u[1]) > 1 and u[0] < self.members[i].n_prompt[r]:
                        n = _piece(len(u[1]), left, budget)
                        left -= n
                        us[r] = (u[0], u[1][:n]) if n else None
                        if n < len(u[1]):
                            rest[i][r] = (u[0] + n, u[1][n:])
        _run_members(self.ens, [partial(b.advance, u) for b, u in zip(self.members, todo)])
        # Only now no longer pending: a forward that raised leaves them so, and ``held`` still
        # tells what each member should hold (an update is absolute: applying it twice is once).
        self.updates = rest
        if self.ens.check_invariants:
            _check(self.ens, self, self.rows)

    def held(self, i: int, r: int) -> list[int]:
        """Member i's ids for row r once its pending ids are taken (they spell the text)."""
        return apply_update(self.members[i].ids[r], self.updates[i][r])

    def state(self, rows: Sequence[int]) -> tuple[list[list[list[int]]], list[list[int]]]:
        """What ``restore`` takes to rebuild ``rows`` elsewhere: ``held[i][r]`` and
        ``n_prompt[i][r]``, member by member."""
        held = [[self.held(i, r) for r in rows] for i in range(len(self.members))]
        return held, [[b.n_prompt[r] for r in rows] for b in self.members]

    def restore(
        self, rows: list[RowState], held: list[list[list[int]]], n_prompt: list[list[int]]
    ) -> None:
        """Rows of another batch join this one whole: member i prefills ``held[i][r]`` (what
        it held for row r there, its pending ids taken), of which ``n_prompt[i][r]`` are the
        prompt. The engine rebuilds a batch so after a step failed."""
        _run_members(self.ens, [partial(b.add_rows, hs) for b, hs in zip(self.members, held)])
        for b, ns in zip(self.members, n_prompt):
            b.n_prompt[len(b.n_prompt) - len(ns) :] = ns
        for us in self.updates:
            us += [None] * len(rows)
        self.rows += rows

    def consistent(self, r: int) -> bool:
        """Whether every member's ids for row r, its pending ids taken, spell the row's text
        (a step that raised half-way through a row leaves it otherwise)."""
        text = bytes(self.rows[r].text.raw)
        return all(
            m.vocab.bytes_of(self.held(i, r)[b.n_prompt[r] :]) == text
            for i, (m, b) in enumerate(zip(self.ens.members, self.members))
        )


def _piece(pending: int, left: int, budget: int) -> int:
    """Ids of a prompt with ``pending`` ids still to run that a step with ``left`` of its
    ``budget`` still free runs: all of them where they fit the budget's half again (a prompt
    finished now, not cut into a second piece), else what is left where that is a quarter of
    the budget or more, else none. Each piece is a forward of its own, and on a CPU a forward
    costs a fixed part (about 100 ms for a one-row piece of the real pair's members): a budget
    cut exactly cut most prompts of a burst in two, a few of them into pieces of a few ids."""
    if left > 0 and pending <= left + budget // 2:
        return pending
    return left if 4 * left >= budget else 0


def _run_members(ens: Ensemble, calls: Sequence[Callable[[], None]]) -> None:
    """Run one call per member: in turn, or at once where members live on different devices."""
    if ens.pool is None or len(calls) == 1:
        for c in calls:
            c()
    else:  # members on different devices: forward passes overlap, a step costs the slowest
        for f in [ens.pool.submit(c) for c in calls]:
            f.result()


def _check(ens: Ensemble, batch: Batch, rows: list[RowState]) -> None:
    """Every member's ids, once its pending ids are taken, spell the row's text."""
    for i, (m, b) in enumerate(zip(ens.members, batch.members)):
        for r, row in enumerate(rows):
            if row.finish_reason is not None:
                continue
            held = m.vocab.bytes_of(batch.held(i, r)[b.n_prompt[r] :])
            if held != bytes(row.text.raw):
                raise AssertionError(
                    f"member {m.name!r} row {r}: ids spell {held!r}, text is {bytes(row.text.raw)!r}"
                )
