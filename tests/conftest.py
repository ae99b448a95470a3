"""Fixtures: one real local stack (Temporal dev server, Ray head, both workers) shared by the integration tests.

Ports are offset from the defaults so a developer's own `ttrain up` is not disturbed. Every process the stack
starts is stopped by pid at the end of the session, also when tests fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster import local_stack
from orchestration.settings import Settings

TEST_ENV = {
    "TEMPORAL_ADDRESS": "127.0.0.1:27233",
    "TTRAIN_RAY_ADDRESS": "http://127.0.0.1:28265",
    "TTRAIN_RAY_GCS_PORT": "26379",
    "HF_HUB_OFFLINE": "1",
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TTRAIN_RAY_MAX_FAILURES": "0",  # crash tests must see the activity recover, not Ray Train retry silently
    # What no test reads and every Ray job pays for (CPU the 2-core CI machine does not have): Ray's metrics (for
    # a Prometheus that no test runs) and Ray Train's watcher of node drains (no test drains a node).
    "RAY_enable_metrics_collection": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


# Ray reads RAY_AUTH_MODE once, when first imported: set the environment before any test module imports ray.
os.environ.update(TEST_ENV)


@pytest.fixture(scope="session")
def stack_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ttrain-home")


@pytest.fixture(scope="session")
def settings(stack_home: Path) -> Settings:
    os.environ["TTRAIN_HOME"] = str(stack_home)
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """Temporal + Ray + workers, up for the whole session; torn down by pid whatever happens."""
    try:
        local_stack.start_temporal(settings)
        local_stack.start_ray(settings, num_cpus=4)
        for queue in local_stack.WORKER_QUEUES:
            local_stack.start_worker(settings, queue)
        yield settings
    finally:
        local_stack.down(settings, timeout=10)  # Ray's SIGTERM drain takes ~30 s; SIGKILL after 10 is fine here
