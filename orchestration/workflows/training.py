"""CheckpointedTrainingWorkflow: the durable owner of one training run.

It owns the config, the dataset snapshot and the checkpoint ledger. The ledger is fed by signals from the training
activity and read by queries. Attempts are the workflow's to retry (`orchestration.attempts`): each one starts
from the newest checkpoint that still exists, or reattaches to the Ray job the last one left running; attempts that
committed a checkpoint cost nothing, and only failures in a row without progress count against the run. The
workflow alone stops a run's Ray jobs, when the run is cancelled or fails for good. Past `history_limit` events it
continues as new with the run so far (`RunCarry`), handing the live Ray job to the next execution: a run of weeks
at a checkpoint a minute stays within Temporal's history limits.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from orchestration.activities.heartbeat import HEARTBEAT_TIMEOUT
    from orchestration.attempts import after_failure
    from orchestration.errors import INVALID_INPUT, root_message
    from orchestration.ledger import mark_deleted, newest, record
    from orchestration.types import (
        AttemptFailure,
        AttemptStarted,
        CheckpointInfo,
        DatasetSnapshot,
        Progress,
        RetryState,
        RunCarry,
        RunReport,
        RunState,
        RunStatus,
        SnapshotRequest,
        TrainAttemptInput,
        TrainAttemptResult,
        TrainingRequest,
        TrainingResult,
        control_queue,
    )
    from ray_jobs.retention import best
    from ray_jobs.specs import TrainConfig

REPORT_DESPITE_STOP = "report-despite-stop"  # the patch after which a failed stop no longer skips the report
SNAPSHOT_TIMEOUT = timedelta(minutes=30)
TRAINING_TIMEOUT = timedelta(days=30)
STOP_JOBS = {
    "start_to_close_timeout": timedelta(minutes=3),
    "schedule_to_close_timeout": timedelta(hours=2),
    "heartbeat_timeout": timedelta(minutes=1),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1)),
}


@workflow.defn
class CheckpointedTrainingWorkflow:
    @workflow.init
    def __init__(self, req: TrainingRequest) -> None:
        self.req = req
        carried = req.carried
        self.snapshot: DatasetSnapshot | None = carried.snapshot if carried else None
        self.state: RunState = "training" if self.snapshot else "snapshotting"
        self.checkpoints: list[CheckpointInfo] = (
            carried.checkpoints if carried else req.ledger or ([req.resume_from] if req.resume_from else [])
        )
        self.attempts: list[AttemptStarted] = carried.attempts if carried else []
        self.retry = carried.retry if carried else RetryState()
        self.earlier_deleted = carried.earlier_deleted_checkpoints if carried else 0
        self.generation = carried.generation if carried else 0
        self.started_at = carried.started_at if carried else workflow.now()
        self.start_step = req.resume_from.step if req.resume_from else 0
        self.last_progress: Progress | None = None
        self.retry_at: datetime | None = None

    @workflow.run
    async def run(self, req: TrainingRequest) -> TrainingResult:
        opts = req.options
        try:
            if self.snapshot is None:
                self.snapshot = await workflow.execute_activity(
                    "create_snapshot",
                    SnapshotRequest(run_id=req.run_id, config=req.config, storage_uri=opts.storage_uri),
                    result_type=DatasetSnapshot,
                    task_queue=opts.training_queue,
                    start_to_close_timeout=SNAPSHOT_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=[INVALID_INPUT]),
                )
                self.state = "training"
            attempt = await self._train_until_done()
        except (ActivityError, ApplicationError, asyncio.CancelledError) as exc:
            self.state = "cancelled" if is_cancelled_exception(exc) else "failed"
            try:
                await self._stop_jobs()
            except ActivityError as stop_failed:  # Ray unreachable for hours: the sweep must still hear of the end
                if not workflow.patched(REPORT_DESPITE_STOP):
                    raise
                workflow.logger.error("run %s: its Ray jobs were not stopped: %s", req.run_id, stop_failed)
            await self._report(RunReport(workflow_id=workflow.info().workflow_id, error=root_message(exc)))
            raise
        record(self.checkpoints, attempt.final_checkpoint)
        self.state = "completed"
        await workflow.wait_condition(workflow.all_handlers_finished)
        result = self._result(attempt)
        await self._report(RunReport(workflow_id=workflow.info().workflow_id, result=result))
        return result

    async def _report(self, report: RunReport) -> None:
        """Tell `report_to` (a sweep, which may have continued as new since it started this run) how the run ended.
        A closed sweep has nobody to tell: the run ends as it would have."""
        if self.req.report_to is None:
            return
        try:
            await workflow.get_external_workflow_handle(self.req.report_to).signal("run_finished", report)
        except Exception as exc:  # the signal cannot be delivered: the report is a courtesy, not the run's outcome
            workflow.logger.warning("could not report to %s: %s", self.req.report_to, exc)

    def _result(self, attempt: TrainAttemptResult) -> TrainingResult:
        assert self.snapshot is not None
        return TrainingResult(
            run_id=self.req.run_id,
            snapshot_id=self.snapshot.snapshot_id,
            steps=attempt.total_steps,
            final_checkpoint=attempt.final_checkpoint,
            metrics=attempt.final_checkpoint.metrics,
            checkpoints=len(self.checkpoints) + self.earlier_deleted,
            resumes=self.resumes,
            steps_recomputed=sum(a.steps_recomputed for a in self.attempts),
            time_lost_s=sum(a.time_lost_s for a in self.attempts),
            wall_time_s=(workflow.now() - self.started_at).total_seconds(),
            best_checkpoint=self._best(),
        )

    async def _train_until_done(self) -> TrainAttemptResult:
        opts = self.req.options
        while True:
            attempt = workflow.start_activity(
                "train",
                self._attempt_input(),
                result_type=TrainAttemptResult,
                task_queue=opts.training_queue,
                start_to_close_timeout=TRAINING_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=opts.heartbeat_timeout_s),
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                retry_policy=RetryPolicy(maximum_attempts=1),  # retries are this workflow's decision, see below
            )
            try:
                await workflow.wait_condition(lambda a=attempt: a.done() or self._history_is_long())
            except asyncio.CancelledError:
                attempt.cancel()  # the attempt lets go of its job; `run` stops the run's jobs
                await workflow.wait([attempt])
                raise
            if not attempt.done():
                # hand the live Ray job to a fresh execution: this attempt sees its workflow run close (not a
                # cancel) and leaves the job alone; the next execution's first attempt reattaches to it
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._carry())
            try:
                return await attempt
            except ActivityError as err:
                failure = self._attempt_failure(err)
            verdict = after_failure(self.retry, failure, self.start_step, opts.max_failures_without_progress)
            if verdict.give_up is not None:
                raise ApplicationError(verdict.give_up, type="TrainingFailed", non_retryable=True)
            self.state, self.retry_at = "retrying", workflow.now() + timedelta(seconds=verdict.backoff_s)
            await workflow.sleep(verdict.backoff_s)
            self.state, self.retry_at = "training", None

    def _attempt_input(self) -> TrainAttemptInput:
        assert self.snapshot is not None
        return TrainAttemptInput(
            run_id=self.req.run_id,
            config=self.req.config,
            snapshot=self.snapshot,
            options=self.req.options,
            checkpoints=[c for c in self.checkpoints if not c.deleted],
            stop_at_step=self.req.stop_at_step,
            park_s=self.req.park_s,
            reattach_job_id=self.attempts[-1].ray_job_id if self.attempts else None,
            warm_job_id=None if self.attempts else self.req.warm_job_id,
            previous=self.last_progress,
            attempt=len(self.attempts) + 1,
            incarnation=workflow.info().first_execution_run_id,
            sweep_id=self.req.report_to,
        )

    def _attempt_failure(self, err: ActivityError) -> AttemptFailure:
        """The failed attempt as the retry rule sees it; errors a rerun would repeat fail the run here and now."""
        cause = err.cause
        latest = newest(*self.checkpoints)
        step = latest.step if latest else 0
        if isinstance(cause, ApplicationError):
            if cause.non_retryable:  # the run fails with the job's own words, not a chain of wrappers
                raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None
            details = list(cause.details)
            self.last_progress = Progress.model_validate(details[0]) if details else self.last_progress
            flags = details[1] if len(details) > 1 and isinstance(details[1], dict) else {}
            return AttemptFailure(
                kind=cause.type or "ApplicationError",
                message=cause.message,
                checkpoint_step=step,
                from_training_code=bool(flags.get("from_training_code")),
            )
        if isinstance(cause, TimeoutError):
            details = list(cause.last_heartbeat_details)
            self.last_progress = Progress.model_validate(details[0]) if details else self.last_progress
            what = cause.type.name.lower() if cause.type else "activity"
            message = f"the training worker stopped answering ({what} timeout): it was lost or stopped"
            return AttemptFailure(kind="Timeout", message=message, checkpoint_step=step)
        return AttemptFailure(kind=type(cause).__name__, message=str(cause) or str(err), checkpoint_step=step)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > self.req.options.history_limit

    def _carry(self) -> TrainingRequest:
        kept = [c for c in self.checkpoints if not c.deleted]
        carried = RunCarry(
            snapshot=self.snapshot,
            checkpoints=kept,
            attempts=self.attempts,
            retry=self.retry,
            started_at=self.started_at,
            earlier_deleted_checkpoints=self.earlier_deleted + len(self.checkpoints) - len(kept),
            generation=self.generation + 1,
        )
        return self.req.model_copy(update={"carried": carried})

    async def _stop_jobs(self) -> None:
        """No Ray job outlives a cancelled or failed run, also when no attempt was running to stop it; that includes a
        job the run took over from the segment before it (a warm promotion), which that segment's run submitted."""
        warm = self.req.warm_job_id  # also when the cancel came before its attempt said it took it over
        await workflow.execute_activity(  # workers of before warm promotions take two arguments
            "stop_run_jobs",
            args=[self.req.run_id, workflow.info().first_execution_run_id, *([[warm]] if warm else [])],
            task_queue=control_queue(self.req.options.training_queue),
            **STOP_JOBS,
        )

    @property
    def resumes(self) -> int:
        """Every attempt after the first picked the run up again, by reattaching or from a checkpoint."""
        return max(0, len(self.attempts) - 1)

    @workflow.signal
    def checkpoint_committed(self, info: CheckpointInfo) -> None:
        record(self.checkpoints, info)

    @workflow.signal
    def checkpoints_deleted(self, steps: list[int]) -> None:
        mark_deleted(self.checkpoints, steps)

    @workflow.signal
    def attempt_started(self, attempt: AttemptStarted) -> None:
        self.attempts.append(attempt)

    @workflow.signal
    def attempt_stalled(self, ray_job_id: str) -> None:
        """Sent before the watchdog stops a hung job; delivered only to the attempt's own execution, so an attempt
        left behind by continue-as-new finds out it is stale instead of stopping the job its successor follows."""
        workflow.logger.warning("Ray job %s made no progress: the attempt stops it", ray_job_id)

    @workflow.query
    def config(self) -> TrainConfig:
        return self.req.config

    @workflow.query
    def ledger(self) -> list[CheckpointInfo]:
        return self.checkpoints

    def _best(self) -> CheckpointInfo | None:
        cfg = self.req.config
        return best([c for c in self.checkpoints if not c.deleted], cfg.best_metric, cfg.best_mode)

    @workflow.query
    def status(self) -> RunStatus:
        latest = newest(*self.checkpoints)
        last = self.retry.last
        return RunStatus(
            run_id=self.req.run_id,
            state=self.state,
            step=latest.step if latest else 0,
            total_steps=int(latest.metrics["total_steps"]) if latest and "total_steps" in latest.metrics else None,
            latest_checkpoint=latest,
            best_checkpoint=self._best(),
            best_metric=self.req.config.best_metric,
            best_mode=self.req.config.best_mode,
            kind=self.req.config.kind,
            checkpoints=self.checkpoints,
            resumes=self.resumes,
            ray_job_id=self.attempts[-1].ray_job_id if self.attempts else None,
            snapshot_id=self.snapshot.snapshot_id if self.snapshot else None,
            snapshot_uri=self.snapshot.uri if self.snapshot else None,
            attempts=self.attempts,
            last_failure=f"{last.kind}: {last.message}" if last else None,
            failures_without_progress=self.retry.failures_without_progress,
            retry_at=self.retry_at,
            earlier_deleted_checkpoints=self.earlier_deleted,
            generation=self.generation,
        )
