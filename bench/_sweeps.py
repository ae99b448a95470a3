"""What the sweep benches share: a Temporal dev server and a sweep worker in this process, and running one sweep.

Sweeps with the simulated or proxy trainer need no Ray and no training worker: their segments are activities of the
sweep worker, so the whole service fits in the bench's own process (its CPU is `time.process_time()`), next to a
dev server it starts and stops. The converter is the one `ttrain` uses (large payloads as claim checks), its blobs
under one temp storage root that every sweep of the session shares.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestration.activities.sweeps import SWEEP_ACTIVITIES
from orchestration.payloads import data_converter
from orchestration.sweeps.models import SEARCH_ATTRIBUTES, SweepSpec, SweepState
from orchestration.types import RunOptions
from orchestration.workflows.sweep import SweepWorkflow

QUEUE = "bench-sweeps"
STORAGE = tempfile.mkdtemp(prefix="ttrain-bench-sweeps-")


@contextlib.asynccontextmanager
async def sweep_service(max_concurrent_activities: int | None = None) -> AsyncIterator[Client]:
    temporal = str(Path(sys.executable).parent / "temporal")
    async with (
        await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal,
            data_converter=data_converter(STORAGE),
            search_attributes=SEARCH_ATTRIBUTES,
        ) as env,
        Worker(
            env.client,
            task_queue=QUEUE,
            workflows=[SweepWorkflow],
            activities=SWEEP_ACTIVITIES,
            max_concurrent_activities=max_concurrent_activities,
        ),
    ):
        yield env.client


async def run_sweep(client: Client, spec: SweepSpec) -> SweepState:
    """The sweep to its end, its checkpoints in a fresh folder under the session's storage."""
    state = SweepState(spec=spec, options=RunOptions(storage_uri=tempfile.mkdtemp(prefix=f"{spec.id}-", dir=STORAGE)))
    handle = await client.start_workflow(SweepWorkflow.run, state, id=spec.id, task_queue=QUEUE)
    return await handle.result()
