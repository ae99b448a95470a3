"""What ttrain has on a Temporal namespace, and the two things a person does to any of it: cancel it, read its logs.

Runs, sweeps, experiment sets and scale-ups are workflows: Temporal's visibility lists them (by workflow type), and
a cancel is Temporal's cancel, which each workflow turns into stopping its Ray jobs before it closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from orchestration.errors import CliError
from orchestration.ray_submission import RaySubmission, RayUnavailable
from orchestration.types import Model

KINDS = {
    "CheckpointedTrainingWorkflow": "run",
    "SweepWorkflow": "sweep",
    "CoordinatorWorkflow": "experiments",
    "ScaleUpWorkflow": "scale-up",
}
CANCEL_WAIT_S = 120.0  # a cancelled run closes once its Ray jobs have stopped: seconds, unless Ray is down


class Listed(Model):
    id: str
    kind: str
    status: str
    started: datetime
    closed: datetime | None = None


async def list_work(client: Client, kinds: list[str] | None = None, limit: int = 50) -> list[Listed]:
    """Newest first. `kinds`: some of `KINDS`' values (all when None)."""
    unknown = sorted(set(kinds or []) - set(KINDS.values()))
    if unknown or kinds == []:
        raise CliError(f"kinds {unknown or []} are not among {sorted(KINDS.values())}")
    types = [t for t, kind in KINDS.items() if kinds is None or kind in kinds]
    query = " OR ".join(f"WorkflowType = '{t}'" for t in types)
    found = []
    async for wf in client.list_workflows(query, limit=limit):
        found.append(
            Listed(
                id=wf.id,
                kind=KINDS.get(wf.workflow_type, wf.workflow_type),
                status=wf.status.name if wf.status else "UNKNOWN",
                started=wf.start_time,
                closed=wf.close_time,
            )
        )
    return found


async def cancel(client: Client, workflow_id: str, wait_s: float = CANCEL_WAIT_S) -> Listed:
    """Cancel a run, sweep, experiment set or scale-up, and wait until it has closed (its Ray jobs stopped)."""
    handle = client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"nothing called {workflow_id!r} on this Temporal namespace (see `ttrain ls`)") from None
        raise
    kind = KINDS.get(desc.workflow_type, desc.workflow_type)
    if desc.status != WorkflowExecutionStatus.RUNNING:
        raise CliError(f"{kind} {workflow_id!r} is already {desc.status.name.lower() if desc.status else 'closed'}")
    await handle.cancel()
    deadline = asyncio.get_running_loop().time() + wait_s
    while (desc := await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        if asyncio.get_running_loop().time() > deadline:
            raise CliError(f"{kind} {workflow_id!r}: cancel requested; still stopping its Ray jobs after {wait_s:.0f}s")
        await asyncio.sleep(0.5)
    status = desc.status.name if desc.status else "UNKNOWN"
    return Listed(id=workflow_id, kind=kind, status=status, started=desc.start_time, closed=desc.close_time)


async def job_logs(ray: RaySubmission, ray_job_id: str, follow: bool) -> AsyncIterator[str]:
    """The Ray job's driver log (its Train workers' output comes through it): all of it, then, following, what it
    writes until it ends."""
    try:
        if follow:
            async for chunk in ray.follow_logs(ray_job_id):
                yield chunk
        else:
            yield await asyncio.to_thread(ray.logs, ray_job_id)
    except (RayUnavailable, RuntimeError) as exc:
        raise CliError(f"logs of Ray job {ray_job_id}: {str(exc).splitlines()[0]}") from None
