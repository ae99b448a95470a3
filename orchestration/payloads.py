"""Large payloads travel as claim checks: the bytes go to the run storage, Temporal carries their URI and hash.

Temporal refuses a payload over 2 MB (and warns from 512 KB), and keeps every payload in the history. A sweep's
state grows with its trials (~400 bytes each), so without this a sweep would stop at ~5,000 trials at its first
continue-as-new. Every client and worker encodes through `ClaimCheckCodec`: a payload above `inline_max` bytes is
written once, content-addressed, under `<storage>/payloads/` (every worker reads that storage anyway: it holds the
checkpoints), and replaced by a small payload naming its URI and SHA-256; decoding reads it back from that URI
(so a process whose own `TTRAIN_STORAGE` differs still finds it, where it can reach it) and checks the hash.
Payloads below the limit, and those in histories recorded before the codec, pass through unchanged.

What it costs: the Temporal UI and `temporal workflow show` print the reference, not the state, for the large
payloads (a codec server would decode them there); blobs are never deleted by ttrain, as a history that names one
may be replayed until the namespace's retention ends (remove `payloads/` blobs older than the retention by hand).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, PayloadCodec

from orchestration.settings import INLINE_MAX
from ray_jobs import storage

ENCODING = b"binary/ttrain-claim-check"


class ClaimCheckCodec(PayloadCodec):
    def __init__(self, storage_uri: str, inline_max: int = INLINE_MAX) -> None:
        self.root = storage.join(storage_uri, "payloads")
        self.inline_max = inline_max

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [await self._check(p) if p.ByteSize() > self.inline_max else p for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [await self._claim(p) if p.metadata.get("encoding") == ENCODING else p for p in payloads]

    async def _check(self, payload: Payload) -> Payload:
        data = payload.SerializeToString()
        digest = hashlib.sha256(data).hexdigest()
        uri = storage.join(self.root, digest)
        if not await asyncio.to_thread(storage.exists, uri):  # content-addressed: the same state is written once
            await asyncio.to_thread(storage.write_bytes, uri, data)
        return Payload(metadata={"encoding": ENCODING, "sha256": digest.encode()}, data=uri.encode())

    async def _claim(self, reference: Payload) -> Payload:
        """From the URI the encoder wrote, whatever this process's own storage setting is."""
        uri, digest = reference.data.decode(), reference.metadata["sha256"].decode()
        data = await asyncio.to_thread(storage.read_bytes, uri)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"payload {uri} does not match its hash")
        return Payload.FromString(data)


def data_converter(storage_uri: str, inline_max: int = INLINE_MAX) -> DataConverter:
    """pydantic models on the wire (NaN-safe, see `orchestration.types.Model`), large ones as claim checks."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=ClaimCheckCodec(storage_uri, inline_max))
