"""How an evaluation runs: ``evaluate``'s keywords other than the members, validated once.

``evaluate`` takes them as keywords (its documented signature); inside, one :class:`EvalOptions`
goes to the helpers that run the data sets and write the report, and to
:func:`~.resume.eval_settings`, which records the ones the answers depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import ConfigError

__all__ = ["EvalOptions", "Mode"]

Mode = Literal["free", "constrained", "both"]


@dataclass(frozen=True)
class EvalOptions:
    """Each field is the ``evaluate`` keyword of the same name (see its docstring)."""

    split: str
    limit: int | None
    seed: int
    shots: int | None
    chat: bool
    batch_size: int
    members_alone: bool
    ensemble: bool
    progress: bool
    keep_records: bool
    mode: Mode
    data_dir: str | Path | None
    gate: float | None
    json_path: str | Path | None
    resume: bool
    checkpoint_every: int

    def __post_init__(self) -> None:
        if self.mode not in ("free", "constrained", "both"):
            raise ConfigError(f"mode must be 'free', 'constrained' or 'both', got {self.mode!r}")
        if self.resume and self.json_path is None:
            raise ConfigError("resume needs the report's path (--json PATH) to resume from")
        every = self.checkpoint_every
        if isinstance(every, bool) or not isinstance(every, int):
            raise ConfigError(f"checkpoint_every must be an int >= 0, got {every!r}")
        if every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {every}")
