"""Resume waste: what an interruption costs a ttrain run, against an uninterrupted reference of the same config.

Orchestrated runs of one config (default 120 steps, checkpoint every 20, heartbeat_timeout_s=5), one after another
on one stack:
  reference    never interrupted;
  worker-kill  the training worker (the Temporal worker whose activity drives the Ray job) gets SIGKILL when the
               run's live step reaches a random step, and is restarted at once. The Ray job trains on unwatched;
               the activity's retry (after the heartbeat timeout) reattaches to it or, if it has ended, resumes;
  job-stop     the Ray job itself is stopped (JobSubmissionClient.stop_job) at a random step; the retry submits a
               new job that resumes from the newest committed checkpoint.
Kill steps are drawn with a seeded random.Random (--seed) from [1, steps - every]. The live step is read from the
run's progress.json (<storage>/runs/<run_id>/<job id>/progress.json, written by rank 0 about every 2 s), so the interruption
lands at the drawn step or a little after it; the table shows both.

Per interrupted run: kill step, resumed-from step and reattached (RunStatus.attempts), resumes, steps recomputed,
the workflow's own time_lost_s estimate, wall time (TrainingResult.wall_time_s), wall-clock lost = wall - the
reference's wall, and the final loss's difference from the reference's (0 when the resume is exact).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/resume_waste.py            # 120 steps, every 20, 1 trial
    HF_HUB_OFFLINE=1 .venv/bin/python bench/resume_waste.py --quick    # 30 steps, every 10, no warm-up

Prints a table; writes bench/out/resume_waste.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from ray.job_submission import JobSubmissionClient
from temporalio.client import Client

from cluster import local_stack
from orchestration.api import start_training
from orchestration.client import connect
from orchestration.settings import Settings
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs import storage
from ray_jobs.specs import FineTuneConfig


@dataclass
class Outcome:
    scenario: str  # "warm-up" | "reference" | "worker-kill" | "job-stop"
    run_id: str
    target_step: int | None  # the drawn step
    kill_step: int | None  # the live step when the interruption was sent
    wall_s: float  # TrainingResult.wall_time_s: workflow start to result
    client_wall_s: float  # start_training to result, as a user waits for it
    resumes: int
    steps_recomputed: int
    time_lost_s: float  # the workflow's estimate: heartbeat gap before a resumed (not reattached) attempt
    final_loss: float
    attempts: list[dict] = field(default_factory=list)  # RunStatus.attempts, as dicts
    wall_lost_s: float | None = None  # wall_s - reference wall_s
    loss_diff: float | None = None  # final_loss - reference final_loss

    @property
    def resumed_from(self) -> str:
        """Per retry: the checkpoint step its new Ray job resumed from; '-' where it reattached to the running job."""
        return ",".join("-" if a["reattached"] else str(a["resumed_from_step"]) for a in self.attempts[1:]) or "-"

    @property
    def reattached(self) -> str:
        return ",".join("yes" if a["reattached"] else "no" for a in self.attempts[1:]) or "-"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=120, help="optimizer steps per run (default 120)")
    p.add_argument("--every", type=int, default=20, help="checkpoint every N steps (default 20)")
    p.add_argument("--heartbeat-timeout", type=float, default=5.0, help="activity heartbeat timeout s (default 5)")
    p.add_argument("--trials", type=int, default=1, help="worker-kill + job-stop pairs, each at new steps")
    p.add_argument("--seed", type=int, default=0, help="seed for the kill steps (default 0)")
    p.add_argument("--warmup", type=int, default=1, help="unreported short runs first, so no run pays cold start")
    p.add_argument("--run-timeout", type=float, default=1800, help="give up on a run after this many s")
    p.add_argument("--quick", action="store_true", help="30 steps, every 10, no warm-up: proves the bench works")
    p.add_argument("--keep-home", action="store_true", help="keep the temp TTRAIN_HOME (logs, storage)")
    args = p.parse_args()
    if args.quick:
        args.steps, args.every, args.warmup = 30, 10, 0
    if args.steps <= args.every:
        p.error("--steps must exceed --every, or there is no checkpoint to resume from")
    return args


# -----------------------------------------------------------------------------------------------------------------
# watching and interrupting a run


def live_progress(settings: Settings, run_id: str) -> dict | None:
    """The newest progress.json of the run's jobs (each job writes its own)."""
    found = []
    for path in _stack.run_dir(settings, run_id).glob("*/progress.json"):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found.append(json.loads(path.read_text()))
    return max(found, key=lambda p: p["time"]) if found else None


async def wait_for_step(settings: Settings, run_id: str, step: int, timeout: float) -> dict:
    """The run's progress.json once its step reaches `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = live_progress(settings, run_id)
        if live is not None and live["step"] >= step:
            return live
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{run_id} did not reach step {step} within {timeout:.0f}s")


def kill_training_worker(settings: Settings) -> None:
    """SIGKILL the training worker (no goodbye to Temporal or Ray) and start a fresh one straight away."""
    pid = local_stack.read_pid(settings, "worker-training")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while local_stack.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    local_stack.start_worker(settings, "training")


def stop_ray_job(settings: Settings, job_id: str) -> None:
    JobSubmissionClient(settings.ray_dashboard_url).stop_job(job_id)


# -----------------------------------------------------------------------------------------------------------------
# one run


async def one_run(
    client: Client,
    settings: Settings,
    config: FineTuneConfig,
    args: argparse.Namespace,
    scenario: str,
    run_id: str,
    target: int | None = None,
) -> Outcome:
    t0 = time.monotonic()
    handle = await start_training(client, settings, run_id, config, heartbeat_timeout_s=args.heartbeat_timeout)
    kill_step = None
    if target is not None:
        live = await wait_for_step(settings, run_id, target, args.run_timeout)
        kill_step = live["step"]
        if scenario == "worker-kill":
            await asyncio.to_thread(kill_training_worker, settings)
        else:
            await asyncio.to_thread(stop_ray_job, settings, live["ray_job_id"])
        _stack.log(f"{run_id}: {scenario} at step {kill_step} (drawn {target})")
    result: TrainingResult = await asyncio.wait_for(handle.result(), args.run_timeout)
    client_wall = time.monotonic() - t0
    status: RunStatus = await handle.query(CheckpointedTrainingWorkflow.status)
    storage.delete_dir(str(_stack.run_dir(settings, run_id)))  # ~200 MB a checkpoint: keep the disk clear
    outcome = Outcome(
        scenario=scenario,
        run_id=run_id,
        target_step=target,
        kill_step=kill_step,
        wall_s=result.wall_time_s,
        client_wall_s=client_wall,
        resumes=result.resumes,
        steps_recomputed=result.steps_recomputed,
        time_lost_s=result.time_lost_s,
        final_loss=result.metrics["loss"],
        attempts=[a.model_dump() for a in status.attempts],
    )
    _stack.log(
        f"{run_id}: {result.steps} steps in {result.wall_time_s:.1f}s, {result.resumes} resumes "
        f"(resumed from {outcome.resumed_from}), {result.steps_recomputed} steps recomputed"
    )
    return outcome


# -----------------------------------------------------------------------------------------------------------------
# the benchmark


async def bench(settings: Settings, args: argparse.Namespace) -> list[Outcome]:
    client = await connect(settings)
    config = _stack.bench_config(max_steps=args.steps, checkpoint_every_steps=args.every)
    rng = random.Random(args.seed)
    for i in range(args.warmup):  # the first run pays Ray's worker start-up and cold caches: don't measure it
        warm = _stack.bench_config(max_steps=args.every, checkpoint_every_steps=args.every)
        await one_run(client, settings, warm, args, "warm-up", f"rw-warmup-{i}")

    outcomes = [await one_run(client, settings, config, args, "reference", "rw-reference")]
    for trial in range(args.trials):
        for scenario in ("worker-kill", "job-stop"):
            target = rng.randint(1, args.steps - args.every)
            outcomes.append(await one_run(client, settings, config, args, scenario, f"rw-{scenario}-{trial}", target))

    ref = outcomes[0]
    for o in outcomes:
        o.wall_lost_s = o.wall_s - ref.wall_s
        o.loss_diff = o.final_loss - ref.final_loss
    return outcomes


def main() -> None:
    args = parse_args()
    with _stack.running_stack(keep_home=args.keep_home) as settings:
        outcomes = asyncio.run(bench(settings, args))

    _stack.print_table(
        f"resume waste: {args.steps} steps, checkpoint every {args.every}, heartbeat timeout {args.heartbeat_timeout:g}s",
        [
            "scenario",
            "drawn",
            "kill step",
            "attempts",
            "reattached",
            "resumed from",
            "recomputed",
            "time_lost s",
            "wall s",
            "wall lost s",
            "loss diff",
        ],
        [
            (
                o.scenario,
                o.target_step,
                o.kill_step,
                len(o.attempts),
                o.reattached,
                o.resumed_from,
                o.steps_recomputed,
                o.time_lost_s,
                o.wall_s,
                o.wall_lost_s,
                f"{o.loss_diff:.1e}",
            )
            for o in outcomes
        ],
    )
    payload = {"environment": _stack.environment(args), "runs": [asdict(o) for o in outcomes]}
    print(f"results: {_stack.write_results('resume_waste', payload)}")


if __name__ == "__main__":
    main()
