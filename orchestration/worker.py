"""Temporal workers, one per task queue: `training` drives Ray jobs, `orchestration` runs workflows and inference.

The split lets training workers sit next to the GPU cluster and scale with it, while workflows and light CPU work
run anywhere. Both use the pydantic data converter through `orchestration.client.connect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import timedelta
from typing import Literal

from temporalio.client import Client
from temporalio.worker import Worker

from orchestration.client import connect
from orchestration.settings import Settings
from orchestration.types import control_queue
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.inference import EvaluationWorkflow, InferenceWorkflow
from orchestration.workflows.scaleup import ScaleUpWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow

Queue = Literal["training", "orchestration"]
# Every workflow type the orchestration worker runs; the replay test replays a recorded history of each.
WORKFLOWS = [
    CheckpointedTrainingWorkflow,
    InferenceWorkflow,
    EvaluationWorkflow,
    CoordinatorWorkflow,
    SweepWorkflow,
    ScaleUpWorkflow,
]


CONTROL_SLOTS = 8  # concurrent job stops a training worker serves beside its trainings
# A cancel reaches an activity with the reply to its next heartbeat, and the SDK sends heartbeats at most every
# 0.8 x heartbeat_timeout (24 s by default): an attempt heartbeats every poll, and each is sent, so a cancelled run
# lets go of its job within seconds (`--replace`, `ttrain sweep-ctl cancel`, a cancelled experiment set).
HEARTBEAT_SENT_EVERY = timedelta(seconds=2)


def build_workers(client: Client, queue: Queue, settings: Settings) -> list[Worker]:
    if queue == "training":
        from orchestration.activities.scaleup import ClusterActivities
        from orchestration.activities.snapshot import create_snapshot
        from orchestration.activities.training import TrainingActivities

        training = TrainingActivities(settings)
        return [
            Worker(
                client,
                task_queue=settings.training_queue,
                activities=[
                    create_snapshot,
                    training.train,
                    training.stop_run_jobs,  # where runs that started before the control queue schedule it
                    ClusterActivities(settings).cluster_capacity,
                ],
                max_concurrent_activities=settings.max_concurrent_trainings,
                max_heartbeat_throttle_interval=HEARTBEAT_SENT_EVERY,
            ),
            # a cancelled run's jobs are stopped at once, not after a days-long training frees a slot
            Worker(
                client,
                task_queue=control_queue(settings.training_queue),
                activities=[training.stop_run_jobs, training.close_sweep_tracking],
                max_concurrent_activities=CONTROL_SLOTS,
            ),
        ]
    from orchestration.activities.inference import evaluate, predict, resolve_run
    from orchestration.activities.run_cache import lookup_run, remember_run
    from orchestration.activities.scaleup import plot_scaleup
    from orchestration.activities.sweeps import SWEEP_ACTIVITIES

    orchestration = Worker(
        client,
        task_queue=settings.orchestration_queue,
        workflows=WORKFLOWS,
        activities=[
            resolve_run,
            predict,
            evaluate,
            lookup_run,
            remember_run,
            plot_scaleup,
            *SWEEP_ACTIVITIES,
        ],
    )
    return [orchestration]


async def run_worker(queue: Queue, settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # reading a run's checkpoints logs at INFO every poll
    client = await connect(settings)
    workers = build_workers(client, queue, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as running:
        for worker in workers:
            await running.enter_async_context(worker)
        logging.info("ttrain %s worker polling %s", queue, ", ".join(w.task_queue for w in workers))
        await stop.wait()
