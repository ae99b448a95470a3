"""The user's own Ray Train loop (`kind: custom`, `ray_jobs/examples/mlp.py`) on the real stack.

- trained through `ttrain train` on 2 Ray Train workers, a Train worker SIGKILLed mid-run: the run resumes from its
  ledger and ends with the weights of an uninterrupted twin, trained side by side;
- a ladder sweep over the loop's own `train_loop_config`: the promoted trial's step counter goes on from its rung
  checkpoint, no step trained twice;
- bad custom configs and entrypoints are refused before compute, in one line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from temporalio.client import WorkflowFailureError

from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.errors import root_message
from orchestration.sweeps.models import SweepSpec, SweepState
from orchestration.types import RunOptions, RunStatus, TrainingResult
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs import tracking
from ray_jobs.history import read_history
from ray_jobs.outcome import read_commits
from ray_jobs.specs import CustomTrainConfig
from tests.helpers import assert_one_line_error, run, tensorboard_scalars, ttrain, wait_until
from tests.test_crash_recovery import train_worker_pids

STEPS, EVERY, LOG_EVERY = 600, 100, 50  # a report can wait Ray Train's 2 s poll: 12 of them, not 30


def custom_config(**overrides) -> CustomTrainConfig:
    return CustomTrainConfig.model_validate(
        {
            "kind": "custom",
            "entrypoint": "ray_jobs.examples.mlp:train_func",
            "max_steps": STEPS,
            "checkpoint_every_steps": EVERY,
            "train_loop_config": {"lr": 0.01, "hidden": 256, "batch_size": 256, "log_every": LOG_EVERY},
            "scaling": {"num_workers": 2},
            **overrides,
        }
    )


async def status_of(client, workflow_id: str) -> RunStatus | None:
    try:
        return await patient_query(client.get_workflow_handle(workflow_id), CheckpointedTrainingWorkflow.status)
    except Exception:
        return None


async def killed_run(stack, config_file: Path) -> tuple[TrainingResult, RunStatus, list[int]]:
    """Through `ttrain train`, as a user starts it; one of its two Train workers SIGKILLed after the first commit."""
    client = await connect(stack)
    out = await asyncio.to_thread(
        ttrain, "train", "--config", str(config_file), "--run-id", "it-custom-killed", "--detach"
    )
    assert out.returncode == 0, out.stderr
    job = (await wait_until(lambda: _attempt(client, "it-custom-killed"), 240, "the first job")).ray_job_id
    pids = await wait_until(
        lambda: (p := train_worker_pids(stack, job)) and len(p) == 2 and p, 120, "both Train workers", interval=0.2
    )
    run_uri = str(Path(stack.storage_uri) / "runs" / "it-custom-killed")
    await wait_until(lambda: read_commits(run_uri, job, 0), 120, "the first committed checkpoint", interval=0.05)
    os.kill(pids[0], signal.SIGKILL)  # a lost worker, mid-run
    handle = client.get_workflow_handle("it-custom-killed", result_type=TrainingResult)
    result = await wait_for_result(handle)
    return result, await patient_query(handle, CheckpointedTrainingWorkflow.status), pids


async def _attempt(client, run_id: str):
    s = await status_of(client, run_id)
    return s.attempts[0] if s and s.attempts else None


async def finished_run(stack, run_id: str, config: CustomTrainConfig) -> tuple[TrainingResult, RunStatus]:
    client = await connect(stack)
    handle = await start_training(client, stack, run_id, config)
    result = await wait_for_result(handle)
    return result, await patient_query(handle, CheckpointedTrainingWorkflow.status)


async def failed_run(stack, run_id: str, config: CustomTrainConfig) -> tuple[str, RunStatus]:
    client = await connect(stack)
    handle = await start_training(client, stack, run_id, config)
    with pytest.raises(WorkflowFailureError) as failed:
        await wait_for_result(handle)
    return root_message(failed.value), await patient_query(handle, CheckpointedTrainingWorkflow.status)


def mlflow_env(tmp: Path) -> dict:
    """A real local MLflow store (SQLite), set for the job through the config's runtime_env."""
    return {"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "MLFLOW_EXPERIMENT_NAME": "it-custom"}}


async def custom_sweep(stack, runtime_env: dict) -> tuple[SweepState, RunStatus, RunStatus]:
    base = custom_config(max_steps=40, checkpoint_every_steps=10, scaling={"num_workers": 1}, runtime_env=runtime_env)
    base = base.model_copy(update={"train_loop_config": {"hidden": 16, "batch_size": 32}})
    spec = SweepSpec(
        id="it-custom-sweep",
        strategy="ladder",
        ladder={"min_steps": 20, "max_steps": 40, "eta": 2},
        space={"params": {"train_loop_config.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1}}},
        base=base,
        trials=2,
        max_concurrency=2,
        seed=4,
    )
    options = RunOptions(storage_uri=stack.storage_uri, training_queue=stack.training_queue, heartbeat_timeout_s=5)
    client = await connect(stack)
    handle = await client.start_workflow(
        SweepWorkflow.run, SweepState(spec=spec, options=options), id=spec.id, task_queue=stack.orchestration_queue
    )
    state = await wait_for_result(handle)
    (promoted,) = [t for t in state.trials if len(t.results) == 2]
    return state, await status_of(client, f"{promoted.run_id}-r0"), await status_of(client, f"{promoted.run_id}-r1")


BAD_LOOPS = """
import tempfile
import ray.train
from ray_jobs import loop


def no_step(config):
    for step in loop.current().steps():
        with tempfile.TemporaryDirectory() as d:
            ray.train.report({"loss": 1.0}, checkpoint=ray.train.Checkpoint.from_directory(d))


def returns_early(config):
    for step in loop.current().steps():
        return
"""


WAITS_ONCE = """
import os
import tempfile
import time
import ray.train
from ray_jobs import loop


def waits_once(config):
    # lr falls with the step, so the best checkpoint by lr is the first; the first job waits after step 20 (a marker
    # file says one did), where the run is cancelled
    run = loop.current()
    first = not os.path.exists(config["marker"])
    open(config["marker"], "a").close()
    for step in run.steps():
        if run.checkpoint_due(step):
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "step"), "w") as f:
                    f.write(str(step))
                ray.train.report({"step": step, "lr": 1.0 / step}, checkpoint=ray.train.Checkpoint.from_directory(d))
        if first and step == 20:
            time.sleep(240)  # the test cancels it here within seconds (a failed fixture frees the slot soon)
"""


async def relaunched_run(stack, config_file: Path) -> dict:
    """Cancelled after its second checkpoint, then started again with the same command, as a user does."""
    client = await connect(stack)
    command = ("train", "--config", str(config_file), "--run-id", "it-custom-relaunch")
    first = await asyncio.to_thread(ttrain, *command, "--detach")
    handle = client.get_workflow_handle("it-custom-relaunch")

    async def waiting_at_step_20() -> bool:
        status = await status_of(client, "it-custom-relaunch")  # a poll that times out is asked again
        return status is not None and [c.step for c in status.checkpoints] == [10, 20]

    # with the module's nine other runs on the stack's four training slots, its snapshot alone can wait minutes
    await wait_until(waiting_at_step_20, 900, "the checkpoint at step 20")
    cancelled = await asyncio.to_thread(ttrain, "cancel", "it-custom-relaunch")
    again = await asyncio.to_thread(ttrain, *command, timeout=900)
    return {
        "first": first,
        "cancelled": cancelled,
        "again": again,
        "status": await patient_query(handle, CheckpointedTrainingWorkflow.status),
    }


TIMINGS = {"samples_per_s"}  # measured, so never equal across runs
CUSTOM_EXPERIMENTS = """\
id: it-custom-set
metric: eval_accuracy
defaults:
  kind: custom
  entrypoint: ray_jobs.examples.mlp:train_func
  max_steps: 10
  checkpoint_every_steps: 10
  train_loop_config: {batch_size: 32}
experiments:
  - id: narrow
    train_loop_config: {hidden: 8}
  - id: wide
    train_loop_config: {hidden: 64}
"""


@pytest.fixture(scope="module")
def custom_runs(stack, tmp_path_factory) -> dict:
    """Every custom-loop run of this module at once, side by side on the one stack: each fault touches its own job.
    The bad loops ship in a `runtime_env.working_dir` (uploaded by Ray), as a user's own code would."""
    tmp = tmp_path_factory.mktemp("custom")
    config_file = tmp / "custom.yaml"
    config_file.write_text(yaml.safe_dump(custom_config().model_dump(mode="json")))
    code = tmp / "code"
    code.mkdir()
    (code / "bad_loops.py").write_text(BAD_LOOPS)
    (code / "relaunch_loop.py").write_text(WAITS_ONCE)
    relaunch_file = tmp / "relaunch.yaml"
    relaunch = custom_config(
        entrypoint="relaunch_loop:waits_once",
        max_steps=40,
        checkpoint_every_steps=10,
        keep_last=1,
        best_metric="lr",
        best_mode="max",
        scaling={"num_workers": 1},
        train_loop_config={"marker": str(tmp / "waited")},
        runtime_env={"working_dir": str(code)},
    )
    relaunch_file.write_text(yaml.safe_dump(relaunch.model_dump(mode="json")))

    def bad(entrypoint: str) -> CustomTrainConfig:
        return custom_config(
            entrypoint=entrypoint, max_steps=5, scaling={"num_workers": 1}, runtime_env={"working_dir": str(code)}
        )

    hf = custom_config(
        entrypoint="ray_jobs.examples.hf_classifier:train_func",
        max_steps=20,
        checkpoint_every_steps=10,
        keep_last=1,
        best_metric="eval_accuracy",
        best_mode="max",
        scaling={"num_workers": 1},
        train_loop_config={"num_hidden_layers": 1, "rows": 200, "batch_size": 8, "max_length": 32},
        runtime_env=mlflow_env(tmp),
    )

    experiments_file = tmp / "experiments.yaml"
    experiments_file.write_text(CUSTOM_EXPERIMENTS)
    scaled = custom_config(max_steps=20, checkpoint_every_steps=20, train_loop_config={"batch_size": 64, "hidden": 16})
    scaleup_file = tmp / "scaleup.yaml"
    scaleup_file.write_text(yaml.safe_dump(scaled.model_dump(mode="json")))
    scaleup = ("scaleup", "--config", str(scaleup_file), "--workers", "1,2", "--id", "it-custom-scaleup", "--json")

    async def all_at_once():
        return await asyncio.gather(
            killed_run(stack, config_file),
            finished_run(stack, "it-custom-reference", custom_config()),
            finished_run(stack, "it-custom-hf", hf),
            custom_sweep(stack, mlflow_env(tmp)),
            failed_run(stack, "it-custom-no-step", bad("bad_loops:no_step")),
            failed_run(stack, "it-custom-early", bad("bad_loops:returns_early")),
            failed_run(stack, "it-custom-typo", bad("bad_loops:no_such_function")),
            asyncio.to_thread(ttrain, "experiments", str(experiments_file), timeout=600),
            asyncio.to_thread(ttrain, *scaleup, timeout=600),
            relaunched_run(stack, relaunch_file),
        )

    names = ("killed", "reference", "hf", "sweep", "no_step", "early", "typo", "experiments", "scaleup", "relaunch")
    found = dict(zip(names, run(all_at_once()), strict=True))
    return {**found, "mlflow": f"sqlite:///{tmp}/mlflow.db", "storage": stack.storage_uri}


@pytest.mark.integration
def test_a_custom_loop_on_two_workers_killed_mid_run_ends_with_the_weights_of_an_uninterrupted_run(custom_runs):
    (result, status, pids), (reference, _) = custom_runs["killed"], custom_runs["reference"]
    assert len(set(pids)) == 2  # two Ray Train workers, one DDP group
    assert result.resumes >= 1
    retry = status.attempts[1]
    assert not retry.reattached and retry.resumed_from_step >= EVERY  # from the ledger, not from step 0
    assert [c.step for c in status.checkpoints if not c.deleted][-1] == STEPS
    assert result.steps == reference.steps == STEPS
    a = load_file(os.path.join(reference.final_checkpoint.uri, "model.safetensors"))
    b = load_file(os.path.join(result.final_checkpoint.uri, "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"
    assert result.metrics["eval_accuracy"] == reference.metrics["eval_accuracy"] > 0.6  # it learned the spirals
    # the metric history: every report once, across both jobs, with the values of the uninterrupted run
    runs = Path(result.final_checkpoint.uri).parents[2]  # <runs>/<run>/<job>/<checkpoint>
    history, twin = read_history(str(runs / "it-custom-killed")), read_history(str(runs / "it-custom-reference"))
    assert [r.step for r in history] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) == [r.step for r in twin]
    jobs = {f.parent.parent.name for f in (runs / "it-custom-killed").glob("*/metrics/*.jsonl")}
    assert len(jobs) == 2  # the history spans the killed job and its successor
    for row, reference_row in zip(history, twin, strict=True):
        assert row.values.keys() == reference_row.values.keys() >= {"loss", "lr"}
        same = (k for k in row.values if k not in TIMINGS)
        assert all(abs(row.values[k] - reference_row.values[k]) <= 1e-6 for k in same), row.step
    # TensorBoard sees the same curve: the retry's event file purges the steps after its checkpoint
    board = tensorboard_scalars(runs / "it-custom-killed" / "tensorboard")
    assert sorted(step for step, _ in board["loss"]) == [r.step for r in history]
    assert all(abs(v - h.values["loss"]) <= 1e-6 for (_, v), h in zip(sorted(board["loss"]), history, strict=True))


@pytest.mark.integration
def test_a_ladder_sweep_over_a_custom_loop_promotes_from_the_rung_checkpoint(custom_runs):
    state, rung0, rung1 = custom_runs["sweep"]
    assert all(t.results[0].steps == 20 for t in state.trials)
    (promoted,) = [t for t in state.trials if len(t.results) == 2]
    assert promoted.results[0].score == max(t.results[0].score for t in state.trials)
    assert [r.steps for r in promoted.results] == [20, 40] and promoted.state == "completed"
    assert len({t.params["train_loop_config.lr"] for t in state.trials}) == 2  # drawn for the loop's own config
    first = rung1.attempts[0]
    assert first.resumed_from_step == 20  # the step counter goes on from the rung checkpoint
    if first.reattached:  # a warm promotion: the rung-0 job trained on
        assert first.ray_job_id == rung0.attempts[-1].ray_job_id
    assert [c.step for c in rung0.checkpoints] == [10, 20]
    assert [c.step for c in rung1.checkpoints if c.step > 20] == [30, 40]  # steps 21..40 once


@pytest.mark.integration
def test_the_hugging_face_example_checkpoints_plain_save_pretrained_folders(custom_runs):
    from transformers import AutoModelForSequenceClassification

    result, status = custom_runs["hf"]
    assert [c.step for c in status.checkpoints] == [10, 20]
    assert result.steps == 20 and 0.0 <= result.metrics["eval_accuracy"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(result.final_checkpoint.uri)
    assert model.config.num_hidden_layers == 1 and model.config.num_labels == 2


@pytest.mark.integration
def test_a_custom_run_keeps_evaluates_and_exports_its_best_checkpoint(custom_runs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    result, status = custom_runs["hf"]
    scores = {c.step: c.metrics["eval_accuracy"] for c in status.checkpoints}
    top = max(scores.values())
    best_step = min(step for step, score in scores.items() if score == top)
    assert status.best_checkpoint.step == result.best_checkpoint.step == best_step
    kept = {c.step for c in status.checkpoints if not c.deleted}
    assert kept == {best_step, 20}  # keep_last 1, and the best
    assert all(Path(c.uri).exists() == (c.step in kept) for c in status.checkpoints)

    out = ttrain("eval", "it-custom-hf", "--checkpoint", "best", "--json")
    assert out.returncode == 0, out.stderr
    evaluated = json.loads(out.stdout)
    assert evaluated["checkpoint_step"] == best_step
    assert evaluated["report"]["source"] == "reported by the training loop"
    assert evaluated["report"]["eval_accuracy"] == top

    out = ttrain("export", "it-custom-hf", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    assert f"checkpoint step {best_step} (the best by eval_accuracy)" in out.stdout
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")  # the loop's save_pretrained folder
    assert model.config.num_hidden_layers == 1
    assert_one_line_error(
        ttrain("infer", "it-custom-hf", "a fine film"), 1, "is a custom run", "ttrain export it-custom-hf DIR"
    )


@pytest.mark.integration
def test_an_experiments_file_of_custom_loops_ranks_them_by_what_they_reported(stack, custom_runs):
    out = custom_runs["experiments"]
    assert out.returncode == 0, out.stderr
    shown = ttrain("results", "it-custom-set", "--json")
    assert shown.returncode == 0, shown.stderr
    rows = {r["experiment"]: r for r in json.loads(shown.stdout)["rows"]}
    assert {name: r["state"] for name, r in rows.items()} == {"narrow": "completed", "wide": "completed"}
    assert rows["narrow"]["config_diff"] == {"train_loop_config.hidden": 8}

    async def statuses() -> dict[str, RunStatus]:
        client = await connect(stack)
        return {name: await status_of(client, f"it-custom-set-{name}") for name in rows}

    for name, status in run(statuses()).items():
        row = rows[name]
        assert row["metrics"]["eval_accuracy"] == status.checkpoints[-1].metrics["eval_accuracy"]  # as reported
        assert row["metrics"]["step"] == 10 and row["cached_from"] is None


@pytest.mark.integration
def test_a_custom_loop_scales_up_across_worker_counts_with_the_throughput_it_reports(custom_runs):
    out = custom_runs["scaleup"]
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert (table["throughput"], table["dataset"]) == ("samples/s", "custom loop ray_jobs.examples.mlp:train_func")
    one, two = table["rows"]
    assert [(r["workers"], r["state"], r["global_batch"]) for r in (one, two)] == [
        (1, "completed", 64),
        (2, "completed", 64),
    ]
    assert one["images_per_s"] > 0 and two["images_per_s"] > 0 and one["efficiency"] == 1.0
    assert two["efficiency"] == pytest.approx(two["images_per_s"] / 2 / one["images_per_s"])
    assert 0.0 < two["final_accuracy"] <= 1.0


@pytest.mark.integration
def test_mlflow_holds_each_run_with_its_params_metric_history_and_final_checkpoint(custom_runs):
    """One MLflow run per ttrain run; a sweep's trials nested under one run of the sweep, finished when the sweep is;
    a trial trained rung by rung (two jobs) has each step of its history once."""
    client = tracking.opened(custom_runs["mlflow"])  # a job may still be opening it
    experiment = client.get_experiment_by_name("it-custom").experiment_id
    state, _, _ = custom_runs["sweep"]
    expected = {"it-custom-hf", "it-custom-sweep", *(t.run_id for t in state.trials)}

    (promoted,) = [t for t in state.trials if len(t.results) == 2]
    seen: dict[str, str] = {}

    def exported() -> dict | None:
        """A job exports as it ends, after its run has its last checkpoint (the sweep may have ended by then), and a
        trial left waiting at its rung once it leaves, within 20 s: every run, and the promoted trial's last job."""
        found = {
            r.data.tags.get("ttrain.run_id", r.data.tags.get("ttrain.sweep_id")): r
            for r in client.search_runs([experiment])
        }
        seen.update({name: r.info.status for name, r in found.items()})
        if set(found) != expected or found[promoted.run_id].info.status != "FINISHED":
            return None
        steps = [m.step for m in client.get_metric_history(found[promoted.run_id].info.run_id, "loss")]
        seen["promoted trial's loss steps"] = str(steps)
        return found if len(steps) >= 4 else None

    what = f"every run of {sorted(expected)} in MLflow, the promoted trial's whole history"
    # a job's export may take its lock wait and its own bound (`tracking.LOCK_WAIT_S` + `EXPORT_WAIT_S`) after the run
    runs = run(wait_until(exported, tracking.LOCK_WAIT_S + tracking.EXPORT_WAIT_S, lambda: f"{what}; last seen {seen}"))
    sweep = runs["it-custom-sweep"].info.run_id
    assert runs["it-custom-sweep"].info.status == "FINISHED"  # closed by the sweep as it ended (its trials cannot)
    for trial in state.trials:
        tracked = runs[trial.run_id]
        assert tracked.data.tags["mlflow.parentRunId"] == sweep
        assert float(tracked.data.params["train_loop_config.lr"]) == trial.params["train_loop_config.lr"]
    trial = runs[promoted.run_id].info.run_id
    assert [m.step for m in client.get_metric_history(trial, "loss")] == [10, 20, 30, 40]  # two jobs, each step once
    assert runs[promoted.run_id].info.status == "FINISHED"
    assert "model.safetensors" in [f.path.split("/")[-1] for f in client.list_artifacts(trial, "checkpoint")]
    hf = runs["it-custom-hf"]
    assert hf.data.params["entrypoint"] == "ray_jobs.examples.hf_classifier:train_func"
    assert [m.step for m in client.get_metric_history(hf.info.run_id, "eval_accuracy")] == [10, 20]
    assert "config.json" in [f.path.split("/")[-1] for f in client.list_artifacts(hf.info.run_id, "checkpoint")]
    assert hf.info.artifact_uri.startswith(str(Path(custom_runs["storage"]) / "mlflow" / "it-custom"))  # not ./mlruns


@pytest.mark.integration
def test_a_loop_that_breaks_the_contract_fails_at_once_with_what_to_change(custom_runs):
    """A checkpoint without a step, a loop that returns before its stop, and an entrypoint that does not import
    each fail the run on its first attempt."""
    (no_step, s1), (early, s2), (typo, s3) = custom_runs["no_step"], custom_runs["early"], custom_runs["typo"]
    assert "report {'step': N, ...} with it" in no_step
    assert "the loop returned at step 1, before step 5" in early
    assert "entrypoint 'bad_loops:no_such_function' cannot be imported" in typo
    assert [len(s.attempts) for s in (s1, s2, s3)] == [1, 1, 1]  # deterministic: never retried


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"kind": "custom", "max_steps": 10}, "entrypoint: Field required"),
        ({"kind": "custom", "entrypoint": "not a function", "max_steps": 10}, "entrypoint: String should match"),
        ({"kind": "custom", "entrypoint": "m:f"}, "max_steps: Field required"),
        ({"kind": "custom", "entrypoint": "m:f", "max_steps": 10, "lr": 0.1}, "lr: Extra inputs are not permitted"),
        ({"kind": "robot", "max_steps": 10}, "kind 'robot' is not one of"),
    ],
)
def test_bad_custom_configs_are_refused_in_one_line_before_any_server_is_asked(tmp_path, config, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    out = ttrain("train", "--config", str(path))
    assert_one_line_error(out, 2, needle)


@pytest.mark.integration
def test_a_cancelled_run_started_again_goes_on_from_its_ledger_and_keeps_its_best(custom_runs):
    got = custom_runs["relaunch"]
    assert got["first"].returncode == 0, got["first"].stderr
    assert got["cancelled"].returncode == 0, got["cancelled"].stderr
    assert got["again"].returncode == 0 and "had been cancelled: started again" in got["again"].stderr, got["again"]
    status = got["status"]
    assert status.attempts[0].resumed_from_step == 20  # from the newest checkpoint, not from step 0
    # the earlier execution's best (lr falls with the step: step 10) is still the run's best, and kept
    assert status.best_checkpoint is not None and status.best_checkpoint.step == 10
    kept = {c.step for c in status.checkpoints if not c.deleted}
    assert kept == {10, 40}  # keep_last 1 and the best, across both executions: step 20 pruned, not orphaned
    assert all(Path(c.uri).exists() == (c.step in kept) for c in status.checkpoints)
