"""What the local stack listens on, and what protects it: the list the README's security notes state.

Every listening TCP socket of the stack's processes (the Temporal dev server, the Ray head and every process it
started, job drivers and Train workers included, found by their TTRAIN_HOME) is either on loopback, or one of the gRPC
servers Ray binds to every interface whatever it is told (GCS, raylet, each Ray worker's core worker), or the
rendezvous store PyTorch opens on rank 0 of each training job (torch.distributed's TCPStore, every interface, no
authentication: PyTorch has none, which the README says). The Ray servers are reached here through 127.0.0.1, which
reaches a socket bound to every interface too, with a real Ray method and no token: each must refuse
(UNAUTHENTICATED). Nothing listens on a specific non-loopback address.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import torch.distributed

from orchestration.api import start_training
from orchestration.client import connect, patient_query
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config, wait_until

pytestmark = pytest.mark.integration

# One real method of each Ray gRPC service that can listen on a port; a server answers UNIMPLEMENTED to the ones
# it does not serve, and (with token auth) UNAUTHENTICATED to the one it does, before running anything.
RAY_METHODS = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
    "/ray.rpc.ReporterService/HealthCheck",
)


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    pid: int
    process: str

    @property
    def every_interface(self) -> bool:
        return self.host in ("0.0.0.0", "*", "[::]")

    @property
    def loopback(self) -> bool:
        return (
            not self.every_interface and ipaddress.ip_address(self.host.strip("[]").removeprefix("::ffff:")).is_loopback
        )


def stack_pids(home: Path) -> set[int]:
    marker = f"TTRAIN_HOME={home}".encode()
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.add(int(proc.name))
            except OSError:
                continue
    return pids


def listeners(pids: set[int]) -> list[Listener]:
    found = []
    for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines():
        fields = line.split()
        host, port = fields[3].rsplit(":", 1)
        for pid_field in fields[-1].split("pid=")[1:]:
            pid = int(pid_field.split(",")[0])
            if pid in pids:
                name = fields[-1].split('"')[1]
                found.append(Listener(host, int(port), pid, name))
    return found


def refuses_without_token(port: int) -> bool:
    """Some real Ray method on this port is refused for the missing token, and none is served."""
    verdicts = set()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in RAY_METHODS:
            call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                call(b"", timeout=5)
                return False  # served without a token
            except grpc.RpcError as exc:
                verdicts.add(exc.code())
    return grpc.StatusCode.UNAUTHENTICATED in verdicts


def is_torch_rendezvous_store(port: int) -> bool:
    """torch.distributed's TCPStore (rank 0 of a Ray Train job): a client of its own protocol gets in, no token."""
    try:
        store = torch.distributed.TCPStore(
            "127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5), wait_for_workers=False
        )
        store.num_keys()
    except Exception:  # not a TCPStore: its handshake fails
        return False
    return True


def kind(process: str) -> str:
    """The README's names for what listens: Ray's processes show as `ray::<Actor>`, job drivers as `python`."""
    if process.startswith("ray::") or process == "python":
        return "Ray worker or job driver (core worker)"
    return process


def test_everything_listens_on_loopback_or_refuses_without_the_token(stack):
    async def while_a_job_trains() -> tuple[list[Listener], list[Listener], list[Listener]]:
        client = await connect(stack)  # a job's driver and Train workers listen too: look, and knock, while it trains
        handle = await start_training(client, stack, "it-exposure", tiny_config(max_steps=2000))

        async def checkpointed():
            return (await patient_query(handle, CheckpointedTrainingWorkflow.status)).checkpoints

        await wait_until(checkpointed, 240, "the job's first checkpoint")
        found = listeners(stack_pids(stack.home))
        exposed = [x for x in found if not x.loopback]
        stores = [x for x in exposed if x.process.startswith("ray::RayTrainWo") and is_torch_rendezvous_store(x.port)]
        served = [x for x in exposed if x not in stores and not refuses_without_token(x.port)]
        await handle.cancel()  # the workflow stops the job
        return found, stores, served

    found, stores, served = run(while_a_job_trains())
    kinds = {kind(x.process) for x in found}
    assert {"temporal", "gcs_server", "raylet", "Ray worker or job driver (core worker)"} <= kinds, kinds
    exposed = [x for x in found if not x.loopback]
    assert all(x.every_interface for x in exposed), f"bound to a specific non-loopback address: {exposed}"
    assert {kind(x.process) for x in exposed} <= {"gcs_server", "raylet", "Ray worker or job driver (core worker)"}
    assert len(stores) == 1, "rank 0's rendezvous store: on every interface, no authentication (README)"
    assert not served, f"served without Ray's token: {served}"
