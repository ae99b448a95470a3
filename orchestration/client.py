"""One way to reach Temporal: the SDK's env-config profile plus ttrain's converter (pydantic models, large payloads
as claim checks in the run storage: `orchestration.payloads`) on every client and worker."""

from __future__ import annotations

import time
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError, RPCStatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from orchestration.payloads import data_converter
from orchestration.settings import Settings


async def connect(settings: Settings | None = None) -> Client:
    settings = settings or Settings.from_env()
    connect_config = ClientConfigProfile.load().to_client_connect_config()
    connect_config.setdefault("target_host", settings.temporal_address)
    return await Client.connect(
        **connect_config, data_converter=data_converter(settings.storage_uri, settings.payload_inline_max)
    )


# "Not now" rather than "no": a server that is restarting (UNAVAILABLE), or a workflow busy with other requests
# (RESOURCE_EXHAUSTED, "Workflow is busy": seen in the test suite, a status query among eight runs polled at once on
# 2 cores). The SDK does not ask again on a busy workflow: the caller decides.
BUSY = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.RESOURCE_EXHAUSTED)
# A result is waited for by long polls, which a loaded server may also fail to answer in time (DEADLINE_EXCEEDED, seen
# in the suite too): the poll failed, not the workflow, which goes on.
PASSING = (*BUSY, RPCStatusCode.DEADLINE_EXCEEDED)
RESULT_PATIENCE_S = 300.0
QUERY_PATIENCE_S = 60.0


def says(statuses: tuple[RPCStatusCode, ...]):
    return retry_if_exception(lambda exc: isinstance(exc, RPCError) and exc.status in statuses)


async def patient_query(handle: WorkflowHandle, query: Any, *args: Any, patience_s: float = QUERY_PATIENCE_S, **kw):
    """`handle.query`, asked again while the server says "not now" (`BUSY`), for up to `patience_s`. A query that
    times out is not asked again: no worker may be there to answer it, and a status must say so, not hang."""
    return await AsyncRetrying(
        retry=says(BUSY), wait=wait_exponential(min=0.5, max=5), stop=stop_after_delay(patience_s), reraise=True
    )(handle.query, query, *args, **kw)


async def wait_for_result(handle: WorkflowHandle, patience_s: float = RESULT_PATIENCE_S) -> Any:
    """`handle.result()`, asked again while the server fails to answer in a way that passes; given up once it has not
    answered for `patience_s` (a wait may last days: only the silence is bounded)."""
    answered = time.monotonic()

    def silent_too_long(_: RetryCallState) -> bool:
        return time.monotonic() - answered > patience_s

    async def ask() -> Any:
        nonlocal answered
        await handle.describe()  # it answers: the patience starts again
        answered = time.monotonic()
        try:
            return await handle.result()
        except RPCError:
            answered = time.monotonic()  # its long polls were answered until now (a wait may have lasted days)
            raise

    return await AsyncRetrying(
        retry=says(PASSING),
        wait=wait_exponential(min=1, max=10),
        stop=silent_too_long,
        reraise=True,
    )(ask)
