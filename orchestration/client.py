"""One way to reach Temporal: the SDK's env-config profile plus ttrain's converter (pydantic models, large payloads
as claim checks in the run storage: `orchestration.payloads`) on every client and worker."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.envconfig import ClientConfigProfile

from orchestration.payloads import data_converter
from orchestration.settings import Settings


async def connect(settings: Settings | None = None) -> Client:
    settings = settings or Settings.from_env()
    connect_config = ClientConfigProfile.load().to_client_connect_config()
    connect_config.setdefault("target_host", settings.temporal_address)
    return await Client.connect(
        **connect_config, data_converter=data_converter(settings.storage_uri, settings.payload_inline_max)
    )
