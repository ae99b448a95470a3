"""Real ladder sweeps on the real stack.

- both workers SIGKILLed mid-way: the sweep continues from its last decision, trials resume from their
  checkpoints, the promoted trial continues from its rung checkpoint;
- a warm promotion: the trial's job waits at its rung, the promotion trains on in that same Ray job and worker
  group, and SIGKILLing its Train worker after the promotion resumes from the rung checkpoint.

The worker kills hit every run on the stack, so that sweep runs alone, and so does the image sweep (its 2-worker
trials fill the CPU); the warm promotion and the CLI's simulated sweeps start together (`started`), each on its own
jobs, and each test asserts on its own scenario's outcome.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import local_stack
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.sweeps.models import SweepSpec, SweepState
from orchestration.types import RunOptions, RunStatus
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.outcome import read_parked, read_progress
from tests.helpers import assert_one_line_error, outcome, run, side_by_side, tiny_config, wait_until
from tests.test_crash_recovery import train_worker_pids

pytestmark = pytest.mark.integration


def test_ladder_sweep_survives_worker_kills_and_promotes_from_rung_checkpoints(stack):
    base = tiny_config(dataset={"max_rows": 300}, max_steps=None, checkpoint_every_steps=5)
    spec = SweepSpec(
        id="it-sweep",
        strategy="ladder",
        ladder={"min_steps": 10, "max_steps": 30, "eta": 3},
        space={"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        base=base,
        metric="eval_accuracy",
        trials=3,
        max_concurrency=2,
        seed=11,
    )
    options = RunOptions(storage_uri=stack.storage_uri, training_queue=stack.training_queue, heartbeat_timeout_s=5)

    async def go() -> tuple[SweepState, RunStatus]:
        client = await connect(stack)
        handle = await client.start_workflow(
            SweepWorkflow.run, SweepState(spec=spec, options=options), id=spec.id, task_queue=stack.orchestration_queue
        )

        async def a_checkpoint():
            try:
                s = await patient_query(
                    client.get_workflow_handle("it-sweep-t0000-r0"), CheckpointedTrainingWorkflow.status
                )
            except Exception:
                return False
            return bool(s.checkpoints)

        await wait_until(a_checkpoint, 300, "the first trial's first checkpoint")
        for name in ("worker-training", "worker-orchestration"):
            pid = local_stack.read_pid(stack, name)
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda p=pid: not local_stack.pid_alive(p), 10, f"{name} to die")
        for queue in ("training", "orchestration"):
            local_stack.start_worker(stack, queue)
        state = await wait_for_result(handle)
        promoted = next(t for t in state.trials if len(t.results) == 2)
        rung1 = await patient_query(
            client.get_workflow_handle(f"{promoted.run_id}-r1"), CheckpointedTrainingWorkflow.status
        )
        return state, rung1

    state, rung1 = run(go())
    assert sorted(t.index for t in state.trials) == [0, 1, 2]  # every trial once
    assert all(t.results and t.results[0].steps == 10 for t in state.trials)
    promoted = [t for t in state.trials if len(t.results) == 2]
    assert len(promoted) == 1  # 3 results at rung 0, eta 3: exactly the best one climbs
    best = promoted[0]
    assert [r.steps for r in best.results] == [10, 30]
    assert best.results[0].score == max(t.results[0].score for t in state.trials)
    # the promotion resumed from the rung checkpoint: steps 11..30 only, none repeated
    assert rung1.attempts[0].resumed_from_step == 10
    assert [c.step for c in rung1.checkpoints] == [10, 15, 20, 25, 30]
    runs = Path(stack.storage_uri) / "runs"
    assert (runs / best.run_id).exists()  # keep-best: the winner's checkpoints stay
    # the others wait at rung 0: an extension may promote them, so their rung checkpoints stay too
    assert all((runs / t.run_id).exists() for t in state.trials if t is not best)
    assert (Path(stack.storage_uri) / "sweeps" / "it-sweep" / "leaderboard.png").exists()
    assert state.gpu_hours > 0  # worker-hours of the real segments, what a max_gpu_hours budget counts


def warm_promotion(stack) -> None:
    """Lenient rule, one trial: its first result at rung 0 is promoted at once, while its job waits at step 10. The
    only checkpoints are the rungs' (10, 40), so a kill between them can only resume from the rung checkpoint."""
    base = tiny_config(dataset={"max_rows": 300}, max_steps=None, checkpoint_every_steps=1000)
    spec = SweepSpec(
        id="it-warm",
        strategy="ladder",
        ladder={"min_steps": 10, "max_steps": 40, "eta": 4, "rule": "lenient", "promotion_wait_s": 60},
        space={"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        base=base,
        trials=1,
        max_concurrency=1,
        seed=3,
    )
    options = RunOptions(storage_uri=stack.storage_uri, training_queue=stack.training_queue, heartbeat_timeout_s=5)

    async def go() -> tuple[SweepState, RunStatus, RunStatus, list[int], list[int]]:
        client = await connect(stack)
        handle = await client.start_workflow(
            SweepWorkflow.run, SweepState(spec=spec, options=options), id=spec.id, task_queue=stack.orchestration_queue
        )

        async def started(workflow_id: str) -> RunStatus | None:
            try:
                s = await patient_query(client.get_workflow_handle(workflow_id), CheckpointedTrainingWorkflow.status)
            except Exception:
                return None
            return s if s.attempts else None

        rung0 = await wait_until(lambda: started("it-warm-t0000-r0"), 120, "the rung-0 job")
        job = rung0.attempts[0].ray_job_id
        before = await wait_until(lambda: train_worker_pids(stack, job), 120, "the rung-0 job's Train worker")
        await wait_until(lambda: started("it-warm-t0000-r1"), 180, "the promotion", interval=0.1)
        run_uri = str(Path(stack.storage_uri) / "runs" / "it-warm-t0000")

        def trains_on() -> bool:  # the job read the promotion and trains past its rung, in the same process
            parked, live = read_parked(run_uri, job), read_progress(run_uri, job)
            return parked is not None and parked.state == "promoted" and live is not None and live.step > 10

        await wait_until(trains_on, 60, "the job to train on past its rung", interval=0.1)
        after = train_worker_pids(stack, job)
        for pid in after:  # between the rungs: no checkpoint but the rung's to resume from
            os.kill(pid, signal.SIGKILL)
        state = await asyncio.wait_for(wait_for_result(handle), 300)
        return state, rung0, await started("it-warm-t0000-r1"), before, after

    state, rung0, rung1, before, after = run(go())
    assert rung1.state == "completed" and rung1.step == 40
    first, retry = rung1.attempts
    assert first.ray_job_id == rung0.attempts[0].ray_job_id and first.reattached  # the same Ray job went on
    assert first.resumed_from_step == 10
    assert after == before  # the same worker group: no new Train worker was started for the promotion
    assert not retry.reattached and retry.ray_job_id != first.ray_job_id
    assert retry.resumed_from_step == 10  # killed after the promotion: resumed from the rung checkpoint
    assert [c.step for c in rung1.checkpoints] == [10, 40]
    (trial,) = state.trials
    assert [r.steps for r in trial.results] == [10, 40] and trial.state == "completed"


def _closed(handle):
    async def check():
        desc = await handle.describe()
        return desc.status.name if desc.status is not None and desc.status.name != "RUNNING" else None

    return check


def ttrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args], capture_output=True, text=True, timeout=120
    )


def sweep_cli(stack, tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        "id: it-cli-sweep\nstrategy: random\ntrials: 6\nmax_concurrency: 2\ntrainer: simulated\nseed: 5\n"
        "base: {max_steps: 90}\nspace:\n  params:\n    lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
    )
    out = ttrain("sweep", str(sweep_file), "--detach")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "it-cli-sweep"

    def board() -> dict:
        res = ttrain("leaderboard", "it-cli-sweep", "--json")
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    async def finished():
        client = await connect(stack)
        return await asyncio.wait_for(wait_for_result(client.get_workflow_handle("it-cli-sweep")), 120)

    run(finished())
    assert board()["trials_started"] == 6
    assert ttrain("sweep-ctl", "it-cli-sweep", "pause").returncode == 1  # finished: a clear error, not a hang
    out = ttrain("sweep-ctl", "it-cli-sweep", "extend", "4")
    assert out.returncode == 0, out.stderr
    run(finished())
    b = board()
    assert b["trials_started"] == 10
    assert b["best"]["results"][-1]["steps"] == 90
    scores = [t["results"][-1]["score"] for t in b["trials"]]
    assert scores == sorted(scores, reverse=True)  # best first
    top = ttrain("leaderboard", "it-cli-sweep", "--top", "3")
    assert top.returncode == 0 and "7 more trials" in top.stdout, top.stdout
    assert re.findall(r"it-cli-sweep-t\d{4}", top.stdout) == [t["run_id"] for t in b["trials"][:3]]
    assert_one_line_error(ttrain("leaderboard", "it-cli-sweep", "--top", "0"), 1, "--top must be at least 1")
    lenient = tmp_path / "lenient.yaml"  # its cutoff once needed numpy, which the sandbox could not load
    lenient.write_text(
        sweep_file.read_text()
        .replace("it-cli-sweep", "it-cli-lenient")
        .replace("strategy: random", "strategy: ladder\nladder: {min_steps: 10, max_steps: 90, eta: 3, rule: lenient}")
    )
    assert ttrain("sweep", str(lenient), "--detach").returncode == 0

    async def lenient_result():
        client = await connect(stack)
        return await asyncio.wait_for(
            wait_for_result(client.get_workflow_handle("it-cli-lenient", result_type=SweepState)), 60
        )

    climbed = [t for t in run(lenient_result()).trials if len(t.results) > 1]
    assert climbed and climbed[0].index == 0  # the first result at a rung always goes on
    long_file = tmp_path / "long.yaml"
    long_file.write_text(
        sweep_file.read_text()
        .replace("it-cli-sweep", "it-cli-cancel")
        .replace("trials: 6", "trials: 5000")
        .replace("max_concurrency: 2", "max_concurrency: 1")
    )
    assert ttrain("sweep", str(long_file), "--detach").returncode == 0
    assert ttrain("sweep-ctl", "it-cli-cancel", "budget", "1000000").returncode == 0  # a cap far above its use
    assert ttrain("sweep-ctl", "it-cli-cancel", "cancel").returncode == 0

    async def status():
        client = await connect(stack)
        return await wait_until(_closed(client.get_workflow_handle("it-cli-cancel")), 60, "the sweep to close")

    assert run(status()) == "CANCELED"
    out = ttrain("sweep-ctl", "it-cli-cancel", "extend", "1")  # a cancelled sweep goes on from its state
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert ttrain("sweep-ctl", "it-cli-cancel", "cancel").returncode == 0
    assert run(status()) == "CANCELED"
    unknown = ttrain("sweep-ctl", "no-such-sweep", "pause")
    assert unknown.returncode == 1 and unknown.stderr.startswith("ttrain: error: sweep 'no-such-sweep'")
    huge = tmp_path / "huge.yaml"
    huge.write_text(sweep_file.read_text().replace("trials: 6", "trials: 100001"))
    assert_one_line_error(ttrain("sweep", str(huge)), 1, "a sweep runs at most 100,000 trials")
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nstrategy: ladder\nspace: {params: {lr: {type: uniform, low: 0, high: 1}}}\n")
    out = ttrain("sweep", str(bad))
    assert out.returncode == 2 and "ladder" in out.stderr and "Traceback" not in out.stderr


def test_an_image_ladder_sweep_of_two_worker_trials_completes_with_a_leaderboard(stack, tmp_path):
    """Any kind is a sweep's base: Fashion-MNIST (the offline real dataset), each trial on 2 Ray Train workers."""
    sweep_file = tmp_path / "images.yaml"
    sweep_file.write_text(
        "id: it-image-sweep\nstrategy: ladder\nladder: {min_steps: 6, max_steps: 12, eta: 2}\ntrials: 2\n"
        "max_concurrency: 2\nseed: 1\nbase: {kind: image, dataset: fashion-mnist, max_train_rows: 512, width: 8,\n"
        "  batch_size: 64, checkpoint_every_steps: 6, scaling: {num_workers: 2}}\n"
        "space:\n  params:\n    lr: {type: loguniform, low: 0.01, high: 0.3}\n    width: {type: choice, values: [8, 12]}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "sweep", str(sweep_file)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    board = json.loads(ttrain("leaderboard", "it-image-sweep", "--json").stdout)
    trials = board["trials"]
    assert board["trials_started"] == 2 and len(trials) == 2
    assert [r["steps"] for r in trials[0]["results"]] == [6, 12]  # the better rung-0 result climbed
    assert [r["steps"] for r in trials[1]["results"]] == [6]
    assert trials[0]["results"][0]["score"] >= trials[1]["results"][0]["score"]
    assert all(0.0 < r["score"] <= 1.0 for t in trials for r in t["results"])  # Fashion-MNIST test accuracy


@pytest.fixture(scope="module")
def started(stack, tmp_path_factory):
    yield from side_by_side(
        {
            "warm": functools.partial(warm_promotion, stack),
            "cli": functools.partial(sweep_cli, stack, tmp_path_factory.mktemp("cli-sweep")),
        }
    )


def test_a_promotion_trains_on_in_the_waiting_job_and_a_kill_after_it_resumes_from_the_rung_checkpoint(started):
    outcome(started, "warm")


def test_sweep_cli_runs_controls_and_extends_a_sweep(started):
    outcome(started, "cli")
