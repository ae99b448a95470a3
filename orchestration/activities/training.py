"""The training activity: one attempt at driving a run's Ray job to completion.

An attempt starts from the newest checkpoint it can learn of (its own last heartbeat, the workflow's ledger, its
input), reattaches to the run's Ray job if one is still alive, or submits a new one that resumes from that
checkpoint. While the job runs it mirrors every checkpoint Ray commits into a CheckpointInfo signal, heartbeats
progress, stops the job when cancelled, and fails (retryably) when the step stops advancing.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timezone

import ray.train
from ray.job_submission import JobStatus
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from orchestration.errors import invalid
from orchestration.ledger import newest
from orchestration.ray_submission import RaySubmission
from orchestration.settings import Settings
from orchestration.types import AttemptStarted, CheckpointInfo, Progress, TrainAttemptInput, TrainAttemptResult
from ray_jobs import checkpointing, storage
from ray_jobs.specs import NONRETRYABLE_MARKER, PROGRESS_FILE, JobSpec

JOB_MODULES = {"text": "ray_jobs.text_job", "image": "ray_jobs.image_job"}  # by config kind
FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "TTRAIN_RAY_MAX_FAILURES")
LEDGER_QUERY_TIMEOUT_S = 5.0
SIGNAL_RETRY_S = 300.0


def runs_root(storage_uri: str) -> str:
    return storage.join(storage_uri, "runs")


def committed_checkpoints(run_uri: str, run_id: str, after_step: int) -> list[CheckpointInfo]:
    """Checkpoints Ray Train has committed (its checkpoint manager snapshot), newer than `after_step`."""
    try:
        result = ray.train.Result.from_path(run_uri)
    except RuntimeError:  # the job has not committed anything yet
        return []
    found = []
    for checkpoint, metrics in result.best_checkpoints:
        if int(metrics.get("step", -1)) <= after_step:
            continue
        uri = storage.join(run_uri, os.path.basename(checkpoint.path))
        state = storage.read_json(storage.join(uri, checkpointing.STATE_FILE))
        found.append(
            CheckpointInfo(
                run_id=run_id,
                step=int(state["step"]),
                epoch=float(state["epoch"]),
                uri=uri,
                metrics={k: float(v) for k, v in state.items() if isinstance(v, int | float) and k != "created_at"},
                content_hash=state["content_hash"],
                created_at=datetime.fromtimestamp(state["created_at"], tz=timezone.utc),
                ray_job_id=state["ray_job_id"],
            )
        )
    return sorted(found, key=lambda c: c.step)


def submit_job(ray: RaySubmission, spec: JobSpec, storage_uri: str, python: str) -> None:
    """Write the spec next to the run's storage and submit `python -m <the kind's job module> --spec URI`; the one
    way a ttrain job reaches Ray (the activity, and the benches and tests that run the same job without Temporal)."""
    spec_uri = storage.join(storage_uri, "jobs", f"{spec.ray_job_id}.json")
    storage.write_json(spec_uri, spec.model_dump(mode="json"))
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    ray.submit(spec.ray_job_id, spec.run_id, JOB_MODULES[spec.config.kind], spec_uri, python, env)


class TrainingActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ray = RaySubmission(settings.ray_address)

    @activity.defn
    async def train(self, inp: TrainAttemptInput) -> TrainAttemptResult:
        info = activity.info()
        previous = Progress.model_validate(info.heartbeat_details[0]) if info.heartbeat_details else None
        resume = newest(inp.resume_from, previous and previous.latest_checkpoint, await self._ledger_newest())
        run_uri = storage.join(runs_root(inp.options.storage_uri), inp.run_id)

        job_id = await asyncio.to_thread(self.ray.find_live, inp.run_id, previous and previous.ray_job_id)
        reattached = job_id is not None
        if job_id is None:
            # unique per workflow execution, attempt and activity, and still led by the run id: a rerun of the same
            # run id, or the next rung of a sweep trial, never mistakes an old job for its own
            job_id = f"{info.workflow_id}--{info.workflow_run_id[-8:]}-{info.activity_id}-{info.attempt}"
            await asyncio.to_thread(self._submit, inp, job_id, resume)
        resume_step = resume.step if resume else 0
        lost_steps = 0 if reattached or previous is None else max(0, previous.step - resume_step)
        downtime = 0.0 if reattached or previous is None else max(0.0, time.time() - previous.updated_at)
        await self._signal(
            "attempt_started",
            AttemptStarted(
                ray_job_id=job_id,
                attempt=info.attempt,
                reattached=reattached,
                resumed_from_step=resume_step,
                steps_recomputed=lost_steps,
                time_lost_s=downtime,
            ),
        )
        progress = Progress(ray_job_id=job_id, step=resume_step, latest_checkpoint=resume, updated_at=time.time())
        activity.heartbeat(progress)
        try:
            return await self._follow(inp, job_id, run_uri, progress)
        except asyncio.CancelledError:
            await asyncio.to_thread(self.ray.stop, job_id)  # cancelled workflow: leave no GPU job behind
            raise

    async def _follow(
        self, inp: TrainAttemptInput, job_id: str, run_uri: str, progress: Progress
    ) -> TrainAttemptResult:
        opts = inp.options
        last_advance = time.monotonic()
        while True:
            status = await asyncio.to_thread(self.ray.status, job_id)
            last_step = progress.step
            await self._mirror_checkpoints(inp, run_uri, progress)
            live = await asyncio.to_thread(_read_progress, run_uri, job_id)
            if live is not None and live["step"] > progress.step:
                progress.step, progress.total_steps, progress.loss = live["step"], live["total_steps"], live["loss"]
            progress.job_status = status.value if status else None
            if progress.step > last_step or status != JobStatus.RUNNING:
                last_advance = time.monotonic()  # a pending job is waiting for resources, not hung
                progress.updated_at = time.time()
            activity.heartbeat(progress)
            if status is None:
                raise ApplicationError(f"Ray job {job_id} disappeared from the cluster")
            if status.is_terminal():
                return await self._finish(inp, job_id, status, progress)
            if time.monotonic() - last_advance > opts.stall_timeout_s:
                await asyncio.to_thread(self.ray.stop, job_id)
                raise ApplicationError(
                    f"Ray job {job_id} made no progress past step {progress.step} in {opts.stall_timeout_s:.0f}s; "
                    "stopped it, the retry resumes from the ledger",
                    type="TrainingStalled",
                )
            await asyncio.sleep(opts.poll_interval_s)

    async def _finish(
        self, inp: TrainAttemptInput, job_id: str, status: JobStatus, progress: Progress
    ) -> TrainAttemptResult:
        if status == JobStatus.SUCCEEDED:
            final = progress.latest_checkpoint
            total = final.metrics.get("total_steps") if final else None
            target = min(inp.stop_at_step, total) if inp.stop_at_step and total else total
            if final is None or final.step != target:
                raise ApplicationError(f"Ray job {job_id} succeeded but its final checkpoint is not committed")
            return TrainAttemptResult(final_checkpoint=final, total_steps=final.step, ray_job_id=job_id)
        logs = await asyncio.to_thread(self.ray.logs_tail, job_id)
        if NONRETRYABLE_MARKER in logs:
            reason = logs[logs.index(NONRETRYABLE_MARKER) + len(NONRETRYABLE_MARKER) + 1 :].strip().splitlines()[0]
            raise invalid(f"Ray job {job_id} failed and would fail again: {reason}")
        last_line = logs.strip().splitlines()[-1] if logs.strip() else "no logs"
        raise ApplicationError(f"Ray job {job_id} ended {status.value}: {last_line}", type="RayJobFailed")

    async def _mirror_checkpoints(self, inp: TrainAttemptInput, run_uri: str, progress: Progress) -> None:
        after = progress.latest_checkpoint.step if progress.latest_checkpoint else -1
        for info in await asyncio.to_thread(committed_checkpoints, run_uri, inp.run_id, after):
            await self._signal("checkpoint_committed", info)
            progress.latest_checkpoint = info
            progress.step = max(progress.step, info.step)

    def _submit(self, inp: TrainAttemptInput, job_id: str, resume: CheckpointInfo | None) -> None:
        spec = JobSpec(
            run_id=inp.run_id,
            ray_job_id=job_id,
            config=inp.config,
            snapshot_uri=inp.snapshot.uri,
            storage_path=runs_root(inp.options.storage_uri),
            resume_from_uri=resume.uri if resume else None,
            resume_from_step=resume.step if resume else 0,
            stop_at_step=inp.stop_at_step,
        )
        submit_job(self.ray, spec, inp.options.storage_uri, self.settings.ray_python)

    async def _signal(self, name: str, payload) -> None:
        """Retried while Temporal is unreachable (a server restart): a lost signal would be a lost ledger entry."""
        handle = activity.client().get_workflow_handle(activity.info().workflow_id)
        deadline = time.monotonic() + SIGNAL_RETRY_S
        while True:
            try:
                await handle.signal(name, payload)
                return
            except RPCError as exc:
                if time.monotonic() > deadline or exc.status not in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.UNKNOWN):
                    raise
                await asyncio.sleep(1.0)

    async def _ledger_newest(self) -> CheckpointInfo | None:
        """The workflow's ledger can be ahead of our last heartbeat (heartbeats are throttled, signals are not)."""
        handle = activity.client().get_workflow_handle(activity.info().workflow_id)
        try:
            ledger = await asyncio.wait_for(handle.query("ledger"), LEDGER_QUERY_TIMEOUT_S)
        except Exception as exc:  # no orchestration worker right now: heartbeat and input still stand
            activity.logger.warning("ledger query failed, resuming from heartbeat/input: %s", exc)
            return None
        return newest(*(CheckpointInfo.model_validate(c) for c in ledger))


def _read_progress(run_uri: str, job_id: str) -> dict | None:
    try:
        live = storage.read_json(storage.join(run_uri, PROGRESS_FILE))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return live if live.get("ray_job_id") == job_id else None
