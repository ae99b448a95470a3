"""`ttrain up` is idempotent against the real stack: a second `up` starts only what died."""

from __future__ import annotations

import os
import signal

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
