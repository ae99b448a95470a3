"""Small helpers shared by the tests: tiny configs, polling, and running coroutines from sync tests."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

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


async def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


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
