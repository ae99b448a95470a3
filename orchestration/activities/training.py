"""The training activity: one attempt at driving a run's Ray job to completion; and stopping a run's jobs.

An attempt reattaches to the run's Ray job if it is still alive (the previous attempt's job, or any job tagged with
the run), or submits a new job that resumes from the newest checkpoint in the run's ledger. While the job runs it
mirrors every checkpoint Ray commits into a CheckpointInfo signal, applies `keep_last` (plus the best checkpoint)
across all the run's jobs (the ledger marks every deletion: before it happens for older jobs' checkpoints, on the
next poll for those the running job prunes itself), heartbeats progress, and fails retryably when the step stops
advancing. An unreachable Ray Jobs API or Temporal server is waited out inside the attempt, visibly (`ttrain
status` shows what is waited for, and since when), for up to `cluster_wait_s`.

A ladder segment's job that reaches its rung waits there (`park_s`) after committing the rung checkpoint: the attempt
returns the rung's result at once, and if the trial is promoted meanwhile, the next segment's first attempt hands
that job its new stop (a `Promotion`) and follows it, instead of paying for a new job and worker group.

Leaving is not stopping: a worker shutdown (a deploy), a heartbeat timeout or a stale attempt leaves the Ray job
running for the next attempt to reattach. Only the workflow stops a run's jobs (`stop_run_jobs`), when the run is
cancelled or has failed for good.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

from ray.job_submission import JobStatus
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from orchestration.client import BUSY
from orchestration.ledger import newest
from orchestration.ray_submission import LIVE, RaySubmission
from orchestration.settings import Settings
from orchestration.types import AttemptStarted, CheckpointInfo, Progress, TrainAttemptInput, TrainAttemptResult
from ray_jobs import retention, storage, tracking
from ray_jobs.outcome import (
    CommittedCheckpoint,
    Promotion,
    commit_record_uri,
    promotion_uri,
    read_commits,
    read_outcome,
    read_parked,
    read_progress,
)
from ray_jobs.specs import CustomTrainConfig, JobSpec, TrainConfig

JOB_MODULES = {"text": "ray_jobs.text_job", "image": "ray_jobs.image_job", "custom": "ray_jobs.custom_job"}
FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "TTRAIN_RAY_MAX_FAILURES",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",  # how often Ray Train's controller takes a report (see the README)
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
)
T = TypeVar("T")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its log prefixes
LAST_LINE_CHARS = 300
SETTLE_S = 60.0  # bounds the wait for calls in flight at a cancel: a submit is two requests of at most 10 s each
END_POLL_S = 0.25  # at the segment's last step: its result is what the sweep waits for to decide
PROMOTION_MARGIN_S = 2.0  # a parked job this close to leaving is not offered a promotion: it might not see it


def runs_root(storage_uri: str) -> str:
    return storage.join(storage_uri, "runs")


def ledger_entry(run_id: str, record: CommittedCheckpoint) -> CheckpointInfo:
    return CheckpointInfo(
        run_id=run_id,
        step=record.step,
        epoch=record.epoch,
        uri=record.uri,
        metrics=record.metrics,
        content_hash=record.content_hash,
        created_at=datetime.fromtimestamp(record.created_at, tz=timezone.utc),
        ray_job_id=record.ray_job_id,
    )


def submit_job(
    ray: RaySubmission, spec: JobSpec, storage_uri: str, python: str, incarnation: str | None = None
) -> None:
    """Write the spec next to the run's storage and submit `python -m <the kind's job module> --spec URI`; the one
    way a ttrain job reaches Ray (the activity, and the benches and tests that run the same job without Temporal)."""
    spec_uri = storage.join(storage_uri, "jobs", f"{spec.ray_job_id}.json")
    storage.write_json(spec_uri, spec.model_dump(mode="json"))
    module = JOB_MODULES[spec.config.kind]
    ray.submit(spec.ray_job_id, spec.run_id, module, spec_uri, python, runtime_env(spec.config), incarnation)


def runtime_env(config: TrainConfig) -> dict[str, Any]:
    """Ray's runtime_env for the job: the environment a job needs from this worker (offline mode, Ray's retries),
    and for a custom loop the code, packages and variables its config ships with it."""
    env: dict[str, Any] = {"env_vars": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if isinstance(config, CustomTrainConfig):
        ship = config.runtime_env
        env["env_vars"].update(ship.env_vars)
        if ship.working_dir:
            env["working_dir"] = ship.working_dir
        if ship.pip:
            env["pip"] = list(ship.pip)
    return {k: v for k, v in env.items() if v}


class TrainingActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ray = RaySubmission(settings.ray_address)

    @activity.defn
    async def train(self, inp: TrainAttemptInput) -> TrainAttemptResult:
        return await _Attempt(self.ray, self.settings, inp).run()

    @activity.defn
    async def close_sweep_tracking(self, sweep_id: str, base: TrainConfig) -> bool:
        """Here, where the sweep's jobs took their environment from (`runtime_env`): the same MLflow store."""
        env = runtime_env(base).get("env_vars", {})
        if "MLFLOW_TRACKING_URI" not in env:
            return False
        return await asyncio.to_thread(tracking.close_sweep, sweep_id, env)

    @activity.defn
    async def stop_run_jobs(
        self, run_id: str, incarnation: str | None = None, adopted: list[str] | None = None
    ) -> list[str]:
        """Stop every live Ray job of the run (of this incarnation of it: a late stop of a replaced run must not stop
        its successor's job; plus the jobs it `adopted` from the segment before, by warm promotion) and wait until
        each has stopped: a cancelled or failed run leaves no job behind. Retried while Ray is unreachable."""
        own = await asyncio.to_thread(self.ray.run_jobs, run_id, LIVE, incarnation)
        others = [j for j in adopted or [] if j not in own and await asyncio.to_thread(self.ray.status, j) in LIVE]
        stopped = []
        for job_id in own + others:
            activity.heartbeat(job_id)
            await asyncio.to_thread(self.ray.stop, job_id)
            stopped.append(job_id)
        return stopped


def _transient(exc: BaseException) -> bool:
    """The Jobs API unreachable, or storage failing in a way that passes (an NFS hiccup, an object store's 503);
    a refused permission is a configuration to fix, not an outage to wait out."""
    return isinstance(exc, OSError) and not isinstance(exc, PermissionError)


def _temporal_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, RPCError) and exc.status in (*BUSY, RPCStatusCode.UNKNOWN)


class _LeftBeforePromotion(Exception):
    """The parked job left at its deadline as the promotion was written (or as the clocks of the worker and the Ray
    node disagreed), and ended at its rung: nothing trains it on, so a new job resumes from the rung checkpoint."""


class _Attempt:
    def __init__(self, ray: RaySubmission, settings: Settings, inp: TrainAttemptInput) -> None:
        self.ray, self.settings, self.inp, self.opts = ray, settings, inp, inp.options
        self.run_uri = storage.join(runs_root(inp.options.storage_uri), inp.run_id)
        self.ledger = [c for c in inp.checkpoints if not c.deleted]  # what exists, step order: keep_last's domain
        resume = newest(*self.ledger)
        self.progress = Progress(
            ray_job_id="", step=resume.step if resume else 0, latest_checkpoint=resume, updated_at=time.time()
        )
        self.outage_ended = 0.0  # monotonic time the last outage ended: waiting out an outage is not a stall
        self.max_backoff_s = max(1.0, min(15.0, self.opts.heartbeat_timeout_s / 3))
        self.in_flight: set[asyncio.Future] = set()  # Ray and storage calls running in threads

    async def run(self) -> TrainAttemptResult:
        ticker = asyncio.create_task(self._heartbeat_forever())
        try:
            if not self.ledger and (self.inp.resume_from is not None or activity.info().attempt > 1):
                await self._ledger_of_a_previous_release()
            # What the attempt before had no time to retire: its run continued as new between a commit and the
            # pruning (its signals go to the closed execution), and the job may have nothing new to commit.
            await self._apply_keep_last()
            job_id = await self._start()
            try:
                return await self._follow(job_id)
            except _LeftBeforePromotion:  # it left as the promotion was written: resume from the rung checkpoint
                return await self._follow(await self._start(cold=True))
        except asyncio.CancelledError:
            # a submit in flight lands before the attempt ends: the workflow, told the attempt is over, lists the
            # run's jobs to stop them, and a job submitted after that list would outlive the run
            if self.in_flight:
                _, pending = await asyncio.wait(self.in_flight, timeout=SETTLE_S)
                if pending:
                    activity.logger.error("cancelled with %d Ray or storage calls still running", len(pending))
            details = activity.cancellation_details()
            if details is not None and details.worker_shutdown:
                raise self._failure(
                    "the training worker shut down; its Ray job keeps running for the next attempt", "WorkerShutdown"
                ) from None
            raise  # cancelled by the workflow (which stops the run's jobs itself), or timed out / stale: leave it
        finally:
            ticker.cancel()

    async def _ledger_of_a_previous_release(self) -> None:
        """An attempt scheduled by the previous release's workflow carries at most where the run stood when it was
        scheduled, and Temporal retries it with that same input (the current workflow retries attempts itself, so
        a Temporal-level retry, or a `resume_from`, means that release): the run's newest checkpoints are in its
        workflow's ledger, which the current workflow code serves (it replays that history)."""
        info = activity.info()
        handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        ledger = await self._outlasting(
            _temporal_unavailable, lambda: handle.query("ledger", result_type=list[CheckpointInfo])
        )
        fallback = [self.inp.resume_from] if self.inp.resume_from else []
        self.ledger = [c for c in ledger if not c.deleted] or fallback
        resume = newest(*self.ledger)
        if resume is not None:  # none yet: the run starts from 0, as the previous release would have
            self.progress.step, self.progress.latest_checkpoint = resume.step, resume

    async def _heartbeat_forever(self) -> None:
        """Heartbeats on their own clock: a slow storage read or an outage being waited out is not a dead worker,
        and cancellation (delivered with heartbeat responses) arrives whatever the attempt is doing."""
        every = min(self.opts.poll_interval_s, self.opts.heartbeat_timeout_s / 3)
        while True:
            activity.heartbeat(self.progress)
            await asyncio.sleep(every)

    async def _start(self, cold: bool = False) -> str:
        """`cold`: the job to follow ended at its rung without training on: submit, resuming from the ledger."""
        info = activity.info()
        warm = None if cold else self.inp.warm_job_id
        job_id = await self._patiently(self._promote, warm) if warm else None
        if job_id is None:
            hint = None if cold else self.inp.reattach_job_id
            job_id = await self._patiently(self.ray.find_live, self.inp.run_id, hint, self.inp.incarnation)
            if job_id is not None and job_id == hint and await self._ended_short(job_id):
                job_id = None
        reattached = job_id is not None
        if job_id is None and self.inp.reattach_job_id is not None:
            # the last job ended while nobody watched (a worker gap): what it committed meanwhile is the run's newest
            await self._mirror_checkpoints(self.inp.reattach_job_id)
        if job_id is None:
            for stranger in await self._patiently(self.ray.strangers, self.inp.run_id, self.inp.incarnation):
                activity.logger.warning(
                    "stopping Ray job %s, left under %s by an earlier run", stranger, info.workflow_id
                )
                await self._patiently(self.ray.stop, stranger)
            # unique per workflow execution and activity, and still led by the run id: a rerun of the same run id,
            # or the next rung of a sweep trial, never mistakes an old job for its own
            job_id = f"{info.workflow_id}--{info.workflow_run_id[-8:]}-{info.activity_id}-{info.attempt}"
            await self._patiently(self._submit, job_id)
        self.progress.ray_job_id = job_id
        previous, resume_step = self.inp.previous, self.progress.step
        fresh = not reattached and previous is not None
        await self._signal(
            "attempt_started",
            AttemptStarted(
                ray_job_id=job_id,
                attempt=self.inp.attempt,
                reattached=reattached,
                resumed_from_step=resume_step,
                steps_recomputed=max(0, previous.step - resume_step) if fresh else 0,
                time_lost_s=max(0.0, time.time() - previous.updated_at) if fresh else 0.0,
            ),
        )
        return job_id

    def _promote(self, job_id: str) -> str | None:
        """The job, told to train on to this segment's stop, if it still waits at the checkpoint this attempt resumes
        from (long enough to read the promotion); otherwise None, and the attempt starts a job of its own (the parked
        one, of another incarnation, is then stopped as a stranger)."""
        resume = self.progress.latest_checkpoint
        if resume is None or self.ray.status(job_id) != JobStatus.RUNNING:
            return None
        parked = read_parked(self.run_uri, job_id)  # read last, just before the offer: the margin is what is left
        if (
            parked is None
            or (parked.state, parked.step) != ("waiting", resume.step)
            or parked.until - time.time() < PROMOTION_MARGIN_S
        ):
            return None
        promotion = Promotion(stop_at_step=self.inp.stop_at_step, park_s=self.inp.park_s)
        storage.write_json(promotion_uri(self.run_uri, job_id, resume.step), promotion.model_dump(mode="json"))
        activity.logger.info("promotion: Ray job %s trains on from step %d", job_id, resume.step)
        return job_id

    def _submit(self, job_id: str) -> None:
        resume = self.progress.latest_checkpoint
        spec = JobSpec(
            run_id=self.inp.run_id,
            ray_job_id=job_id,
            config=self.inp.config,
            snapshot_uri=self.inp.snapshot.uri,
            storage_path=runs_root(self.opts.storage_uri),
            resume_from_uri=resume.uri if resume else None,
            resume_from_step=resume.step if resume else 0,
            stop_at_step=self.inp.stop_at_step,
            park_s=self.inp.park_s,
            sweep_id=self.inp.sweep_id,
            incarnation=self.inp.incarnation,
        )
        submit_job(self.ray, spec, self.opts.storage_uri, self.settings.ray_python, self.inp.incarnation)

    async def _follow(self, job_id: str) -> TrainAttemptResult:
        """Until the job ends. A job that has not trained a step yet is starting (its Train workers wait for a node,
        load data, compile): that is bounded by `startup_timeout_s`; once it trains, `stall_timeout_s` without a new
        step means it hangs. Either way the job is stopped and the next attempt resumes from the ledger."""
        last_advance = time.monotonic()
        started_training = False
        while True:
            status = await self._patiently(self.ray.status, job_id)
            before = self.progress.step
            await self._mirror_checkpoints(job_id)
            live = await asyncio.to_thread(read_progress, self.run_uri, job_id)
            if live is not None and not started_training:
                started_training, last_advance = True, time.monotonic()
            if live is not None and live.step > self.progress.step:
                self.progress.step, self.progress.total_steps, self.progress.loss = (
                    live.step,
                    live.total_steps,
                    live.loss,
                )
            self.progress.job_status = status.value if status else None
            if self.progress.step > before or status != JobStatus.RUNNING:  # a pending job waits for room: not hung
                last_advance = time.monotonic()
                self.progress.updated_at = time.time()
            last_advance = max(last_advance, self.outage_ended)
            if status is None:
                raise self._failure(f"Ray job {job_id} disappeared from the cluster (was the Ray head restarted?)")
            if status.is_terminal():
                return await self._finish(job_id, status)
            if await self._parked_at_target(job_id):
                return self._result(job_id)
            limit = self.opts.stall_timeout_s if started_training else self.opts.startup_timeout_s
            if time.monotonic() - last_advance > limit:
                await self._signal("attempt_stalled", job_id)  # a stale attempt learns it is one here, and stops
                await self._patiently(self.ray.stop, job_id)
                what = (
                    f"no progress past step {self.progress.step}" if started_training else "it never started training"
                )
                raise self._failure(
                    f"{what} in {limit:.0f}s; stopped the job, the next attempt resumes from the ledger",
                    "TrainingStalled",
                )
            at_the_end = (target := self._target()) is not None and self.progress.step >= target
            await asyncio.sleep(min(self.opts.poll_interval_s, END_POLL_S) if at_the_end else self.opts.poll_interval_s)

    def _target(self) -> float | None:
        """The step this attempt trains to: the segment's stop, or the run's end (known from a checkpoint)."""
        final = self.progress.latest_checkpoint
        total = final.metrics.get("total_steps") if final else None
        stop = self.inp.stop_at_step
        return min(stop, total) if stop and total else total

    def _done(self) -> bool:
        final = self.progress.latest_checkpoint
        return final is not None and final.step == self._target()

    async def _ended_short(self, job_id: str) -> bool:
        """The last attempt's job ended well but short of this segment's end (it left its rung unpromoted, or Ray lost
        a worker's error: `job_runner.recording_errors`). Following it again would only fail the same way, attempt
        after attempt: a fresh job resumes from what it committed."""
        if await self._patiently(self.ray.status, job_id) != JobStatus.SUCCEEDED:
            return False
        return await self._mirror_checkpoints(job_id) and not self._done()  # unreadable now: follow it, as before

    def _result(self, job_id: str) -> TrainAttemptResult:
        final = self.progress.latest_checkpoint
        assert final is not None
        return TrainAttemptResult(final_checkpoint=final, total_steps=final.step, ray_job_id=job_id)

    async def _parked_at_target(self, job_id: str) -> bool:
        """The job committed this segment's last checkpoint and waits there for a promotion: the segment is done."""
        final = self.progress.latest_checkpoint
        if self.inp.park_s <= 0 or final is None or final.ray_job_id != job_id or final.step != self._target():
            return False
        parked = await asyncio.to_thread(read_parked, self.run_uri, job_id)
        return parked is not None and parked.step == final.step

    async def _finish(self, job_id: str, status: JobStatus) -> TrainAttemptResult:
        if status == JobStatus.SUCCEEDED:
            if self._done():
                return self._result(job_id)
            final = self.progress.latest_checkpoint
            parked = await asyncio.to_thread(read_parked, self.run_uri, job_id)
            if final is not None and parked is not None and (parked.state, parked.step) == ("left", final.step):
                raise _LeftBeforePromotion(job_id)  # this attempt's, or an earlier one's that was lost since
            raise self._failure(f"Ray job {job_id} succeeded but its final checkpoint is not committed")
        outcome = await asyncio.to_thread(read_outcome, self.run_uri, job_id)
        if outcome is not None and outcome.status == "failed":
            if outcome.deterministic:  # raised on purpose by the job's code: a rerun would only repeat it
                raise ApplicationError(
                    outcome.message or outcome.error_type, type=outcome.error_type, non_retryable=True
                )
            message = f"{outcome.error_type}: {outcome.message}"
            raise self._failure(message, from_training_code=outcome.from_training_code)
        logs = ANSI_ESCAPE.sub("", await asyncio.to_thread(self.ray.logs_tail, job_id)).strip()
        last_line = logs.splitlines()[-1][:LAST_LINE_CHARS] if logs else "no logs"
        raise self._failure(f"Ray job {job_id} ended {status.value}: {last_line}")

    async def _mirror_checkpoints(self, job_id: str) -> bool:
        """Signal each checkpoint the job committed since the last poll (from its commit records: none is missed,
        however soon Ray prunes it), then keep the ledger true to storage. False if the records were not readable."""
        after = self.progress.latest_checkpoint.step if self.progress.latest_checkpoint else -1
        try:
            records = await asyncio.to_thread(read_commits, self.run_uri, job_id, after)
        except OSError as exc:  # a storage hiccup: read them next poll
            activity.logger.warning("commit records of %s not readable now: %s", job_id, exc)
            return False
        for record in records:
            info = ledger_entry(self.inp.run_id, record)
            await self._signal("checkpoint_committed", info)
            self.ledger.append(info)
            self.progress.latest_checkpoint = info
            self.progress.step = max(self.progress.step, info.step)
        if records:
            await self._apply_keep_last()
        return True

    async def _apply_keep_last(self) -> None:
        """Keep the run's newest `keep_last` checkpoints and its best, across its jobs (`ray_jobs.retention`). The
        running job prunes its own by the same rule as it commits; the ledger hears of every deletion before it
        happens here (maybe a moment after the job's). Their commit records go with them."""
        cfg = self.inp.config
        kept = retention.kept_steps(self.ledger, cfg.keep_last, cfg.best_metric, cfg.best_mode)
        gone = [c for c in self.ledger if c.step not in kept]
        if not gone:
            return
        await self._signal("checkpoints_deleted", [c.step for c in gone])
        self.ledger = [c for c in self.ledger if c.step in kept]
        for c in gone:
            try:
                await asyncio.to_thread(storage.delete_dir, c.uri)
                await asyncio.to_thread(storage.delete_file, commit_record_uri(self.run_uri, c.ray_job_id, c.step))
            except OSError as exc:
                activity.logger.warning("checkpoint %s not deleted: %s", c.uri, exc)

    def _failure(self, message: str, kind: str = "RayJobFailed", from_training_code: bool = False) -> ApplicationError:
        """A retryable failure that carries this attempt's progress (the next attempt reattaches or counts what was
        lost from it) and whether the training code raised it (the workflow's same-error-twice rule)."""
        return ApplicationError(message, self.progress, {"from_training_code": from_training_code}, type=kind)

    async def _outlasting(self, transient: Callable[[BaseException], bool], call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, retried with backoff while it fails with a transient error (Ray's Jobs API, storage or Temporal
        unreachable), for up to cluster_wait_s; what is waited out, and since when, is in the heartbeat (`ttrain
        status` shows it) for as long as it lasts, and the time it took is not counted as a stall."""
        since: float | None = None

        def waiting(state: RetryCallState) -> None:
            nonlocal since
            since = since or time.time()
            clock = time.strftime("%H:%M:%S", time.localtime(since))
            limit = f"{self.opts.cluster_wait_s:.0f}s"
            self.progress.waiting = f"{state.outcome.exception()} (since {clock}, waiting up to {limit})"

        async for attempt in AsyncRetrying(
            retry=retry_if_exception(transient),
            wait=wait_exponential(min=1, max=self.max_backoff_s),
            stop=stop_after_delay(self.opts.cluster_wait_s),
            before_sleep=waiting,
            reraise=True,
        ):
            with attempt:
                result = await call()
        if since is not None:
            self.progress.waiting = None
            self.outage_ended = time.monotonic()
        return result

    async def _patiently(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking Ray or storage call, in a thread, outlasting outages of either. A cancel does not abandon the
        thread: the call is shielded and tracked, for `run` to let it land."""

        async def shielded() -> T:
            call = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            self.in_flight.add(call)
            call.add_done_callback(self.in_flight.discard)
            return await asyncio.shield(call)

        try:
            return await self._outlasting(_transient, shielded)
        except OSError as exc:
            if not _transient(exc):
                raise
            raise self._failure(f"{exc} for over {self.opts.cluster_wait_s:.0f}s", "ClusterUnreachable") from None

    async def _signal(self, name: str, payload: Any) -> None:
        """Outlasts a Temporal outage (a server restart): a lost signal would be a lost ledger entry. Addressed to
        this attempt's own workflow execution: once that has closed (continued as new, or ended), the attempt is
        stale and stops following; the current execution's attempt reads Ray's commits itself."""
        info = activity.info()
        handle = activity.client().get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        try:
            await self._outlasting(_temporal_unavailable, lambda: handle.signal(name, payload))
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            raise ApplicationError(
                "this attempt's workflow execution has closed; the job is left to the current one", type="StaleAttempt"
            ) from None
