"""CheckpointedTrainingWorkflow: the durable owner of one fine-tuning run.

It owns the config, the dataset snapshot and the checkpoint ledger. The ledger is fed by signals from the
training activity and read by queries; every retry of the activity starts from the newest ledger entry, so a lost
worker, a killed Ray job or a hung one costs at most one checkpoint interval.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from orchestration.errors import INVALID_INPUT
    from orchestration.ledger import newest, record
    from orchestration.types import (
        AttemptStarted,
        CheckpointInfo,
        DatasetSnapshot,
        RunState,
        RunStatus,
        SnapshotRequest,
        TrainAttemptInput,
        TrainAttemptResult,
        TrainingRequest,
        TrainingResult,
    )

SNAPSHOT_TIMEOUT = timedelta(minutes=30)
TRAINING_TIMEOUT = timedelta(days=30)


@workflow.defn
class CheckpointedTrainingWorkflow:
    @workflow.init
    def __init__(self, req: TrainingRequest) -> None:
        self.req = req
        self.state: RunState = "snapshotting"
        self.snapshot: DatasetSnapshot | None = None
        self.checkpoints: list[CheckpointInfo] = [req.resume_from] if req.resume_from else []
        self.attempts: list[AttemptStarted] = []

    @workflow.run
    async def run(self, req: TrainingRequest) -> TrainingResult:
        started = workflow.now()
        opts = req.options
        try:
            self.snapshot = await workflow.execute_activity(
                "create_snapshot",
                SnapshotRequest(run_id=req.run_id, config=req.config, storage_uri=opts.storage_uri),
                result_type=DatasetSnapshot,
                task_queue=opts.training_queue,
                start_to_close_timeout=SNAPSHOT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=3, non_retryable_error_types=[INVALID_INPUT]),
            )
            self.state = "training"
            attempt = await workflow.execute_activity(
                "train",
                TrainAttemptInput(
                    run_id=req.run_id,
                    config=req.config,
                    snapshot=self.snapshot,
                    options=opts,
                    resume_from=newest(*self.checkpoints),
                    stop_at_step=req.stop_at_step,
                ),
                result_type=TrainAttemptResult,
                task_queue=opts.training_queue,
                start_to_close_timeout=TRAINING_TIMEOUT,
                heartbeat_timeout=timedelta(seconds=opts.heartbeat_timeout_s),
                # a cancelled run waits until the activity has stopped its Ray job: no GPU job outlives its run
                cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=1),
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=opts.max_attempts,
                    non_retryable_error_types=[INVALID_INPUT],
                ),
            )
        except Exception:
            self.state = "failed"
            raise
        record(self.checkpoints, attempt.final_checkpoint)
        self.state = "completed"
        await workflow.wait_condition(workflow.all_handlers_finished)
        return TrainingResult(
            run_id=req.run_id,
            snapshot_id=self.snapshot.snapshot_id,
            steps=attempt.total_steps,
            final_checkpoint=attempt.final_checkpoint,
            metrics=attempt.final_checkpoint.metrics,
            checkpoints=len(self.checkpoints),
            resumes=self.resumes,
            steps_recomputed=sum(a.steps_recomputed for a in self.attempts),
            time_lost_s=sum(a.time_lost_s for a in self.attempts),
            wall_time_s=(workflow.now() - started).total_seconds(),
        )

    @property
    def resumes(self) -> int:
        """Every attempt after the first picked the run up again, by reattaching or from a checkpoint."""
        return max(0, len(self.attempts) - 1)

    @workflow.signal
    def checkpoint_committed(self, info: CheckpointInfo) -> None:
        record(self.checkpoints, info)

    @workflow.signal
    def attempt_started(self, attempt: AttemptStarted) -> None:
        self.attempts.append(attempt)

    @workflow.query
    def ledger(self) -> list[CheckpointInfo]:
        return self.checkpoints

    @workflow.query
    def status(self) -> RunStatus:
        latest = newest(*self.checkpoints)
        return RunStatus(
            run_id=self.req.run_id,
            state=self.state,
            step=latest.step if latest else 0,
            total_steps=int(latest.metrics["total_steps"]) if latest and "total_steps" in latest.metrics else None,
            latest_checkpoint=latest,
            checkpoints=self.checkpoints,
            resumes=self.resumes,
            ray_job_id=self.attempts[-1].ray_job_id if self.attempts else None,
            snapshot_id=self.snapshot.snapshot_id if self.snapshot else None,
            snapshot_uri=self.snapshot.uri if self.snapshot else None,
            attempts=self.attempts,
        )
