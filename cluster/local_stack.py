"""The local stack behind `ttrain up / down / ps`: Temporal dev server, Ray head, one worker per task queue
(and, for a multi-node cluster on one machine, more Ray nodes joining the head: `start_ray_node`).

Each process is started as the real binary (not through a shell) in its own session, so the pid recorded in
`$TTRAIN_HOME/run/<name>.pid` is the process to signal, and it outlives the CLI that started it. `up` is idempotent:
it starts only what is not alive. Everything listens on 127.0.0.1, except the gRPC servers Ray binds to every
interface (GCS, raylet, each Ray worker), which refuse any call without Ray's token (README, security notes).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from orchestration.settings import Settings

WORKER_QUEUES = ("training", "orchestration")
# Ray's switch for a cluster that is one machine (its default on macOS and Windows): node address on loopback
RAY_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass
class Service:
    name: str
    pid: int | None
    alive: bool
    detail: str = ""


def run_dir(settings: Settings) -> Path:
    return settings.home / "run"


def _pid_file(settings: Settings, name: str) -> Path:
    return run_dir(settings) / f"{name}.pid"


def read_pid(settings: Settings, name: str) -> int | None:
    try:
        return int(_pid_file(settings, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def _spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    _pid_file(settings, name).write_text(str(proc.pid))
    return proc.pid


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


def _wait(check, what: str, timeout: float, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not pid_alive(pid):
            raise RuntimeError(f"{what} exited during start-up; see its log under $TTRAIN_HOME/logs")
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def ray_jobs_api_up(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{settings.ray_dashboard_url}/api/version", timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # answering, and asking for the token: up
    except OSError:
        return False


def ray_auth_env() -> dict[str, str]:
    """Ray's token authentication stays on. Ray's own processes read the token from its default place
    (`~/.ray/auth_token`, what `ray get-auth-token --generate` writes), so the stack makes sure one is there."""
    if {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        return {"RAY_AUTH_MODE": "token"}
    token = Path.home() / ".ray" / "auth_token"
    if not token.exists():
        token.parent.mkdir(parents=True, exist_ok=True)
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token"}


def _bin(name: str) -> str:
    """Prefer the binary installed next to this interpreter (the virtualenv's `temporal`, `ray`)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def start_temporal(settings: Settings) -> int:
    host, port = _host_port(settings.temporal_address, 7233)
    pid = _spawn(
        settings,
        "temporal",
        [
            _bin("temporal"),
            "server",
            "start-dev",
            "--ip",
            host,
            "--port",
            str(port),
            "--ui-port",
            str(port + 1000),
            "--db-filename",
            str(settings.home / "temporal.db"),
            "--log-level",
            "warn",
            # what sweeps publish, so the UI can list and sort them by best score
            "--search-attribute",
            "TtrainBestScore=Double",
            "--search-attribute",
            "TtrainBestRung=Int",
            "--search-attribute",
            "TtrainTrials=Int",
        ],
    )
    _wait(lambda: port_open(host, port), "Temporal dev server", 60, pid)
    return pid


def ray_temp_dir(settings: Settings) -> str:
    """Ray's socket paths must stay short: one temp dir per state dir, under /tmp."""
    return f"/tmp/ttrain-ray-{hashlib.sha1(str(settings.home).encode()).hexdigest()[:8]}"


def _moved_ports(base: int, head: bool) -> list[str]:
    """Ray's per-node ports that have fixed defaults (or would collide on one machine), moved to base, base + 1, ...

    Ray itself only knows one node per machine by default. Several stacks (tests, benchmarks) or several nodes of
    one cluster on the same machine need each node's ports apart; worker ports (10002-19999) are Ray's own pool.
    """
    names = ["ray-client-server-port"] if head else ["node-manager-port", "object-manager-port"]
    names += [
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    ]
    return [f"--{name}={base + i}" for i, name in enumerate(names)]


def _ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # `python` in a job's entrypoint must be this environment's interpreter; Ray's token auth stays on
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        **ray_auth_env(),
        **(extra or {}),
    }


def ray_gcs_port() -> int:
    return int(os.environ.get("TTRAIN_RAY_GCS_PORT", "6379"))


def start_ray(
    settings: Settings,
    num_cpus: int | None = None,
    resources: dict | None = None,
    gcs_port: int | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """The Ray head with the dashboard / Jobs API at `settings.ray_address`; `env` adds to its environment
    (e.g. Ray system config as `RAY_<name>` variables).

    Ray turns `--node-ip-address=127.0.0.1` into the machine's routable address, so its agents, metrics exporters
    and Ray Client server would listen on the network. Without `settings.ray_node_ip` the head is a one-machine
    cluster: Ray's own single-machine switch keeps its node address on loopback (its gRPC servers, which Ray binds to
    every interface whatever it is told, all require the token). With it, other machines can join."""
    host, dashboard_port = _host_port(settings.ray_address, 8265)
    gcs_port = gcs_port or ray_gcs_port()
    argv = [
        _bin("ray"),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={settings.ray_node_ip or host}",
        f"--port={gcs_port}",
        "--include-dashboard=true",
        f"--dashboard-host={host}",
        f"--dashboard-port={dashboard_port}",
        f"--temp-dir={ray_temp_dir(settings)}",
        "--disable-usage-stats",
    ]
    if not settings.ray_node_ip:
        env = {RAY_SINGLE_MACHINE: "0", **(env or {})}
    if gcs_port != 6379:  # a second stack on this machine (tests, benchmarks): move Ray's other fixed ports too
        argv += _moved_ports(gcs_port + 1, head=True)
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    pid = _spawn(settings, "ray", argv, _ray_env(env))
    _wait(lambda: ray_jobs_api_up(settings), "Ray head (Jobs API)", 120, pid)
    return pid


def start_ray_node(
    settings: Settings,
    name: str,
    head_address: str,
    port_base: int,
    num_cpus: int | None = None,
    resources: dict | None = None,
    timeout: float = 120,
) -> int:
    """One more Ray node joining the head at `head_address` (its GCS, host:port): `ray start --address --block`,
    in its own session, its pid in `$TTRAIN_HOME/run/<name>.pid` like every other service.

    On another host this is just what a user runs there; it exists here so one machine can hold a multi-node
    cluster (the multi-node tests): such a node needs its own node-manager, object-manager and agent ports
    (`port_base` .. `port_base + 5`), and the token the head checks. Returns once the head lists the node alive.
    """
    host, _ = _host_port(head_address, 6379)
    argv = [
        _bin("ray"),
        "start",
        f"--address={head_address}",
        "--block",
        f"--node-ip-address={host}",
        "--disable-usage-stats",
        *_moved_ports(port_base, head=False),
    ]
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if resources:
        argv.append(f"--resources={json.dumps(resources)}")
    pid = _spawn(settings, name, argv, _ray_env())
    _wait(lambda: ray_node_alive(settings, pid), f"Ray node {name}", timeout, pid)
    return pid


def raylet_of(pid: int) -> tuple[int, str] | None:
    """The raylet a `ray start --block` process (`pid`) runs, as (raylet pid, node id); Ray passes the node id on
    the raylet's command line. None while it has none."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and argv[0].endswith(b"/raylet"):
            ids = [a.split(b"=", 1)[1].decode() for a in argv if a.startswith(b"--node_id=")]
            if ids:
                return int(proc.name), ids[0]
    return None


def ray_node_alive(settings: Settings, pid: int) -> bool:
    """The head lists the node that `ray start` process `pid` runs as alive."""
    from ray.util.state import list_nodes

    raylet = raylet_of(pid)
    if raylet is None:
        return False
    try:
        nodes = list_nodes(address=settings.ray_dashboard_url)
    except Exception:  # the dashboard is busy or restarting: not yet
        return False
    return any(n.node_id == raylet[1] and n.state == "ALIVE" for n in nodes)


def worker_name(queue: str, index: int = 0) -> str:
    return f"worker-{queue}" if index == 0 else f"worker-{queue}-{index}"


def start_worker(settings: Settings, queue: str, index: int = 0) -> int:
    name = worker_name(queue, index)
    return _spawn(
        settings, name, [sys.executable, "-m", "orchestration.cli", "worker", "--queue", queue], _env(settings)
    )


def _env(settings: Settings) -> dict[str, str]:
    """What a worker needs to find the same servers and storage as the CLI that started it."""
    return {
        "TTRAIN_HOME": str(settings.home),
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TTRAIN_RAY_ADDRESS": settings.ray_address,
        "TTRAIN_STORAGE": settings.storage_uri,
        "TTRAIN_TRAINING_QUEUE": settings.training_queue,
        "TTRAIN_ORCHESTRATION_QUEUE": settings.orchestration_queue,
        "TTRAIN_MAX_CONCURRENT_TRAININGS": str(settings.max_concurrent_trainings),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        **ray_auth_env(),
    }


def up(
    settings: Settings, start_ray_head: bool = True, start_temporal_server: bool = True, training_workers: int = 1
) -> list[str]:
    """Start whatever is not alive; returns the names started."""
    started = []
    if start_temporal_server and not pid_alive(read_pid(settings, "temporal")):
        start_temporal(settings)
        started.append("temporal")
    if start_ray_head and not pid_alive(read_pid(settings, "ray")):
        start_ray(settings)
        started.append("ray")
    wanted = [("training", i) for i in range(training_workers)] + [("orchestration", 0)]
    for queue, index in wanted:
        name = worker_name(queue, index)
        if not pid_alive(read_pid(settings, name)):
            start_worker(settings, queue, index)
            started.append(name)
    return started


def stop(settings: Settings, name: str, timeout: float = 30) -> bool:
    """SIGTERM, then SIGKILL after `timeout`; the process group goes too (Ray's --block head takes its children)."""
    pid = read_pid(settings, name)
    stopped = False
    if pid_alive(pid):
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not pid_alive(pid):
                break
        stopped = True
    _pid_file(settings, name).unlink(missing_ok=True)
    return stopped


def known_services(settings: Settings) -> list[str]:
    names = [p.stem for p in run_dir(settings).glob("*.pid")] if run_dir(settings).exists() else []
    # stop workers before the servers they talk to, and extra Ray nodes (`ray-node-*`) before the head
    order = {"worker": 0, "ray-node": 1, "ray": 2, "temporal": 3}
    return sorted(names, key=lambda n: (order.get("-".join(n.split("-")[:2]), order.get(n.split("-")[0], 0)), n))


def down(settings: Settings, timeout: float = 30) -> list[str]:
    """Stop everything recorded in this state dir. `timeout` bounds each graceful stop: a Ray node's SIGTERM drain
    can take ~30 s, which a throwaway stack (tests) need not wait for."""
    return [name for name in known_services(settings) if stop(settings, name, timeout)]


def ps(settings: Settings) -> list[Service]:
    services = []
    for name in sorted(known_services(settings)):
        pid = read_pid(settings, name)
        detail = ""
        if name == "temporal":
            detail = f"{settings.temporal_address}  UI {settings.temporal_ui_url}"
        elif name == "ray":
            detail = f"dashboard {settings.ray_dashboard_url}"
        services.append(Service(name, pid, pid_alive(pid), detail))
    return services
