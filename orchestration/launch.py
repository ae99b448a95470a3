"""Starting a workflow under an id that may be taken: attach to it, report it, refuse with what differs, or replace.

Run, sweep and experiment-set ids are chosen by people and reused by accident: a command repeated, an edited file
run again. A second execution under an old id must never quietly become "the same run": so the same request
attaches to the execution that is running, or reports the one that completed; a different request is refused with
what differs; `replace=True` cancels a running execution (the workflow stops its Ray jobs) and starts over, leaving
the old execution's history and checkpoint folders as they were. A same request whose earlier execution failed or
was cancelled starts again (`retry`, e.g. from its last checkpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from orchestration.errors import CliError
from orchestration.experiments import flatten

SHOWN_DIFFERENCES = 4


@dataclass(frozen=True)
class Launched:
    handle: WorkflowHandle
    started: bool  # False: attached to (or reporting) the execution that was already there
    note: str


async def launch(
    client: Client,
    run: Any,
    request: BaseModel,
    *,
    workflow_id: str,
    task_queue: str,
    what: str,
    identity: Callable[[Any], dict[str, Any]],
    replace: bool = False,
    retry: Callable[[BaseModel, WorkflowHandle], Awaitable[BaseModel]] | None = None,
) -> Launched:
    """`identity` picks what makes two requests the same, as JSON (a run's config, not where it keeps checkpoints)."""
    handle = client.get_workflow_handle_for(run, workflow_id)  # results decode to the run method's return type
    try:
        status = (await handle.describe()).status
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return await _start(client, run, request, workflow_id, task_queue, f"started {what} {workflow_id}")
    running = status == WorkflowExecutionStatus.RUNNING
    if replace:
        if running:
            await handle.cancel()
            await _closed(handle)
        return await _start(client, run, request, workflow_id, task_queue, f"replaced {what} {workflow_id}")
    old = await started_with(client, handle, type(request))
    changed = differences(identity(old), identity(request))
    if changed:
        state = "is running" if running else f"exists ({status.name.lower() if status else '?'})"
        raise CliError(
            f"{what} {workflow_id} {state} with a different config ({changed}); "
            f"use a new id, or --replace to {'cancel it and ' if running else ''}start it over"
        )
    if running:
        return Launched(handle, False, f"{what} {workflow_id} is already running with this config: following it")
    if status == WorkflowExecutionStatus.COMPLETED:
        return Launched(handle, False, f"{what} {workflow_id} already completed with this config")
    again = await retry(request, handle) if retry else request
    return await _start(
        client, run, again, workflow_id, task_queue, f"{what} {workflow_id} had {_name(status)}: started again"
    )


async def _start(
    client: Client, run: Any, request: BaseModel, workflow_id: str, task_queue: str, note: str
) -> Launched:
    handle = await client.start_workflow(run, request, id=workflow_id, task_queue=task_queue)
    return Launched(handle, True, note)


async def _closed(handle: WorkflowHandle, timeout_s: float = 900.0) -> None:
    """A cancelled execution closes once its attempt has let go and its Ray jobs are stopped (a sweep: once its
    trainings have, for up to 10 minutes, `CHILDREN_CLOSE_WITHIN`)."""

    async def poll() -> None:
        while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await asyncio.sleep(0.5)

    try:
        await asyncio.wait_for(poll(), timeout_s)
    except asyncio.TimeoutError:
        raise CliError(f"{handle.id} did not close within {timeout_s:.0f}s of being cancelled") from None


async def started_with(client: Client, handle: WorkflowHandle, request_type: type[BaseModel]) -> BaseModel:
    """The request the current execution started with (after continue-as-new: the request it carried on with)."""
    async for event in handle.fetch_history_events(page_size=1):
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        (request,) = await client.data_converter.decode(payloads, [request_type])
        return request
    raise CliError(f"workflow {handle.id} has no history")


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`lr 0.0001 -> 0.0003, max_steps 40 -> 80` for the keys whose values differ ('' when none do)."""
    a, b = flatten(old), flatten(new)
    changed = [f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    more = f", and {len(changed) - SHOWN_DIFFERENCES} more" if len(changed) > SHOWN_DIFFERENCES else ""
    return ", ".join(changed[:SHOWN_DIFFERENCES]) + more


def _name(status: WorkflowExecutionStatus | None) -> str:
    return {WorkflowExecutionStatus.CANCELED: "been cancelled", WorkflowExecutionStatus.FAILED: "failed"}.get(
        status, status.name.lower() if status else "?"
    )
