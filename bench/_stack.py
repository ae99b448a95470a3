"""What both benchmarks share: their own local stack, the tiny fine-tune config, and how results are written.

The stack is the real one (`cluster.local_stack`: Temporal dev server, Ray head, one ttrain worker per queue) under a
fresh temp TTRAIN_HOME, on ports offset from the defaults (7233/8265/6379) and from the tests' (2xxxx), so neither a
developer's `ttrain up` nor a running test session is disturbed. It is always stopped, by pid, in a finally block.

Import this module before anything that imports ray: Ray reads RAY_AUTH_MODE once, when it is first imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from cluster import local_stack
from orchestration.settings import Settings
from orchestration.types import DatasetSnapshot, TrainingResult
from ray_jobs.specs import FineTuneConfig, JobSpec, TrainConfig

BENCH_ENV = {
    "TEMPORAL_ADDRESS": "127.0.0.1:37233",
    "TTRAIN_RAY_ADDRESS": "http://127.0.0.1:38265",
    "TTRAIN_RAY_GCS_PORT": "36379",
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
}
PORTS = (37233, 38233, 38265, 36379)  # Temporal, its UI (port + 1000), Ray dashboard / Jobs API, Ray GCS
OUT_DIR = Path(__file__).resolve().parent / "out"

os.environ.update(BENCH_ENV)
os.environ.pop("TTRAIN_STORAGE", None)  # checkpoints go under the temp home, never into someone's real storage


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def running_stack(num_cpus: int = 4, keep_home: bool = False) -> Iterator[Settings]:
    """Temporal + Ray head + both workers under a temp TTRAIN_HOME; torn down whatever happens.

    The home (logs, Temporal's SQLite file, checkpoints) is removed afterwards unless `keep_home`, or the body failed:
    then its logs are what explains the failure.
    """
    busy = [port for port in PORTS if local_stack.port_open("127.0.0.1", port)]
    if busy:
        raise SystemExit(f"ports {busy} are already in use: is another benchmark running?")
    home = Path(tempfile.mkdtemp(prefix="ttrain-bench-"))
    os.environ["TTRAIN_HOME"] = str(home)
    settings = Settings.from_env()
    failed = False
    t0 = time.monotonic()
    try:
        local_stack.ray_auth_env()  # make sure Ray's token exists before the head that checks it starts
        local_stack.start_temporal(settings)
        local_stack.start_ray(settings, num_cpus=num_cpus)
        for queue in local_stack.WORKER_QUEUES:
            local_stack.start_worker(settings, queue)
        log(f"stack up in {time.monotonic() - t0:.0f}s under {home}")
        yield settings
    except BaseException:
        failed = True
        raise
    finally:
        stopped = local_stack.down(settings)
        shutil.rmtree(local_stack.ray_temp_dir(settings), ignore_errors=True)
        if keep_home or failed:
            log(f"stack down ({', '.join(stopped)}); kept {home} (logs under {home / 'logs'})")
        else:
            shutil.rmtree(home, ignore_errors=True)
            log(f"stack down ({', '.join(stopped)})")


def bench_config(**overrides: Any) -> FineTuneConfig:
    """A real fine-tune small enough for a CPU box: 2 encoder layers, 64 tokens, batch 8, 900 rows (as the crash tests)."""
    base: dict[str, Any] = {
        "num_hidden_layers": 2,
        "dataset": {"max_rows": 900},
        "max_seq_length": 64,
        "batch_size": 8,
        "lr": 1e-4,
        "max_steps": 20,
        "checkpoint_every_steps": 5,
    }
    return FineTuneConfig.model_validate({**base, **overrides})


def run_dir(settings: Settings, run_id: str) -> Path:
    """Where a run's jobs keep their checkpoints (`<job id>/step_XXXXXXXX/`) and progress.json; local storage only,
    as the bench uses."""
    return Path(settings.storage_uri) / "runs" / run_id


def checkpoint_states(settings: Settings, run_id: str) -> list[dict]:
    """train_state.json of every checkpoint of every job of the run, in step order."""
    states = [json.loads(p.read_text()) for p in run_dir(settings, run_id).glob("*/step_*/train_state.json")]
    return sorted(states, key=lambda s: s["step"])


def environment(args: Any) -> dict[str, Any]:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": commit or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": {pkg: version(pkg) for pkg in ("ray", "temporalio", "torch", "transformers")},
        "args": vars(args),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns after the first are right-aligned; floats get 2 decimals, None prints as '-'."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    Console(width=200).print(table)


POLL_S = 0.25  # how often a bare run asks Ray whether its job has ended


def bare_run(settings: Settings, ray, run_id: str, config: TrainConfig, snap: DatasetSnapshot) -> float:
    """Submit the job exactly as the training activity does (same module, spec, env), without Temporal. -> wall s."""
    from ray.job_submission import JobStatus

    from orchestration.activities.training import runs_root, submit_job

    t0 = time.monotonic()
    job_id = f"{run_id}--bare"
    spec = JobSpec(
        run_id=run_id,
        ray_job_id=job_id,
        config=config,
        snapshot_uri=snap.uri,
        storage_path=runs_root(settings.storage_uri),
    )
    submit_job(ray, spec, settings.storage_uri, settings.ray_python)
    while not (status := ray.status(job_id)).is_terminal():
        time.sleep(POLL_S)
    wall = time.monotonic() - t0
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"bare job {job_id} ended {status.value}:\n{ray.logs_tail(job_id)}")
    return wall


def orchestrated_run(
    settings: Settings, run_id: str, config: TrainConfig, snap: DatasetSnapshot | None
) -> tuple[float, TrainingResult]:
    """start_training and wait for the workflow's result, as `ttrain train` does. -> (wall s, result). `snap`: the
    snapshot the run must reuse (None: a custom loop, which takes none)."""
    from orchestration.api import start_training
    from orchestration.client import connect

    async def go() -> tuple[float, TrainingResult]:
        client = await connect(settings)
        t0 = time.monotonic()
        handle = await start_training(client, settings, run_id, config)
        result = await handle.result()
        return time.monotonic() - t0, result

    wall, result = asyncio.run(go())
    if snap is not None and result.snapshot_id != snap.snapshot_id:
        raise RuntimeError(f"{run_id} trained on snapshot {result.snapshot_id}, the bare runs on {snap.snapshot_id}")
    return wall, result
