"""Record real histories of every workflow type, for `tests/test_replay.py` to replay against the current code.

Workflows run for days: a change to their decisions must still replay what a running workflow already recorded.
These files are such recordings, made on the real stack (Temporal dev server, Ray head, both workers, tiny real
training), so CI fails the build when a change would break a workflow that is running somewhere.

    python -m tests.histories.record [--only NAME ...]

Record again (new files, never overwrite old ones: old histories are the point) whenever a workflow gains a
decision path the existing files do not exercise. Names carry the time they were recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench._stack import log, running_stack  # starts its own stack on the bench ports; import before ray
from orchestration.client import connect
from orchestration.settings import Settings
from orchestration.sweeps.models import SweepSpec, SweepState
from orchestration.types import (
    CoordinatorRequest,
    EvaluationRequest,
    Experiment,
    InferenceRequest,
    RunOptions,
    ScaleUpRequest,
    TrainingRequest,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.inference import EvaluationWorkflow, InferenceWorkflow
from orchestration.workflows.scaleup import ScaleUpWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.specs import ImageTrainConfig
from tests.helpers import tiny_config

HERE = Path(__file__).resolve().parent
STAMP = datetime.datetime.now().strftime("%Y-%m-%dT%H%M")


async def save_all(client, workflow_id: str, name: str) -> list[Path]:
    """Every run of `workflow_id` (continue-as-new makes several), oldest first."""
    runs = [wf async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    runs.sort(key=lambda wf: wf.start_time)
    paths = []
    for i, wf in enumerate(runs):
        history = await client.get_workflow_handle(workflow_id, run_id=wf.run_id).fetch_history()
        path = HERE / f"{STAMP}-{name}{f'-run{i}' if len(runs) > 1 else ''}.json"
        path.write_text(json.dumps(json.loads(history.to_json()), separators=(",", ":")) + "\n")
        paths.append(path)
        log(f"recorded {path.name}: {len(history.events)} events")
    return paths


def options(settings: Settings, **kw) -> RunOptions:
    return RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue, **kw)


async def training(settings: Settings, client) -> None:
    req = TrainingRequest(run_id="rec-train", config=tiny_config(), options=options(settings))
    await client.execute_workflow(
        CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue=settings.orchestration_queue
    )
    await save_all(client, req.run_id, "training")
    inf = InferenceRequest(run_id=req.run_id, texts=["a fine film"])
    await client.execute_workflow(InferenceWorkflow.run, inf, id="rec-infer", task_queue=settings.orchestration_queue)
    await save_all(client, "rec-infer", "inference")
    ev = EvaluationRequest(run_id=req.run_id)
    await client.execute_workflow(EvaluationWorkflow.run, ev, id="rec-eval", task_queue=settings.orchestration_queue)
    await save_all(client, "rec-eval", "evaluation")


async def training_retry(settings: Settings, client) -> None:
    """A run whose Ray job is stopped after its first checkpoint: the second attempt resumes from the ledger."""
    from ray.job_submission import JobSubmissionClient

    cfg = tiny_config(dataset={"max_rows": 300}, max_steps=30, checkpoint_every_steps=10)
    req = TrainingRequest(run_id="rec-train-retry", config=cfg, options=options(settings))
    handle = await client.start_workflow(
        CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue=settings.orchestration_queue
    )
    while not (status := await handle.query(CheckpointedTrainingWorkflow.status)).checkpoints:
        await asyncio.sleep(0.5)
    JobSubmissionClient(settings.ray_dashboard_url).stop_job(status.ray_job_id)
    await handle.result()
    await save_all(client, req.run_id, "training-retry")


async def training_faults(settings: Settings, client) -> None:
    """The workflow-owned paths: a diverged run (fails, stops its jobs), a run continued as new, a cancelled run."""
    from temporalio.client import WorkflowFailureError

    diverged = tiny_config(lr=1.0, weight_decay=100.0, warmup_ratio=0.0, max_steps=30)
    req = TrainingRequest(run_id="rec-diverged", config=diverged, options=options(settings))
    with contextlib.suppress(WorkflowFailureError):  # it fails: that is what it records
        await client.execute_workflow(
            CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue=settings.orchestration_queue
        )
    await save_all(client, req.run_id, "training-diverged")

    long = tiny_config(max_steps=16, checkpoint_every_steps=1, keep_last=2)
    req = TrainingRequest(run_id="rec-continued", config=long, options=options(settings, history_limit=50))
    await client.execute_workflow(
        CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue=settings.orchestration_queue
    )
    await save_all(client, req.run_id, "training-continued")

    req = TrainingRequest(run_id="rec-cancelled", config=tiny_config(max_steps=60), options=options(settings))
    handle = await client.start_workflow(
        CheckpointedTrainingWorkflow.run, req, id=req.run_id, task_queue=settings.orchestration_queue
    )
    while not (await handle.query(CheckpointedTrainingWorkflow.status)).checkpoints:
        await asyncio.sleep(0.5)
    await handle.cancel()
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    await save_all(client, req.run_id, "training-cancelled")


async def coordinator(settings: Settings, client) -> None:
    exps = [
        Experiment(id="a", config=tiny_config(lr=1e-4)),
        Experiment(id="a-again", config=tiny_config(lr=1e-4)),
        Experiment(id="broken", config=tiny_config(dataset={"path": "/nonexistent.csv"})),
    ]
    req = CoordinatorRequest(experiment_id="rec-exp", experiments=exps, options=options(settings))
    await client.execute_workflow(
        CoordinatorWorkflow.run, req, id=req.experiment_id, task_queue=settings.orchestration_queue
    )
    await save_all(client, req.experiment_id, "coordinator")


async def sweeps(settings: Settings, client) -> None:
    space = {"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}}
    simulated = [
        SweepSpec(
            id="rec-sweep-ladder",
            strategy="ladder",
            ladder={"min_steps": 10, "max_steps": 90, "eta": 3},
            space=space,
            trainer="simulated",
            trials=40,
            max_concurrency=4,
            history_limit=200,  # continue-as-new twice or more
        ),
        SweepSpec(
            id="rec-sweep-tpe",
            strategy="tpe",
            space=space,
            trainer="simulated",
            trials=8,
            base={"max_steps": 30},
        ),
    ]
    for spec in simulated:
        state = SweepState(spec=spec, options=options(settings))
        await client.execute_workflow(SweepWorkflow.run, state, id=spec.id, task_queue=settings.orchestration_queue)
        await save_all(client, spec.id, spec.id.removeprefix("rec-"))
    real = SweepSpec(
        id="rec-sweep-real",
        strategy="ladder",
        ladder={"min_steps": 5, "max_steps": 15, "eta": 3},
        space=space,
        base=tiny_config(max_steps=None),
        trials=3,
        max_concurrency=2,
    )
    state = SweepState(spec=real, options=options(settings))
    await client.execute_workflow(SweepWorkflow.run, state, id=real.id, task_queue=settings.orchestration_queue)
    await save_all(client, real.id, "sweep-real")


async def scaleup(settings: Settings, client) -> None:
    cfg = ImageTrainConfig(
        dataset="fashion-mnist", max_train_rows=512, max_steps=4, batch_size=64, width=4, checkpoint_every_steps=2
    )
    req = ScaleUpRequest(scaleup_id="rec-scaleup", config=cfg, workers=[1, 64], options=options(settings))
    await client.execute_workflow(ScaleUpWorkflow.run, req, id=req.scaleup_id, task_queue=settings.orchestration_queue)
    await save_all(client, req.scaleup_id, "scaleup")


RECORDERS: dict[str, Callable[[Settings, object], Awaitable[None]]] = {
    "training": training,
    "training-retry": training_retry,
    "training-faults": training_faults,
    "coordinator": coordinator,
    "sweeps": sweeps,
    "scaleup": scaleup,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(RECORDERS), help="record these only")
    args = parser.parse_args()

    async def go(settings: Settings) -> None:
        client = await connect(settings)
        for name in args.only or RECORDERS:
            log(f"recording {name}")
            await RECORDERS[name](settings, client)

    with running_stack() as settings:
        asyncio.run(go(settings))


if __name__ == "__main__":
    main()
