"""Where the servers and storage are, read from the environment once: nothing about a deployment is hard-coded.

Temporal's own connection settings (address, namespace, TLS, API key, profiles) come through the SDK's env-config
(`TEMPORAL_ADDRESS`, `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import platformdirs
from pydantic import BaseModel

ADDRESSES_FILE = "addresses.json"
INLINE_MAX = 256 * 1024  # Temporal warns from 512 KB and refuses 2 MB


LEGACY_HOME = Path(".ttrain")  # the default before the per-user one


def default_home() -> Path:
    """Per user, not per directory: `ttrain status` finds the same stack and runs from wherever it is typed
    (`~/.local/share/ttrain` on Linux). The Makefile keeps its demo and tests in the repository's `.ttrain`. A
    `./.ttrain` that an earlier release's `ttrain up` started a stack in is still used, so that stack, its pids and
    its storage are found until it is stopped."""
    if (LEGACY_HOME / "run").is_dir():
        return LEGACY_HOME
    return platformdirs.user_data_path("ttrain")


class Settings(BaseModel):
    home: Path
    temporal_address: str
    ray_address: str
    storage_uri: str
    training_queue: str
    orchestration_queue: str
    ray_python: str
    max_concurrent_trainings: int
    payload_inline_max: int  # bytes; larger payloads travel as claim checks (`orchestration.payloads`)
    ray_node_ip: str | None = None  # `ttrain up`'s Ray head serves other machines at this address (default: none)

    @property
    def ray_dashboard_url(self) -> str:
        return self.ray_address if "://" in self.ray_address else f"http://{self.ray_address}"

    @property
    def temporal_ui_url(self) -> str:
        """`TTRAIN_TEMPORAL_UI`, else where `ttrain up`'s dev server serves its UI: the gRPC port plus 1000."""
        if explicit := os.environ.get("TTRAIN_TEMPORAL_UI"):
            return explicit.rstrip("/")
        parsed = urlparse(f"tcp://{self.temporal_address}")
        return f"http://{parsed.hostname or '127.0.0.1'}:{(parsed.port or 7233) + 1000}"

    def save_addresses(self) -> None:
        """`ttrain up --temporal-address/--ray-address` is remembered for later commands in this state dir."""
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        addresses = {"TEMPORAL_ADDRESS": self.temporal_address, "TTRAIN_RAY_ADDRESS": self.ray_address}
        (self.home / "run" / ADDRESSES_FILE).write_text(json.dumps(addresses))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("TTRAIN_HOME") or default_home()).expanduser().absolute()
        saved = home / "run" / ADDRESSES_FILE
        if saved.exists():  # the environment still wins over what `up` remembered
            env = {**json.loads(saved.read_text()), **env}
        return cls(
            home=home,
            temporal_address=env.get("TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            ray_address=env.get("TTRAIN_RAY_ADDRESS", "http://127.0.0.1:8265"),
            storage_uri=env.get("TTRAIN_STORAGE", str(home / "storage")),
            training_queue=env.get("TTRAIN_TRAINING_QUEUE", "ttrain-training"),
            orchestration_queue=env.get("TTRAIN_ORCHESTRATION_QUEUE", "ttrain-orchestration"),
            ray_python=env.get("TTRAIN_RAY_PYTHON", "python"),
            max_concurrent_trainings=int(env.get("TTRAIN_MAX_CONCURRENT_TRAININGS", "4")),
            payload_inline_max=int(env.get("TTRAIN_PAYLOAD_INLINE_MAX", INLINE_MAX)),
            ray_node_ip=env.get("TTRAIN_RAY_NODE_IP") or None,
        )
