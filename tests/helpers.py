"""Small helpers shared by the tests: tiny configs, polling, and running coroutines from sync tests."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from temporalio.service import RPCError, RPCStatusCode

from orchestration.client import PASSING
from ray_jobs.specs import FineTuneConfig


def tiny_config(**overrides: Any) -> FineTuneConfig:
    """A real fine-tune that fits a CPU test: 1 encoder layer, short sequences, ~100 rows."""
    base: dict[str, Any] = {
        "num_hidden_layers": 1,
        "dataset": {"max_rows": 120},
        "max_seq_length": 32,
        "batch_size": 8,
        "checkpoint_every_steps": 5,
        "max_steps": 12,
        "lr": 1e-4,
        "keep_last": 50,
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return FineTuneConfig.model_validate(base)


def run(coro):
    return asyncio.run(coro)


SCENARIO_TIMEOUT_S = 500  # under pytest-timeout's 600 s a test: a stuck scenario fails its test, not the session


def side_by_side(scenarios: dict[str, Callable[[], Any]]) -> Iterator[dict[str, Future]]:
    """A module fixture's body: start every scenario at once, each in its own thread; at teardown wait a bounded
    time for them, then leave. On 2 cores, trainings that each wait on their own jobs share one wait instead of
    queueing in turn (each scenario bounds its own waits, so none outlives the session by much)."""
    pool = ThreadPoolExecutor(len(scenarios))
    started = {name: pool.submit(scenario) for name, scenario in scenarios.items()}
    try:
        yield started
    finally:
        wait(started.values(), timeout=SCENARIO_TIMEOUT_S)
        pool.shutdown(wait=False, cancel_futures=True)


def outcome(started: dict[str, Future], name: str) -> Any:
    """A scenario's result; re-raises its failed assertion in the test that asked for it."""
    return started[name].result(timeout=SCENARIO_TIMEOUT_S)


# A poll the server failed to answer now, beyond `PASSING`: the SDK's own deadline on the call ran out ("Timeout
# expired", CANCELLED: seen in suite runs, a status query to an orchestration worker loaded with every run's tasks).
NOT_YET = (*PASSING, RPCStatusCode.CANCELLED)


async def wait_until(
    check: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.5
) -> Any:
    """Poll an async or sync predicate until it returns something truthy. A poll the server fails to answer now
    (`NOT_YET`: a timed-out or busy query, a restarting server) is a "not yet", like a falsy answer: the deadline
    still bounds the wait. `what` may be a function, to say what was last seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
        except RPCError as exc:
            if exc.status not in NOT_YET:
                raise
            value = None
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")


def ttrain(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: its own process, its exit code, its stderr."""
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(out: subprocess.CompletedProcess, exit_code: int, *needles: str) -> None:
    assert out.returncode == exit_code, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("ttrain: error:")]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars as TensorBoard shows them: event files in name order, a session start at step N hiding what earlier
    files logged from N on (TensorBoard's purge of a restarted writer's orphans)."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.session_log.status == SessionLog.START:
                scalars = {k: [(s, v) for s, v in points if s < event.step] for k, points in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
