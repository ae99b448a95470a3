"""CoordinatorWorkflow: many experiments in parallel, each a child training run followed by its own evaluation.

At most `max_concurrency` trainings run at once; an evaluation starts as soon as its own training ends (no barrier
across experiments). A failed experiment keeps its row with the error while the others finish. Identical
experiments (same snapshot, same config) train once: later ones, here or in a later coordinator, reuse the run.
Cancelling the coordinator cancels its children, and they stop their Ray jobs before they close.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError
from temporalio.workflow import ChildWorkflowCancellationType, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from orchestration.activities.heartbeat import HEARTBEAT_TIMEOUT
    from orchestration.errors import INVALID_INPUT, root_message
    from orchestration.experiments import config_diffs, run_cache_key
    from orchestration.types import (
        CoordinatorRequest,
        CoordinatorResult,
        DatasetSnapshot,
        EvaluationRequest,
        EvaluationResult,
        Experiment,
        ExperimentRow,
        RunCacheEntry,
        RunCacheLookup,
        RunCacheStore,
        SnapshotRequest,
        TrainingRequest,
        TrainingResult,
    )
    from orchestration.workflows.inference import EvaluationWorkflow
    from orchestration.workflows.training import CheckpointedTrainingWorkflow

SHORT = {
    "start_to_close_timeout": timedelta(minutes=30),
    "retry_policy": RetryPolicy(maximum_attempts=3, non_retryable_error_types=[INVALID_INPUT]),
}
CHILD = {
    "parent_close_policy": ParentClosePolicy.REQUEST_CANCEL,
    "cancellation_type": ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
}


def scalar_metrics(report: dict) -> dict[str, float]:
    return {k: float(v) for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}


@workflow.defn
class CoordinatorWorkflow:
    @workflow.init
    def __init__(self, req: CoordinatorRequest) -> None:
        self.req = req
        diffs = config_diffs([e.config for e in req.experiments])
        self.rows = {
            e.id: ExperimentRow(experiment=e.id, run_id=f"{req.experiment_id}-{e.id}", config_diff=d)
            for e, d in zip(req.experiments, diffs, strict=True)
        }
        self.trained: dict[str, TrainingResult | None] = {}  # run-cache key → result (None: that training failed)
        self.owner: dict[str, str] = {}  # run-cache key → run id that trains it

    @workflow.run
    async def run(self, req: CoordinatorRequest) -> CoordinatorResult:
        slots = asyncio.Semaphore(req.max_concurrency)
        await asyncio.gather(*(self._experiment(e, slots) for e in req.experiments))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.results()

    async def _experiment(self, exp: Experiment, slots: asyncio.Semaphore) -> None:
        row = self.rows[exp.id]
        try:
            async with slots:
                result = await self._train(exp, row)
            if result is None:
                return
            row.train_time_s, row.resumes, row.checkpoints = result.wall_time_s, result.resumes, result.checkpoints
            row.state = "evaluating" if row.state != "cached" else row.state
            evaluation = await workflow.execute_child_workflow(
                EvaluationWorkflow.run,
                EvaluationRequest(run_id=result.run_id),
                id=f"{row.run_id}-eval",
                result_type=EvaluationResult,
                **CHILD,
            )
            row.metrics = scalar_metrics(evaluation.report)
            row.state = "cached" if row.cached_from else "completed"
        except FailureError as exc:
            row.state, row.error = "failed", root_message(exc)

    async def _train(self, exp: Experiment, row: ExperimentRow) -> TrainingResult | None:
        opts = self.req.options
        snapshot = await workflow.execute_activity(
            "create_snapshot",
            SnapshotRequest(run_id=row.run_id, config=exp.config, storage_uri=opts.storage_uri),
            result_type=DatasetSnapshot,
            task_queue=opts.training_queue,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,  # it heartbeats: a worker that died is noticed in a minute
            **SHORT,
        )
        key = run_cache_key(snapshot.snapshot_id, exp.config)
        cacheable = self.req.run_cache and exp.config.kind != "custom"  # a loop's code changes under one config
        if cacheable:
            cached = await self._cached(key)
            if cached is not None:
                row.state, row.cached_from = "cached", cached.run_id
                return cached
        self.owner[key] = row.run_id
        row.state = "training"
        try:
            result = await workflow.execute_child_workflow(
                CheckpointedTrainingWorkflow.run,
                TrainingRequest(run_id=row.run_id, config=exp.config, options=opts),
                id=row.run_id,
                result_type=TrainingResult,
                **CHILD,
            )
        except FailureError:
            self.trained[key] = None
            raise
        self.trained[key] = result
        if cacheable:
            await workflow.execute_activity(
                "remember_run",
                RunCacheStore(
                    storage_uri=opts.storage_uri, entry=RunCacheEntry(key=key, run_id=row.run_id, result=result)
                ),
                **SHORT,
            )
        return result

    async def _cached(self, key: str) -> TrainingResult | None:
        """An identical experiment trained (or training) in this coordinator, else one a past run recorded."""
        if key in self.owner:
            await workflow.wait_condition(lambda: key in self.trained)
            return self.trained[key]
        entry = await workflow.execute_activity(
            "lookup_run",
            RunCacheLookup(storage_uri=self.req.options.storage_uri, key=key),
            result_type=RunCacheEntry | None,
            **SHORT,
        )
        return entry.result if entry is not None else None

    @workflow.query
    def results(self) -> CoordinatorResult:
        sign = -1.0 if self.req.mode == "max" else 1.0
        rows = sorted(
            self.rows.values(),
            key=lambda r: (self.req.metric not in r.metrics, sign * r.metrics.get(self.req.metric, 0.0), r.experiment),
        )
        return CoordinatorResult(
            experiment_id=self.req.experiment_id, metric=self.req.metric, mode=self.req.mode, rows=rows
        )
