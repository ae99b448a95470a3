"""A sweep's trials and their rung results, kept as columns (`TrialTable`).

Every continue-as-new hands the whole table to the next execution, which must load it within the SDK's 2 s limit on
a workflow task (past it the task fails and is retried, forever). A list of models costs Python objects per field
to validate: 1.8 s at 38,500 trials here. Columns of plain values load 100,000 trials in about 0.2 s, and a `Trial`
is built only for what leaves the workflow: a segment's input, a leaderboard page.
"""

from __future__ import annotations

import bisect
import heapq
from datetime import datetime, timezone
from typing import Literal

from pydantic import Field, PrivateAttr

from orchestration.types import CheckpointInfo, Model
from ray_jobs.specs import Identifier

TrialState = Literal["running", "waiting", "completed", "failed"]

# Results a TPE proposal carries at most: its cost stays flat however long the sweep. Optuna's TPE splits the
# history into a "good" set of at most 25 (gamma) and the rest, weighting older trials down: the 25 best and the
# newest others keep what it looks at.
TPE_HISTORY = 1_000
TPE_GOOD = 25


class RungResult(Model):
    rung: int
    steps: int
    score: float
    checkpoint: CheckpointInfo | None = None
    steps_spent: int = 0  # the sweep's completed training steps when this result came in
    started_at: datetime | None = None  # when the segment that produced it started, and when its result came in
    finished_at: datetime | None = None


class Trial(Model):
    index: int
    run_id: Identifier
    params: dict
    rung: int = 0  # the rung this trial is training towards or has reached
    state: TrialState = "running"
    results: list[RungResult] = Field(default_factory=list)
    error: str | None = None
    note: str | None = Field(default=None, description="how its parameters came about, when not as the strategy says")

    @property
    def latest(self) -> RungResult | None:
        return self.results[-1] if self.results else None


def _stamp(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def _at(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc)


class TrialTable(Model):
    """Trials by index, and their results in the order they came in (which the lenient ladder rule depends on)."""

    run_id: list[str] = Field(default_factory=list)
    params: list[dict] = Field(default_factory=list)
    rung: list[int] = Field(default_factory=list)
    state: list[TrialState] = Field(default_factory=list)
    error: dict[int, str] = Field(default_factory=dict)
    note: dict[int, str] = Field(default_factory=dict)
    # one entry per result
    result_trial: list[int] = Field(default_factory=list)
    result_rung: list[int] = Field(default_factory=list)
    result_steps: list[int] = Field(default_factory=list)
    result_score: list[float] = Field(default_factory=list)
    result_spent: list[int] = Field(default_factory=list)
    result_started: list[float | None] = Field(default_factory=list, description="POSIX seconds")
    result_finished: list[float | None] = Field(default_factory=list)
    result_climbs: list[bool] = Field(
        default_factory=list, description="the ladder's rule let it climb when it came in; empty: not recorded"
    )
    checkpoint: dict[int, CheckpointInfo] = Field(default_factory=dict, description="by result position")
    # trial → its latest result's position, result → the same trial's result before it (-1: none). Flat lists of
    # ints: a list per trial made the garbage collector walk 100,000 more containers at every load.
    _last: list[int] = PrivateAttr(default_factory=list)
    _before: list[int] = PrivateAttr(default_factory=list)
    # What a TPE proposal learns from, kept as results come in so a proposal never scans the sweep: trials with a
    # first result in index order, and the TPE_GOOD best first scores per mode as (signed score, trial), best first.
    _scored: list[int] = PrivateAttr(default_factory=list)
    _good: dict[str, list[tuple[float, int]]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        last, before, first = [-1] * len(self.run_id), [-1] * len(self.result_trial), {}
        for position, trial in enumerate(self.result_trial):
            before[position], last[trial] = last[trial], position
            first.setdefault(trial, position)
        self._last, self._before, self._scored = last, before, sorted(first)
        score = self.result_score
        self._good = {
            mode: heapq.nsmallest(TPE_GOOD, ((sign * score[p], t) for t, p in first.items()))
            for mode, sign in (("max", -1.0), ("min", 1.0))
        }

    @classmethod
    def of(cls, trials: list[Trial]) -> TrialTable:
        """From trial records (a sweep saved before the table): results in the order they came in."""
        table = cls()
        for t in trials:
            table.add(t.run_id, t.params, t.note)
            table.rung[-1], table.state[-1] = t.rung, t.state
            if t.error is not None:
                table.error[t.index] = t.error
        arrived = sorted(((t.index, r) for t in trials for r in t.results), key=lambda a: a[1].steps_spent)
        for index, result in arrived:
            table.record(index, result)
        table.result_climbs.clear()
        return table

    def __len__(self) -> int:
        return len(self.run_id)

    def add(self, run_id: str, params: dict, note: str | None = None) -> int:
        self.run_id.append(run_id)
        self.params.append(params)
        self.rung.append(0)
        self.state.append("running")
        self._last.append(-1)
        if note is not None:
            self.note[len(self) - 1] = note
        return len(self) - 1

    def record(self, index: int, result: RungResult, climbs: bool = True) -> None:
        position = len(self.result_trial)
        self.result_trial.append(index)
        self.result_rung.append(result.rung)
        self.result_steps.append(result.steps)
        self.result_score.append(result.score)
        self.result_spent.append(result.steps_spent)
        self.result_started.append(_stamp(result.started_at))
        self.result_finished.append(_stamp(result.finished_at))
        self.result_climbs.append(climbs)
        if result.checkpoint is not None:
            self.checkpoint[position] = result.checkpoint
        if self._last[index] < 0:  # the trial's first result
            bisect.insort(self._scored, index)
            for mode, sign in (("max", -1.0), ("min", 1.0)):
                good = self._good[mode]
                bisect.insort(good, (sign * result.score, index))
                del good[TPE_GOOD:]
        self._before.append(self._last[index])
        self._last[index] = position

    def fail(self, index: int, error: str | None) -> None:
        self.state[index] = "failed"
        if error is not None:
            self.error[index] = error

    def positions(self, index: int) -> list[int]:
        """Where the trial's results are, oldest first."""
        found, position = [], self._last[index]
        while position >= 0:
            found.append(position)
            position = self._before[position]
        return found[::-1]

    def result(self, position: int) -> RungResult:
        return RungResult(
            rung=self.result_rung[position],
            steps=self.result_steps[position],
            score=self.result_score[position],
            checkpoint=self.checkpoint.get(position),
            steps_spent=self.result_spent[position],
            started_at=_at(self.result_started[position]),
            finished_at=_at(self.result_finished[position]),
        )

    def latest(self, index: int) -> RungResult | None:
        position = self._last[index]
        return self.result(position) if position >= 0 else None

    def trial(self, index: int) -> Trial:
        return Trial(
            index=index,
            run_id=self.run_id[index],
            params=self.params[index],
            rung=self.rung[index],
            state=self.state[index],
            results=[self.result(p) for p in self.positions(index)],
            error=self.error.get(index),
            note=self.note.get(index),
        )

    def trials(self) -> list[Trial]:
        return [self.trial(i) for i in range(len(self))]

    def ranked(self, mode: str) -> list[int]:
        """Trials with a result, best first: highest rung reached, then its score, then the lower index."""
        sign = -1.0 if mode == "max" else 1.0
        rung, score = self.result_rung, self.result_score
        last = [(i, p) for i, p in enumerate(self._last) if p >= 0]
        last.sort(key=lambda a: (-rung[a[1]], sign * score[a[1]], a[0]))
        return [i for i, _ in last]

    def unscored(self) -> list[int]:
        return [i for i, p in enumerate(self._last) if p < 0]

    def tpe_history(self, mode: str, limit: int = TPE_HISTORY) -> list[tuple[dict, float]]:
        """(params, first score) of the trials a proposal learns from, in trial order: all of them up to `limit`,
        past it the TPE_GOOD best and the newest others. Read from what `record` keeps: never a scan of the sweep."""
        keep: set[int] | list[int] = self._scored
        if len(self._scored) > limit:
            keep = {trial for _, trial in self._good[mode]}
            for trial in reversed(self._scored):
                if len(keep) >= limit:
                    break
                keep.add(trial)
            keep = sorted(keep)
        return [(self.params[t], self.result_score[self.positions(t)[0]]) for t in keep]


def gc_candidates(table: TrialTable, top_rung: int, best: int | None) -> list[str]:
    """Keep-best: runs that can never train again and lost. A trial still waiting at a lower rung keeps its
    checkpoints, because extending the sweep may promote it and it must resume from its rung checkpoint."""
    return [
        table.run_id[i]
        for i in range(len(table))
        if i != best and (table.state[i] == "failed" or (table.rung[i] == top_rung and table.positions(i)))
    ]
