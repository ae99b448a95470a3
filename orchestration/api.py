"""ttrain from Python: the operations behind every CLI command, for notebooks and scripts.

    from orchestration.api import Ttrain

    tt = Ttrain.connect()                        # the same settings as the CLI (env, $TTRAIN_HOME)
    result = tt.train({"kind": "custom", "entrypoint": "my_pkg.train:train_func", "max_steps": 500})
    tt.sweep("sweep.yaml")                       # a file, a dict or a SweepSpec; waits for the end
    frame = tt.leaderboard_frame("my-sweep")     # pandas, one row per trial

`Ttrain` is synchronous (it runs its own event loop); `AsyncTtrain` has the same methods as coroutines, for code
that already runs in an event loop. Failures raise `CliError` (one readable line) or the pydantic error of the input.
The functions below the classes are the building blocks, shared with the CLI (`orchestration.cli`), which adds only
argument parsing and printing (`orchestration.views`).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from orchestration import inventory, scaleup
from orchestration.client import QUERY_PATIENCE_S, connect, patient_query, wait_for_result
from orchestration.config_loading import ConfigError, anchored, load_config, read_mapping, validate
from orchestration.errors import CliError, root_message
from orchestration.experiments import load_experiments
from orchestration.export import Exported, check_target, export_checkpoint
from orchestration.launch import Launched, launch
from orchestration.ledger import choose, newest, present
from orchestration.settings import Settings
from orchestration.sweeps.models import (
    LIVE_SWEEP_SETTINGS,
    BoardPage,
    SweepLeaderboard,
    SweepSpec,
    SweepState,
    check_trials,
)
from orchestration.types import (
    CoordinatorRequest,
    CoordinatorResult,
    EvaluationRequest,
    EvaluationResult,
    InferenceRequest,
    InferenceResult,
    Progress,
    RunOptions,
    RunStatus,
    ScaleUpRequest,
    ScaleUpResult,
    TrainingRequest,
    TrainingResult,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.inference import EvaluationWorkflow, InferenceWorkflow
from orchestration.workflows.scaleup import ScaleUpWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs import storage
from ray_jobs.history import MetricRow
from ray_jobs.specs import ScalableConfig, TrainConfig, check_id

PAGE = 1_000  # trials per leaderboard query: every answer stays far below Temporal's payload limit
SWEEP_CONTROLS = ("pause", "resume", "stop", "cancel", "extend", "budget", "concurrency")
T = TypeVar("T")
R = TypeVar("R", InferenceRequest, EvaluationRequest)


class AsyncTtrain:
    """Every operation of the CLI, as coroutines. One client, one settings object."""

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client, self.settings = client, settings

    @classmethod
    async def connect(cls, settings: Settings | None = None) -> AsyncTtrain:
        settings = settings or Settings.from_env()
        return cls(await connect_client(settings), settings)

    async def start(
        self, config: TrainConfig | dict | str, run_id: str | None = None, replace: bool = False, **options
    ) -> WorkflowHandle:
        """Start a run (or attach to the same one under `run_id`); `config`: a config, a dict, or a YAML/JSON path."""
        launched = await launch_training(
            self.client, self.settings, run_id or new_run_id(), as_config(config), replace, **options
        )
        return launched.handle

    async def train(
        self, config: TrainConfig | dict | str, run_id: str | None = None, replace: bool = False, **options
    ) -> TrainingResult:
        """A run to its end: its result, or `CliError` with why it failed."""
        handle = await self.start(config, run_id, replace, **options)
        return await result_of(handle, f"run {handle.id}")

    async def status(self, run_id: str) -> RunStatus:
        return (await run_status(self.client, run_id))[0]

    async def evaluate(self, run_id: str, checkpoint_step: int | None = None, best: bool = False) -> EvaluationResult:
        req = EvaluationRequest(run_id=run_id, checkpoint_step=checkpoint_step)
        return await evaluate(self.client, self.settings, req, best)

    async def export(
        self, run_id: str, directory: str | Path, checkpoint_step: int | None = None, best: bool = True
    ) -> Exported:
        return await export(self.client, run_id, export_target(directory), checkpoint_step, best)

    async def infer(
        self,
        run_id: str,
        texts: list[str],
        pairs: list[str] | None = None,
        checkpoint_step: int | None = None,
        best: bool = False,
    ) -> InferenceResult:
        req = InferenceRequest(run_id=run_id, texts=texts, text_pairs=pairs, checkpoint_step=checkpoint_step)
        return await infer(self.client, self.settings, req, best)

    async def experiments(
        self, file: str, max_concurrency: int | None = None, replace: bool = False, wait: bool = True
    ) -> CoordinatorResult | WorkflowHandle:
        req = experiments_request(self.settings, file, max_concurrency)
        launched = await launch_experiments(self.client, self.settings, req, replace)
        return await result_of(launched.handle, f"experiments {launched.handle.id}") if wait else launched.handle

    async def results(self, experiment_id: str) -> CoordinatorResult:
        return await query(self.client, experiment_id, CoordinatorWorkflow.results, "experiments")

    async def sweep(
        self, spec: SweepSpec | dict | str, replace: bool = False, wait: bool = True
    ) -> SweepState | WorkflowHandle:
        """A sweep from a spec, a dict or a YAML path; its final state (every trial) or, with `wait=False`, its handle."""
        launched = await launch_sweep(self.client, self.settings, as_sweep_spec(spec), replace)
        return await result_of(launched.handle, f"sweep {launched.handle.id}") if wait else launched.handle

    async def sweep_control(self, sweep_id: str, action: str, value: int = 1) -> None:
        await control_sweep(self.client, self.settings, sweep_id, action, value)

    async def leaderboard(self, sweep_id: str, top: int | None = None) -> SweepLeaderboard:
        return await leaderboard(self.client, sweep_id, top)

    async def leaderboard_frame(self, sweep_id: str, top: int | None = None):
        """The leaderboard as a pandas DataFrame: one row per trial, best first; params and the latest result as
        columns (`param.<key>`)."""
        return leaderboard_frame(await self.leaderboard(sweep_id, top))

    async def scaleup(
        self,
        config: ScalableConfig | dict | str,
        workers: list[int],
        weak: bool = False,
        scaleup_id: str | None = None,
        replace: bool = False,
        wait: bool = True,
    ) -> ScaleUpResult | WorkflowHandle:
        """An image config or a custom loop at each worker count: its table (throughput, efficiency, accuracy) or,
        with `wait=False`, its handle."""
        req = scaleup_request(self.settings, as_config(config), workers, weak, scaleup_id)
        launched = await launch_scaleup(self.client, self.settings, req, replace)
        return await result_of(launched.handle, f"scale-up {req.scaleup_id}") if wait else launched.handle

    async def metrics(self, run_id: str) -> list[MetricRow]:
        from orchestration import metrics_view

        return metrics_view.history(self.settings.storage_uri, run_id)

    async def ls(self, kinds: list[str] | None = None, limit: int = 50) -> list[inventory.Listed]:
        return await inventory.list_work(self.client, kinds, limit)

    async def cancel(self, workflow_id: str) -> inventory.Listed:
        return await inventory.cancel(self.client, workflow_id)


class Ttrain:
    """`AsyncTtrain`, synchronous: each call runs to its end on this object's own event loop, in a thread of its
    own, so it works where a loop already runs (a Jupyter notebook) as well as in a plain script."""

    def __init__(self, inner: AsyncTtrain, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self._inner, self._loop, self._thread = inner, loop, thread

    @classmethod
    def connect(cls, settings: Settings | None = None) -> Ttrain:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="ttrain-api", daemon=True)
        thread.start()
        inner = asyncio.run_coroutine_threadsafe(AsyncTtrain.connect(settings), loop).result()
        return cls(inner, loop, thread)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str):
        method = getattr(self._inner, name)
        if not asyncio.iscoroutinefunction(method):
            return method
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def as_config(config: TrainConfig | dict | str) -> TrainConfig:
    """As the CLI reads a config: unknown keys refused, a custom loop's relative `working_dir` made absolute (from
    the file's folder; from here for a dict)."""
    if isinstance(config, str | Path):
        return load_config(str(config), [])
    if isinstance(config, dict):
        return load_config(None, [], base=config)
    return config


def as_sweep_spec(spec: SweepSpec | dict | str) -> SweepSpec:
    """A sweep file, dict or spec, checked before anything connects (including the trial cap); a custom base's
    relative `working_dir` is anchored as for `ttrain train`."""
    where, folder = "", Path.cwd()
    if isinstance(spec, str | Path):
        where, folder, spec = f"{spec}: ", Path(spec).parent, validate(SweepSpec, read_mapping(spec))
    elif isinstance(spec, dict):
        spec = validate(SweepSpec, spec)
    spec = spec.model_copy(update={"base": anchored(spec.base, folder)})
    try:
        check_trials(spec.trials)
    except ValueError as exc:
        raise CliError(f"{where}{exc}") from None
    return spec


def run_options(settings: Settings, **options) -> RunOptions:
    return RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue, **options)


async def result_of(handle: WorkflowHandle, what: str):
    try:
        return await wait_for_result(handle)
    except WorkflowFailureError as exc:
        raise CliError(f"{what} failed: {root_message(exc)}") from None


def leaderboard_frame(board: SweepLeaderboard):
    import pandas as pd

    rows = []
    for t in board.trials:
        latest = t.latest
        rows.append(
            {
                "trial": t.index,
                "run_id": t.run_id,
                "state": t.state,
                "rung": t.rung,
                "steps": latest.steps if latest else None,
                board.metric: latest.score if latest else None,
                **{f"param.{k}": v for k, v in t.params.items()},
            }
        )
    return pd.DataFrame(rows)


def new_run_id(prefix: str = "ft") -> str:
    return f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


async def connect_client(settings: Settings) -> Client:
    try:
        return await connect(settings)
    except RuntimeError as exc:
        raise CliError(
            f"cannot reach Temporal at {settings.temporal_address} ({exc}); is `ttrain up` running?"
        ) from None


async def live_progress(client: Client, handle: WorkflowHandle) -> Progress | None:
    """The training activity's last heartbeat: the step between checkpoints, which the workflow does not store."""
    desc = await handle.describe()
    for pending in desc.raw_description.pending_activities:
        if pending.heartbeat_details.payloads:
            (details,) = await client.data_converter.decode(pending.heartbeat_details.payloads, [Progress])
            return details
    return None


async def query(client: Client, workflow_id: str, query_fn, what: str, *args, patience_s: float = QUERY_PATIENCE_S):
    """A workflow's query answer, or one line saying why there is none (unknown id, no worker, a server that stayed
    busy or down)."""
    try:
        return await patient_query(client.get_workflow_handle(workflow_id), query_fn, *args, patience_s=patience_s)
    except RPCError as exc:
        raise CliError(f"{what} {workflow_id!r}: {exc.message}") from None
    except WorkflowQueryFailedError as exc:  # e.g. not that kind of workflow, or a query its release lacks
        raise CliError(f"{what} {workflow_id!r}: {exc.message}") from None


async def run_status(
    client: Client, run_id: str, patience_s: float = QUERY_PATIENCE_S
) -> tuple[RunStatus, Progress | None]:
    handle = client.get_workflow_handle(run_id)
    status = await query(client, run_id, CheckpointedTrainingWorkflow.status, "run", patience_s=patience_s)
    live = await live_progress(client, handle) if status.state == "training" else None
    if live is not None:
        status.ray_job_status = live.job_status  # PENDING: the cluster has no room for it yet, not a failure
        status.waiting = live.waiting
        if live.step > status.step:
            status.step, status.total_steps = live.step, live.total_steps or status.total_steps
    return status, live


def training_request(settings: Settings, run_id: str, config: TrainConfig, **options) -> TrainingRequest:
    opts = run_options(settings, **options)
    return TrainingRequest(run_id=run_id, config=config, options=opts)


async def start_training(client: Client, settings: Settings, run_id: str, config: TrainConfig, **options):
    """Start a new run under an unused id (tests and benches); people go through `launch_training`."""
    return await client.start_workflow(
        CheckpointedTrainingWorkflow.run,
        training_request(settings, run_id, config, **options),
        id=run_id,
        task_queue=settings.orchestration_queue,
    )


async def launch_training(
    client: Client, settings: Settings, run_id: str, config: TrainConfig, replace: bool = False, **options
) -> Launched:
    """Start a run, or attach to / report the run already under this id with the same config (a failed or
    cancelled one continues from its newest checkpoint); a different config under a taken id is refused."""

    async def from_last_checkpoint(req: TrainingRequest, old: WorkflowHandle) -> TrainingRequest:
        status = await query(client, old.id, CheckpointedTrainingWorkflow.status, "run")
        kept = [c for c in status.checkpoints if not c.deleted]
        return req.model_copy(update={"resume_from": newest(*kept), "ledger": status.checkpoints})

    return await launch(
        client,
        CheckpointedTrainingWorkflow.run,
        training_request(settings, run_id, config, **options),
        workflow_id=run_id,
        task_queue=settings.orchestration_queue,
        what="run",
        identity=lambda r: r.config.model_dump(mode="json"),
        replace=replace,
        retry=from_last_checkpoint,
    )


async def execute(client: Client, settings: Settings, run, req, workflow_id: str, what: str):
    """Run a short workflow on the orchestration queue to its result, or one line saying why it failed."""
    handle = await client.start_workflow(run, req, id=workflow_id, task_queue=settings.orchestration_queue)
    return await result_of(handle, what)


def export_target(directory: str | Path) -> Path:
    """Where an export goes, refused (a URI, a folder with files) before anything connects."""
    try:
        return check_target(directory)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def export(client: Client, run_id: str, target: Path, step: int | None, best: bool) -> Exported:
    """The run's checkpoint at `step`, else its best (else its newest), copied into `target` (`export_target`) for
    code of the user's own (`orchestration.export`)."""
    status, _ = await run_status(client, run_id)
    config = await query(client, run_id, CheckpointedTrainingWorkflow.config, "run")

    def copy() -> Exported:
        chosen = choose(status, present(status, storage.exists), step, best)
        return export_checkpoint(chosen, target, status.kind, config, status.best_checkpoint)

    try:
        return await asyncio.to_thread(copy)
    except (ValueError, OSError) as exc:
        raise CliError(f"export of {run_id!r}: {exc}") from None


async def best_step(client: Client, run_id: str) -> int | None:
    """The step of the run's best checkpoint (None: the run names no `best_metric`, so its newest). Resolved here,
    so a worker of an older release asked for a step never answers with the newest instead."""
    status, _ = await run_status(client, run_id)
    if status.best_checkpoint is None and status.best_metric is not None:
        raise CliError(f"run {run_id!r} has no checkpoint that reported {status.best_metric!r} yet")
    return status.best_checkpoint.step if status.best_checkpoint else None


async def at_best(client: Client, req: R, best: bool) -> R:
    """`req` at the run's best step when `best` and no step was given (`best_step`)."""
    if best and req.checkpoint_step is None:
        return req.model_copy(update={"checkpoint_step": await best_step(client, req.run_id)})
    return req


async def infer(client: Client, settings: Settings, req: InferenceRequest, best: bool = False) -> InferenceResult:
    req = await at_best(client, req, best)
    workflow_id = f"{req.run_id}-infer-{uuid.uuid4().hex[:8]}"
    return await execute(client, settings, InferenceWorkflow.run, req, workflow_id, f"inference on {req.run_id}")


async def sweep_state_to_continue(client: Client, sweep_id: str) -> SweepState:
    """A closed sweep's whole state (its last execution, replayed to answer the query), ready to run again. Nothing
    runs for it any more (a cancelled sweep cancelled its segments; a failed one's report to nobody): its trials that
    were running count as failed in the new run."""
    state = await query(client, sweep_id, SweepWorkflow.state, "sweep")
    return state.model_copy(update={"stopping": False, "live": []})


async def leaderboard(client: Client, sweep_id: str, top: int | None) -> SweepLeaderboard:
    """The `top` best trials (all when None), fetched a page at a time."""
    board = await query(client, sweep_id, SweepWorkflow.leaderboard, "sweep", BoardPage(limit=min(top or PAGE, PAGE)))
    wanted = board.trials_started if top is None else min(top, board.trials_started)
    while len(board.trials) < wanted:
        page = BoardPage(offset=len(board.trials), limit=min(PAGE, wanted - len(board.trials)))
        more = await query(client, sweep_id, SweepWorkflow.leaderboard, "sweep", page)
        if not more.trials:  # the sweep's trials were counted in an earlier execution's answer
            break
        board.trials += more.trials
    return board


async def evaluate(client: Client, settings: Settings, req: EvaluationRequest, best: bool = False) -> EvaluationResult:
    req = await at_best(client, req, best)
    workflow_id = f"{req.run_id}-eval-{uuid.uuid4().hex[:8]}"
    return await execute(client, settings, EvaluationWorkflow.run, req, workflow_id, f"evaluation of {req.run_id}")


def experiments_request(settings: Settings, file: str, max_concurrency: int | None = None) -> CoordinatorRequest:
    """The experiment file, validated (before anything connects: a bad file is refused without a server)."""
    return load_experiments(file, run_options(settings), max_concurrency)


async def launch_experiments(client: Client, settings: Settings, req: CoordinatorRequest, replace: bool) -> Launched:
    return await launch(
        client,
        CoordinatorWorkflow.run,
        req,
        workflow_id=req.experiment_id,
        task_queue=settings.orchestration_queue,
        what="experiment set",
        identity=lambda r: r.model_dump(mode="json", include={"experiments", "metric", "mode"}),
        replace=replace,
    )


def scaleup_request(
    settings: Settings, config: TrainConfig, workers: list[int], weak: bool, scaleup_id: str | None
) -> ScaleUpRequest:
    """Checked before anything connects; weak scaling needs a batch to scale (`train_loop_config.batch_size`)."""
    if config.kind not in ("image", "custom"):
        hint = " (an image config says `kind: image`)" if config.kind == "text" else ""
        raise ConfigError(f"a scale-up runs an image config or a custom loop, not a {config.kind} config{hint}")
    if not workers or min(workers) < 1 or len(set(workers)) != len(workers):
        raise ConfigError(f"worker counts {workers}: expected distinct counts >= 1")
    if weak and scaleup.one_worker_batch(config) is None:
        raise ConfigError("weak scaling scales train_loop_config.batch_size (the global batch): this loop has none")
    try:
        scaleup_id = check_id(scaleup_id or f"scaleup-{uuid.uuid4().hex[:8]}", "scale-up id")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ScaleUpRequest(
        scaleup_id=scaleup_id,
        config=config,
        workers=sorted(workers),
        scaling="weak" if weak else "strong",
        options=run_options(settings),
    )


async def launch_scaleup(client: Client, settings: Settings, req: ScaleUpRequest, replace: bool) -> Launched:
    """Start a scale-up, or follow / report the same one under its id; another under a taken id is refused."""
    return await launch(
        client,
        ScaleUpWorkflow.run,
        req,
        workflow_id=req.scaleup_id,
        task_queue=settings.orchestration_queue,
        what="scale-up",
        identity=lambda r: r.model_dump(mode="json", include={"config", "workers", "scaling"}),
        replace=replace,
    )


async def launch_sweep(client: Client, settings: Settings, spec: SweepSpec, replace: bool) -> Launched:
    """Start a sweep (its spec checked by `as_sweep_spec`), or follow / continue the same one under its id; another
    under a taken id is refused."""
    state = SweepState(
        spec=spec,
        options=run_options(settings),
        search_attributes=os.environ.get("TTRAIN_SEARCH_ATTRIBUTES", "1") != "0",
    )
    return await launch(
        client,
        SweepWorkflow.run,
        state,
        workflow_id=spec.id,
        task_queue=settings.orchestration_queue,
        what="sweep",
        identity=lambda s: s.spec.model_dump(mode="json", exclude=LIVE_SWEEP_SETTINGS),
        replace=replace,
        retry=lambda s, old: sweep_state_to_continue(client, old.id),
    )


async def control_sweep(client: Client, settings: Settings, sweep_id: str, action: str, value: int = 1) -> None:
    """pause / resume / stop are signals; cancel cancels it and its running trials (each stops its Ray job);
    concurrency, budget and extend (of a running sweep) are validated updates; extend of a closed sweep starts a new
    run of the same id from its whole state."""
    if action not in SWEEP_CONTROLS:
        raise CliError(f"sweep action {action!r} is not one of {', '.join(SWEEP_CONTROLS)}")
    handle = client.get_workflow_handle(sweep_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        raise CliError(f"sweep {sweep_id!r}: {exc.message}") from None
    running = desc.status is not None and desc.status.name == "RUNNING"
    if action != "extend" and not running:
        raise CliError(f"sweep {sweep_id} is not running")
    if action in ("pause", "resume", "stop"):
        await handle.signal(action)
    elif action == "cancel":
        await handle.cancel()
    elif action == "concurrency":
        await handle.execute_update(SweepWorkflow.set_max_concurrency, value)
    elif action == "budget":
        await handle.execute_update(SweepWorkflow.raise_budget, value)
    elif running:
        await handle.execute_update(SweepWorkflow.add_trials, value)
    else:
        state = await sweep_state_to_continue(client, sweep_id)
        try:
            state.spec.trials = check_trials(state.spec.trials + value)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        await client.start_workflow(SweepWorkflow.run, state, id=sweep_id, task_queue=settings.orchestration_queue)
