"""`ttrain up` is idempotent against the real stack: a second `up` starts only what died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster import local_stack
from tests.helpers import run, wait_until

pytestmark = pytest.mark.integration


def test_up_starts_only_what_died(stack):
    assert local_stack.up(stack) == []  # everything the fixture started is alive
    pid = local_stack.read_pid(stack, "worker-orchestration")
    os.kill(pid, signal.SIGKILL)
    run(wait_until(lambda: not local_stack.pid_alive(pid), 10, "the worker to die"))
    assert local_stack.up(stack) == ["worker-orchestration"]
    assert local_stack.pid_alive(local_stack.read_pid(stack, "worker-orchestration"))
    services = {s.name: s for s in local_stack.ps(stack)}
    assert {"temporal", "ray", "worker-training", "worker-orchestration"} <= set(services)
    assert all(s.alive for s in services.values())
    assert "UI http://127.0.0.1:" in services["temporal"].detail


def test_doctor_reports_green_on_the_stack_and_names_a_wrong_address(stack):
    cmd = [sys.executable, "-m", "orchestration.cli", "doctor"]

    def doctor() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    # a worker restarted by an earlier test polls its queue only once it has connected: green within a minute
    deadline = time.monotonic() + 60
    while (out := doctor()).returncode != 0 and time.monotonic() < deadline:
        time.sleep(2)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert all(ln.startswith("ok") for ln in lines), lines
    assert any("polling ttrain-training for training" in ln for ln in lines)
    assert any("polling ttrain-training-control for stopping jobs" in ln for ln in lines)
    assert any(ln.startswith("ok   ray node") for ln in lines)
    assert any("write/read/delete ok" in ln for ln in lines)
    env = {**os.environ, "TEMPORAL_ADDRESS": "127.0.0.1:1", "TTRAIN_RAY_ADDRESS": "http://127.0.0.1:2"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)  # a wrong address fails at once
    assert out.returncode == 1
    assert any(ln.startswith("FAIL temporal: cannot connect to 127.0.0.1:1") for ln in out.stdout.splitlines())
    assert any(ln.startswith("FAIL ray: Jobs API at http://127.0.0.1:2") for ln in out.stdout.splitlines())
    assert "Traceback" not in out.stderr
