"""One way to reach Temporal: the SDK's env-config profile plus ttrain's converter (pydantic models, large payloads
as claim checks in the run storage: `orchestration.payloads`) on every client and worker."""

from __future__ import annotations

import time
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError, RPCStatusCode
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

from orchestration.payloads import data_converter
from orchestration.settings import Settings


async def connect(settings: Settings | None = None) -> Client:
    settings = settings or Settings.from_env()
    connect_config = ClientConfigProfile.load().to_client_connect_config()
    connect_config.setdefault("target_host", settings.temporal_address)
    return await Client.connect(
        **connect_config, data_converter=data_converter(settings.storage_uri, settings.payload_inline_max)
    )


# A result is waited for by long polls. A server that is restarting (UNAVAILABLE) or too loaded to answer one in
# time (DEADLINE_EXCEEDED: seen in the test suite on 2 cores) fails the poll, not the workflow, which goes on.
PASSING = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
RESULT_PATIENCE_S = 300.0


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
        retry=retry_if_exception(lambda exc: isinstance(exc, RPCError) and exc.status in PASSING),
        wait=wait_exponential(min=1, max=10),
        stop=silent_too_long,
        reraise=True,
    )(ask)
