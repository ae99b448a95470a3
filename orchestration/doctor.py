"""`ttrain doctor`: is everything this configuration points at reachable and usable? One line per check.

Each check returns (ok, line); the CLI prints them all and exits non-zero if any failed, so a wrong address, a
missing worker or unwritable storage is named directly instead of surfacing later as a hung run.
"""

from __future__ import annotations

import asyncio
import uuid

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from orchestration.client import connect
from orchestration.ray_submission import alive_nodes
from orchestration.settings import Settings
from orchestration.types import control_queue
from ray_jobs import storage

Check = tuple[bool, str]


async def check_temporal(settings: Settings) -> tuple[Check, object | None]:
    try:
        client = await asyncio.wait_for(connect(settings), 10)
    except Exception as exc:
        return (False, f"temporal: cannot connect to {settings.temporal_address}: {exc}"), None
    return (True, f"temporal: connected to {settings.temporal_address}, namespace {client.namespace}"), client


async def check_queue(client, queue: str, kind: TaskQueueType.ValueType, what: str) -> Check:
    resp = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=queue), task_queue_type=kind)
    )
    n = len(resp.pollers)
    return (n > 0, f"workers: {n} polling {queue} for {what}" if n else f"workers: none polling {queue} for {what}")


def check_ray(settings: Settings) -> list[Check]:
    from ray.job_submission import JobSubmissionClient

    try:
        JobSubmissionClient(settings.ray_dashboard_url).list_jobs()
    except Exception as exc:
        return [(False, f"ray: Jobs API at {settings.ray_dashboard_url} unusable: {' '.join(str(exc).split())[:200]}")]
    checks = [(True, f"ray: Jobs API at {settings.ray_dashboard_url} answers")]
    try:
        nodes = alive_nodes(settings.ray_dashboard_url)
    except Exception as exc:
        return [*checks, (False, f"ray: cannot list nodes: {' '.join(str(exc).split())[:200]}")]
    for n in nodes:
        res = n.resources_total or {}
        checks.append(
            (True, f"ray node {n.node_ip} ({n.node_id[:8]}): {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU")
        )
    return checks


def check_storage(settings: Settings) -> Check:
    probe = storage.join(settings.storage_uri, f".doctor-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes(probe, b"ttrain")
        ok = storage.read_bytes(probe) == b"ttrain"
        fs, path = storage.resolve(probe)
        fs.delete_file(path)
    except Exception as exc:
        return False, f"storage: {settings.storage_uri} is not writable/readable: {exc}"
    return ok, f"storage: {settings.storage_uri} write/read/delete ok"


async def run_checks(settings: Settings) -> list[Check]:
    (temporal_ok, temporal_line), client = await check_temporal(settings)
    checks: list[Check] = [(temporal_ok, temporal_line)]
    if client is not None:
        checks.append(
            await check_queue(client, settings.orchestration_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, "workflows")
        )
        checks.append(
            await check_queue(client, settings.training_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, "training")
        )
        checks.append(  # cancels stop a run's jobs here: without it a cancelled run waits for a worker to return
            await check_queue(
                client, control_queue(settings.training_queue), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, "stopping jobs"
            )
        )
    checks += await asyncio.to_thread(check_ray, settings)
    checks.append(await asyncio.to_thread(check_storage, settings))
    return checks
