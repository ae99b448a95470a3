"""A run whose storage is an s3:// URI, against a real S3-compatible server on 127.0.0.1 (moto's `moto_server`).

Nothing about the bucket is in a config: the endpoint and the credentials are the standard AWS environment variables
(pyarrow's S3FileSystem, which Ray Train writes through, reads AWS_ENDPOINT_URL), set before the test's own stack
starts, so the Ray head, its job drivers and Train workers, and the training worker all inherit them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import local_stack
from orchestration.api import start_training
from orchestration.client import connect, patient_query, wait_for_result
from orchestration.types import RunStatus, TrainingResult
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from tests.helpers import run, tiny_config, ttrain
from tests.stack_util import kill_group, own_env, teardown

pytestmark = pytest.mark.integration

# Temporal's UI is on TEMPORAL_PORT + 1000 (21233); the head's other ports are 21380-21384 (local_stack)
TEMPORAL_PORT, RAY_PORT, GCS_PORT, S3_PORT = 20233, 21265, 21379, 21500
BUCKET, STEPS, EVERY = "ttrain-it", 10, 5


def start_moto(log: Path) -> subprocess.Popen:
    """moto's S3 server as its own process, in its own session (its pid is its process group)."""
    if local_stack.port_open("127.0.0.1", S3_PORT):
        pytest.fail(f"port {S3_PORT} is in use: is another run of this test still going?")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(S3_PORT)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not local_stack.port_open("127.0.0.1", S3_PORT):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc.pid)
            pytest.fail(f"moto_server did not come up on {S3_PORT}; see {log}")
        time.sleep(0.2)
    return proc


def test_a_run_keeps_everything_in_s3(tmp_path, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups on a machine that is not in AWS
        "TTRAIN_STORAGE": f"s3://{BUCKET}/ttrain",
    }.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    settings = own_env(monkeypatch, home, TEMPORAL_PORT, RAY_PORT, GCS_PORT)
    assert settings.storage_uri == f"s3://{BUCKET}/ttrain"
    timings: dict[str, float] = {}

    async def go() -> tuple[TrainingResult, RunStatus]:
        t0 = time.monotonic()
        local_stack.start_temporal(settings)
        local_stack.start_ray(settings, num_cpus=2)
        local_stack.start_worker(settings, "orchestration")
        local_stack.start_worker(settings, "training")
        client = await connect(settings)
        timings["stack_up_s"] = time.monotonic() - t0
        config = tiny_config(max_steps=STEPS, checkpoint_every_steps=EVERY)
        handle = await start_training(client, settings, "s3-run", config, heartbeat_timeout_s=10, poll_interval_s=1)
        result = await wait_for_result(handle)
        timings["run_s"] = time.monotonic() - t0 - timings["stack_up_s"]
        return result, await patient_query(handle, CheckpointedTrainingWorkflow.status)

    import boto3  # comes with moto

    groups: list[int] = []
    with teardown(settings, groups=groups):
        moto = start_moto(tmp_path / "moto.log")
        groups.append(moto.pid)  # teardown kills its group
        s3 = boto3.client("s3")  # endpoint and credentials from the environment, like every other process here
        s3.create_bucket(Bucket=BUCKET)
        result, status = run(go())
        t = time.monotonic()
        doctor = ttrain("doctor", timeout=120)
        timings["doctor_s"] = time.monotonic() - t
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    moto.wait(timeout=10)  # reap it
    print(f"object storage: {timings}, {len(keys)} objects in s3://{BUCKET}")

    assert result.steps == STEPS and status.state == "completed"
    assert [c.step for c in status.checkpoints] == list(range(EVERY, STEPS + 1, EVERY))
    runs = f"s3://{BUCKET}/ttrain/runs/s3-run/"
    uris = [c.uri for c in status.checkpoints] + [result.final_checkpoint.uri]
    assert all(u.startswith(runs) for u in uris), uris
    assert status.snapshot_uri == f"s3://{BUCKET}/ttrain/snapshots/{status.snapshot_id}"
    # the objects are really in the bucket: every checkpoint's weights and state, the snapshot's files
    for c in status.checkpoints:
        prefix = c.uri.removeprefix(f"s3://{BUCKET}/")
        assert {f"{prefix}/model.safetensors", f"{prefix}/train_state.json"} <= keys, (c.uri, sorted(keys))
    snapshot = status.snapshot_uri.removeprefix(f"s3://{BUCKET}/")
    assert {f"{snapshot}/manifest.json", f"{snapshot}/train.parquet"} <= keys, sorted(keys)
    assert not any(".tmp-" in k for k in keys), sorted(keys)
    # and nothing went to the local default (`$TTRAIN_HOME/storage`)
    assert not (home / "storage").exists()
    # doctor probes the same s3:// URI through the same environment
    assert f"ok   storage: s3://{BUCKET}/ttrain write/read/delete ok" in doctor.stdout, doctor.stdout + doctor.stderr
