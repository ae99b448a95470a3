"""Sweep specs and the one SweepState that a sweep carries through its whole life (and across continue-as-new)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_serializer, model_validator
from temporalio.common import SearchAttributeKey

from orchestration.sweeps.space import SearchSpace
from orchestration.sweeps.trials import RungResult, Trial, TrialTable
from orchestration.types import Model, RunOptions
from ray_jobs.specs import ChosenId, FineTuneConfig, TrainConfig

# Registered on the local dev server by `ttrain up`; on another server register them once with
# `temporal operator search-attribute create`, or set TTRAIN_SEARCH_ATTRIBUTES=0.
BEST_SCORE = SearchAttributeKey.for_float("TtrainBestScore")
BEST_RUNG = SearchAttributeKey.for_int("TtrainBestRung")
TRIALS = SearchAttributeKey.for_int("TtrainTrials")
SEARCH_ATTRIBUTES = (BEST_SCORE, BEST_RUNG, TRIALS)
ProxyTask = Literal["reviews", "fashion-mnist"]  # the proxy trainer's tasks (`orchestration.sweeps.proxy`)
# Changed on a running sweep (updates, extend): not part of what makes a sweep file "the same sweep"
LIVE_SWEEP_SETTINGS = {"trials", "max_total_steps", "max_gpu_hours", "max_concurrency"}
# Each continue-as-new hands the whole state to the next execution, which must load it within the SDK's 2 s limit
# on a workflow task (past it the task fails and is retried, forever). The trial table (`sweeps.trials`) loads, and
# the ladder rebuilds from, 100,000 trials in about 0.5 s here (bench/RESULTS.md): the cap keeps a margin.
MAX_TRIALS = 100_000
TRIALS_MOVED = "kept in 'table' since the trial table; this release cannot read this sweep"


def check_trials(n: int) -> int:
    """Checked where trials are asked for (a sweep file, `extend`, the `add_trials` update), not on the wire model: a
    sweep already running with more must still decode its own input."""
    if n > MAX_TRIALS:
        raise ValueError(
            f"a sweep runs at most {MAX_TRIALS:,} trials (asked for {n:,}): at each continue-as-new its whole state "
            "must load within Temporal's 2 s workflow-task limit; split it into several sweeps"
        )
    return n


class LadderSpec(Model):
    min_steps: int = Field(ge=1)
    max_steps: int = Field(ge=1)
    eta: int = Field(default=3, ge=2)
    rule: Literal["strict", "lenient"] = Field(
        default="strict",
        description="strict: promote once in the top 1/eta of at least eta results; lenient: Ray Tune ASHA's rule, "
        "go on unless below the rung's 1/eta quantile when the result arrives",
    )
    promotion_wait_s: float = Field(
        default=20.0,
        ge=0.0,
        le=600.0,
        description="a real trial's job waits this long at its rung for a promotion, which then trains on in the "
        "same Ray job (a warm promotion) instead of starting a new one; 0: every promotion starts a new job",
    )

    @model_validator(mode="after")
    def _ordered(self) -> LadderSpec:
        if self.max_steps < self.min_steps:
            raise ValueError(f"ladder.max_steps {self.max_steps} must be >= ladder.min_steps {self.min_steps}")
        return self


class SweepSpec(Model):
    """What a sweep file says (read with unknown keys refused, `config_loading.validate`). `trainer: simulated`
    replaces training by an instant synthetic learning curve."""

    id: ChosenId
    strategy: Literal["random", "ladder", "tpe"] = "random"
    ladder: LadderSpec | None = None
    tpe_with_ladder: bool = False
    space: SearchSpace
    base: TrainConfig = Field(default_factory=FineTuneConfig)
    metric: str = "eval_accuracy"
    mode: Literal["max", "min"] = "max"
    trials: int = Field(default=10, ge=1)
    max_total_steps: int | None = Field(default=None, ge=1)
    max_gpu_hours: float | None = Field(
        default=None, gt=0, description="Ray Train worker-hours of finished segments (one GPU each when use_gpu)"
    )
    max_concurrency: int = Field(default=2, ge=1)
    seed: int = 0
    trainer: Literal["real", "simulated", "proxy"] = "real"
    simulated_step_ms: float = Field(
        default=0.0, ge=0.0, description="simulated trainer only: wall time per step, so segments take real time"
    )
    proxy_task: ProxyTask = Field(default="reviews", description="proxy trainer only: which task (`sweeps.proxy`)")
    history_limit: int = Field(default=4_000, ge=200, description="events per run before continue-as-new")

    @model_validator(mode="after")
    def _keys_exist(self) -> SweepSpec:
        self.space.check_keys(self.base)
        return self

    @model_validator(mode="after")
    def _ladder_needs_rungs(self) -> SweepSpec:
        if (self.strategy == "ladder" or self.tpe_with_ladder) and self.ladder is None:
            raise ValueError("a ladder sweep needs 'ladder: {min_steps, max_steps, eta}'")
        return self

    @model_validator(mode="after")
    def _flat_sweeps_need_a_budget(self) -> SweepSpec:
        if not self.uses_ladder and self.base.max_steps is None:
            raise ValueError("a sweep without a ladder trains each trial to base.max_steps: set it")
        return self

    @property
    def uses_ladder(self) -> bool:
        return self.strategy == "ladder" or (self.strategy == "tpe" and self.tpe_with_ladder)

    @property
    def max_budget(self) -> int:
        return self.ladder.max_steps if self.ladder else (self.base.max_steps or 0)


class LiveSegment(Model):
    """A segment started and not yet reported. Continue-as-new carries these: the next execution adopts them."""

    segment_id: str  # `<run id>-r<rung>`: the child workflow's id for real trials, the report's key for all
    run_id: str
    rung: int
    started_at: datetime
    reports: bool = True  # reports its end by signal (false for segments a sweep started before that existed)


class SegmentReport(Model):
    """A simulated or proxy segment's result, signalled by its activity when the execution that started it has
    continued as new (its own result then goes nowhere)."""

    segment_id: str
    result: RungResult


class SweepState(Model):
    """Everything a sweep knows. Continue-as-new carries exactly this, so no trial or decision is ever lost."""

    spec: SweepSpec
    options: RunOptions
    table: TrialTable = Field(default_factory=TrialTable)
    steps_used: int = 0  # steps granted to started segments (the budget check)
    steps_done: int = 0  # steps of finished segments
    gpu_hours: float = 0.0  # worker-hours of finished real segments
    paused: bool = False
    stopping: bool = False
    generation: int = 0
    search_attributes: bool = True
    warnings: list[str] = Field(default_factory=list, description="side jobs that failed without failing the sweep")
    live: list[LiveSegment] = Field(default_factory=list, description="segments running across continue-as-new")

    @model_validator(mode="before")
    @classmethod
    def _trial_records(cls, data: object) -> object:
        """A sweep saved before the table carried its trials as records: histories of such sweeps still replay."""
        if isinstance(data, dict) and isinstance(data.get("trials"), list) and "table" not in data:
            records = [Trial.model_validate(t) for t in data["trials"]]
            data = {**data, "table": TrialTable.of(records)}
        return data

    @model_serializer(mode="wrap")
    def _refuse_older_releases(self, handler) -> dict:
        """`trials` is written as a string: a worker of the release before the table (which tolerates unknown
        fields) fails its workflow task on it and retries until a newer worker takes it, instead of reading no
        trials and starting the sweep over (a rolling upgrade, a rollback, an older CLI extending the sweep)."""
        return {**handler(self), "trials": TRIALS_MOVED}

    @property
    def trials(self) -> list[Trial]:
        """Every trial as a record: for reading a sweep outside the workflow (the workflow uses the table)."""
        return self.table.trials()


class BoardPage(Model):
    """Which ranked trials a leaderboard query returns: a sweep of 100,000 trials does not fit one answer."""

    offset: int = Field(default=0, ge=0)
    limit: int | None = Field(default=None, ge=0, description="at most this many trials; None: all from offset")


class SweepLeaderboard(Model):
    sweep_id: str
    strategy: str
    metric: str
    mode: str
    trials_started: int
    trials_total: int
    steps_used: int
    paused: bool
    stopping: bool
    best: Trial | None
    trials: list[Trial] = Field(description="the page asked for, ranked: rung reached, then score; unscored last")
    offset: int = 0
    warnings: list[str] = Field(default_factory=list)


class TrialSegment(Model):
    """One training segment of one trial: from its last rung checkpoint up to `stop_at_step`."""

    sweep_id: str
    trial: Trial
    config: TrainConfig
    stop_at_step: int
    options: RunOptions
    segment_id: str = ""
    simulated_step_ms: float = 0.0
    proxy_task: ProxyTask = "reviews"


class TpeRequest(Model):
    space: SearchSpace
    history: list[tuple[dict, float]]
    seed: int
    index: int
    mode: str


class PlotRequest(Model):
    state: SweepState
    uri: str


class GcRequest(Model):
    run_uris: list[str]
