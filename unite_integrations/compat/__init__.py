"""The "determine" half of Determine-Then-Ensemble: should these models be ensembled, and how?

``check_compatibility`` measures what the paper found matters (the performance gap to the best
member, response length ratio) and reports vocabulary facts, with a verdict per pair and overall
and a recommended member set, primary and weights. ``evaluate`` (``unite eval``) scores each member
alone and the ensemble on the paper's data sets.
"""

from .check import check_compatibility
from .datasets import load_task
from .evaluate import evaluate, member_engines
from .report import (
    CompatibilityReport,
    MemberReport,
    PairReport,
    Recommendation,
    Thresholds,
    Verdict,
    VocabularyFacts,
)
from .results import DatasetResult, EvalReport, SystemResult
from .tasks import CalibrationExample, Task, custom_task

__all__ = [
    "CalibrationExample",
    "CompatibilityReport",
    "DatasetResult",
    "EvalReport",
    "MemberReport",
    "PairReport",
    "Recommendation",
    "SystemResult",
    "Task",
    "Thresholds",
    "Verdict",
    "VocabularyFacts",
    "check_compatibility",
    "custom_task",
    "evaluate",
    "load_task",
    "member_engines",
]
