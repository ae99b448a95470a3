"""A test's own local stack, for tests that reshape the cluster (extra Ray nodes, training workers per "host").

The session `stack` fixture is shared, so nothing there may be killed for good or rewired. These tests start their
own processes through `cluster.local_stack` on their own ports, outside Ray's worker-port pool (10002-19999) and the
kernel's ephemeral range (32768-60999), and apart from the session stack's (2xxxx) and the benchmarks' (3xxxx).
Everything they start is stopped by pid in a finally block, process groups included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import local_stack
from orchestration.settings import Settings


def own_env(monkeypatch: pytest.MonkeyPatch, home: Path, temporal_port: int, ray_port: int, gcs_port: int) -> Settings:
    """Point this process (the SDK's env-config, Settings, local_stack) at the test's own stack, not the session's;
    monkeypatch puts the session's environment back afterwards."""
    busy = [
        p for p in (temporal_port, temporal_port + 1000, ray_port, gcs_port) if local_stack.port_open("127.0.0.1", p)
    ]
    if busy:
        pytest.fail(f"ports {busy} are in use: is another run of this test still going?")
    monkeypatch.setenv("TTRAIN_HOME", str(home))
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{temporal_port}")
    monkeypatch.setenv("TTRAIN_RAY_ADDRESS", f"http://127.0.0.1:{ray_port}")
    monkeypatch.setenv("TTRAIN_RAY_GCS_PORT", str(gcs_port))
    monkeypatch.setenv("TTRAIN_RAY_MAX_FAILURES", "0")  # a lost worker fails the job: the activity must recover
    return Settings.from_env()


def on_host(settings: Settings, home: Path) -> Settings:
    """The same servers and storage seen from another "host": only the state directory differs."""
    return settings.model_copy(update={"home": home})


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) in process group `pgid`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split() if proc.name.isdigit() else []
        except OSError:
            continue
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(proc.name))
    return pids


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a process group this test created (each service is its own session)."""
    for pid in group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def teardown(*homes: Settings, groups: list[int]) -> Iterator[None]:
    """Stop every service recorded under `homes` (workers, then extra Ray nodes, the head, Temporal), then whatever
    is left in the process groups in `groups` (e.g. a Ray node that died and was replaced); whatever happens."""
    try:
        yield
    finally:
        for settings in homes:
            for name in local_stack.known_services(settings) if settings.home.exists() else []:
                pid = local_stack.read_pid(settings, name)
                if pid is not None:
                    groups.append(pid)
                local_stack.stop(settings, name, timeout=10)  # Ray's SIGTERM drain can take 30 s; SIGKILL is fine
        for pgid in groups:
            kill_group(pgid)
        deadline = time.monotonic() + 10
        while any(group_members(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for settings in homes:
            shutil.rmtree(local_stack.ray_temp_dir(settings), ignore_errors=True)
