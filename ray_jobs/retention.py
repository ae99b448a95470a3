"""Which checkpoints a run keeps: the newest `keep_last`, and the best by the config's `best_metric`.

One rule, applied in two places: a Ray job prunes its own checkpoints by it as it commits them (`job_runner.prune`), so a
job that trains on while no training worker follows it never fills the disk; the training activity applies it
across the run's jobs and tells the ledger (`orchestration.activities.training`). The newest checkpoint is always
kept (a resume needs it), and a job keeps every checkpoint the run-wide rule keeps: the run's newest are the running
job's newest, and the run's best, if this job committed it, beats everything else this job committed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol, TypeVar


class Scored(Protocol):
    """A ledger entry (`CheckpointInfo`) or a job's commit record (`CommittedCheckpoint`)."""

    @property
    def step(self) -> int: ...

    @property
    def metrics(self) -> Mapping[str, float]: ...


C = TypeVar("C", bound=Scored)


def best(checkpoints: Iterable[C], metric: str | None, mode: Literal["min", "max"]) -> C | None:
    """The checkpoint with the best finite `metric`; of equals, the earliest (the run reached it first)."""
    if metric is None:
        return None
    sign = 1.0 if mode == "min" else -1.0
    scored = [c for c in checkpoints if math.isfinite(c.metrics.get(metric, math.nan))]
    return min(scored, key=lambda c: (sign * c.metrics[metric], c.step), default=None)


def kept_steps(
    checkpoints: Iterable[Scored], keep_last: int, metric: str | None, mode: Literal["min", "max"]
) -> set[int]:
    ordered = sorted(checkpoints, key=lambda c: c.step)
    kept = {c.step for c in ordered[-keep_last:]}
    if (top := best(ordered, metric, mode)) is not None:
        kept.add(top.step)
    return kept
