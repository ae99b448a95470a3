"""The content-addressed run cache: a finished run recorded under its key, so an identical experiment reuses it."""

from __future__ import annotations

import asyncio

from temporalio import activity

from orchestration.types import RunCacheEntry, RunCacheLookup, RunCacheStore
from ray_jobs import storage


def _uri(storage_uri: str, key: str) -> str:
    return storage.join(storage_uri, "run_cache", f"{key}.json")


@activity.defn
async def lookup_run(req: RunCacheLookup) -> RunCacheEntry | None:
    def read() -> RunCacheEntry | None:
        uri = _uri(req.storage_uri, req.key)
        return RunCacheEntry.model_validate(storage.read_json(uri)) if storage.exists(uri) else None

    return await asyncio.to_thread(read)


@activity.defn
async def remember_run(req: RunCacheStore) -> None:
    await asyncio.to_thread(storage.write_json, _uri(req.storage_uri, req.entry.key), req.entry.model_dump(mode="json"))
