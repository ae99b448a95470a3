"""`ttrain`: the command line. Each subcommand is a thin layer over a workflow start, signal or query.

Errors are one readable line on stderr and a non-zero exit; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from datetime import datetime

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError

from orchestration import inventory
from orchestration.client import connect
from orchestration.config_loading import ConfigError, load_config, read_mapping, validate
from orchestration.errors import CliError, root_message
from orchestration.experiments import load_experiments
from orchestration.launch import Launched, launch
from orchestration.ledger import newest
from orchestration.ray_submission import RaySubmission
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
    CoordinatorResult,
    EvaluationRequest,
    EvaluationResult,
    InferenceRequest,
    InferenceResult,
    Progress,
    RunOptions,
    RunStatus,
    TrainingRequest,
    TrainingResult,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.inference import EvaluationWorkflow, InferenceWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow
from ray_jobs.specs import TrainConfig, check_id

DEMO_CONFIG = {
    "num_hidden_layers": 3,
    "dataset": {"max_rows": 4000},
    "epochs": 1,
    "batch_size": 16,
    "lr": 1e-4,
    "max_seq_length": 128,
    "checkpoint_every_steps": 50,
    "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 2}},
}
DEMO_TEXTS = [
    "A warm, funny and beautifully acted film. I loved every minute of it.",
    "Two hours of my life I will never get back: dull, loud and badly written.",
    "The plot meanders, but the lead performance carries it to a moving finale.",
]


def new_run_id(prefix: str = "ft") -> str:
    return f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


async def _client(settings: Settings) -> Client:
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


TABLE_TOP = 20  # rows of the leaderboard table unless --top says otherwise
PAGE = 1_000  # trials per leaderboard query: every answer stays far below Temporal's payload limit


async def query(client: Client, workflow_id: str, query_fn, what: str, *args):
    """A workflow's query answer, or one line saying why there is none (unknown id, no worker)."""
    try:
        return await client.get_workflow_handle(workflow_id).query(query_fn, *args)
    except RPCError as exc:
        raise CliError(f"{what} {workflow_id!r}: {exc.message}") from None


async def wait_reporting(handle: WorkflowHandle, line, what: str, every_s: float = 5.0):
    """The workflow's result; meanwhile `line()` (a live query) goes to stderr every few seconds."""
    result_task = asyncio.ensure_future(handle.result())
    while not result_task.done():
        await asyncio.wait([result_task], timeout=every_s)
        if not result_task.done():
            with contextlib.suppress(RPCError):
                print(await line(), file=sys.stderr)
    try:
        return result_task.result()
    except WorkflowFailureError as exc:
        raise CliError(f"{what} failed: {root_message(exc)}") from None


async def run_status(client: Client, run_id: str) -> tuple[RunStatus, Progress | None]:
    handle = client.get_workflow_handle(run_id)
    status = await query(client, run_id, CheckpointedTrainingWorkflow.status, "run")
    live = await live_progress(client, handle) if status.state == "training" else None
    if live is not None:
        status.ray_job_status = live.job_status  # PENDING: the cluster has no room for it yet, not a failure
        status.waiting = live.waiting
        if live.step > status.step:
            status.step, status.total_steps = live.step, live.total_steps or status.total_steps
    return status, live


def status_json(status: RunStatus) -> dict:
    return status.model_dump(mode="json")


def training_request(settings: Settings, run_id: str, config: TrainConfig, **options) -> TrainingRequest:
    opts = RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue, **options)
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
        return req.model_copy(update={"resume_from": newest(*(c for c in status.checkpoints if not c.deleted))})

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


async def follow(client: Client, handle: WorkflowHandle, quiet: bool = False) -> TrainingResult:
    """Poll the run's status into a progress bar until the workflow closes."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    result_task = asyncio.ensure_future(handle.result())
    with Bar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(handle.id, total=None, info="snapshotting")
        while not result_task.done():
            try:
                status, live = await run_status(client, handle.id)
                ckpt = status.latest_checkpoint.step if status.latest_checkpoint else "-"
                loss = f"{live.loss:.4f}" if live and live.loss is not None else "-"
                info = f"{status.state}  loss {loss}  ckpt {ckpt}  resumes {status.resumes}"
                if status.waiting or status.state == "retrying":
                    info += f"  ({status.waiting or status.last_failure})"
                bar.update(task, completed=status.step, total=status.total_steps, info=info)
            except (CliError, RPCError):
                pass  # the orchestration worker may be restarting: keep waiting for the result
            await asyncio.wait([result_task], timeout=1.0)
        try:
            result = result_task.result()
        except WorkflowFailureError as exc:
            raise CliError(f"run {handle.id} failed: {root_message(exc)}") from None
        bar.update(task, completed=result.steps, total=result.steps, info="completed")
    return result


def print_result(result: TrainingResult) -> None:
    m = result.metrics
    acc = f"  held-out accuracy {m['eval_accuracy']:.3f}" if "eval_accuracy" in m else ""
    print(
        f"run {result.run_id}: {result.steps} steps in {result.wall_time_s:.0f}s, final loss {m.get('loss', float('nan')):.4f},"
        f" held-out loss {m.get('eval_loss', float('nan')):.4f}{acc}; {result.checkpoints} checkpoints,"
        f" {result.resumes} resumes, {result.steps_recomputed} steps recomputed; snapshot {result.snapshot_id}"
    )


async def execute(client: Client, settings: Settings, run, req, workflow_id: str, what: str):
    """Run a short workflow on the orchestration queue to its result, or one line saying why it failed."""
    try:
        return await client.execute_workflow(run, req, id=workflow_id, task_queue=settings.orchestration_queue)
    except WorkflowFailureError as exc:
        raise CliError(f"{what} failed: {root_message(exc)}") from None


async def infer(client: Client, settings: Settings, req: InferenceRequest) -> InferenceResult:
    workflow_id = f"{req.run_id}-infer-{uuid.uuid4().hex[:8]}"
    return await execute(client, settings, InferenceWorkflow.run, req, workflow_id, f"inference on {req.run_id}")


async def cmd_train(args, settings: Settings) -> int:
    config = load_config(args.config, args.set)
    client = await _client(settings)
    run_id = args.run_id or new_run_id()
    flags = {
        "heartbeat_timeout_s": args.heartbeat_timeout,
        "stall_timeout_s": args.stall_timeout,
        "cluster_wait_s": args.cluster_wait,
        "max_failures_without_progress": args.max_failures_without_progress,
    }
    options = {k: v for k, v in flags.items() if v is not None}
    launched = await launch_training(client, settings, run_id, config, args.replace, **options)
    print(launched.note, file=sys.stderr)
    if args.detach:
        print(run_id)
        return 0
    print_result(await follow(client, launched.handle))
    return 0


async def cmd_status(args, settings: Settings) -> int:
    status, _ = await run_status(await _client(settings), args.run_id)
    if args.json:
        print(json.dumps(status_json(status)))
        return 0
    job = f" (Ray job {status.ray_job_status.lower()})" if status.ray_job_status else ""
    print(f"run {status.run_id}: {status.state}{job}, step {status.step}/{status.total_steps or '?'}")
    print(f"  snapshot {status.snapshot_id}  ray job {status.ray_job_id}  resumes {status.resumes}")
    if status.waiting:
        print(f"  waiting: {status.waiting}")
    if status.last_failure and status.state != "completed":
        retry = f"; next attempt at {status.retry_at:%H:%M:%S}" if status.retry_at else ""
        print(f"  last failure: {status.last_failure} ({status.failures_without_progress} in a row{retry})")
    if status.earlier_deleted_checkpoints:
        print(f"  {status.earlier_deleted_checkpoints} earlier checkpoints deleted by keep_last")
    for c in status.checkpoints:
        where = "deleted by keep_last" if c.deleted else c.uri
        print(f"  checkpoint step {c.step:>6}  loss {c.metrics.get('loss', float('nan')):.4f}  {where}")
    return 0


async def cmd_infer(args, settings: Settings) -> int:
    if args.pair and len(args.pair) != len(args.texts):
        raise ConfigError(f"--pair: give one per text ({len(args.texts)} texts, {len(args.pair)} pairs)")
    req = InferenceRequest(
        run_id=args.run_id, texts=args.texts, text_pairs=args.pair or None, checkpoint_step=args.checkpoint
    )
    result = await infer(await _client(settings), settings, req)
    if args.json:
        print(result.model_dump_json())
        return 0
    for p in result.predictions:
        print(f"{p.label:>10}  {p.confidence:.3f}  {p.text}")
    return 0


async def cmd_demo(args, settings: Settings) -> int:
    from cluster import local_stack

    t0 = time.monotonic()
    started = await asyncio.to_thread(local_stack.up, settings)
    print(f"stack: started {', '.join(started) or 'nothing (already running)'} in {time.monotonic() - t0:.0f}s")
    try:
        config = load_config(None, args.set, base=DEMO_CONFIG)
        client = await _client(settings)
        run_id = new_run_id("demo")
        print(
            f"fine-tuning {config.model} ({config.num_hidden_layers} layers) on {config.dataset.path} "
            f"({config.dataset.max_rows} rows), checkpoint every {config.checkpoint_every_steps} steps"
        )
        result = await follow(client, await start_training(client, settings, run_id, config))
        preds = await infer(client, settings, InferenceRequest(run_id=run_id, texts=DEMO_TEXTS))
        print("\nsummary")
        print_result(result)
        for c in (await run_status(client, run_id))[0].checkpoints:
            print(f"  checkpoint step {c.step:>5}  loss {c.metrics.get('loss', float('nan')):.4f}  {c.uri}")
        print(f"predictions (checkpoint step {preds.checkpoint_step}):")
        for p in preds.predictions:
            print(f"  {p.label:>8}  {p.confidence:.3f}  {p.text}")
        print(f"demo finished in {time.monotonic() - t0:.0f}s")
    finally:
        for name in reversed(started):
            await asyncio.to_thread(local_stack.stop, settings, name)
    return 0


async def cmd_eval(args, settings: Settings) -> int:
    client = await _client(settings)
    req = EvaluationRequest(run_id=args.run_id, checkpoint_step=args.checkpoint)
    workflow_id = f"{args.run_id}-eval-{uuid.uuid4().hex[:8]}"
    result: EvaluationResult = await execute(
        client, settings, EvaluationWorkflow.run, req, workflow_id, f"evaluation of {args.run_id}"
    )
    if args.json:
        print(result.model_dump_json())
        return 0
    print(format_report(result))
    return 0


def format_report(result: EvaluationResult) -> str:
    r = result.report
    lines = [
        f"run {result.run_id}, checkpoint step {result.checkpoint_step}, split {result.split}: {r['examples']} rows"
    ]
    if r["task"] == "classification":
        lines.append(f"  accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  loss {r['loss']:.4f}")
        for name, c in r["per_class"].items():
            lines.append(
                f"  class {name!r}: precision {c['precision']:.3f} recall {c['recall']:.3f} support {c['support']}"
            )
        lines.append(f"  confusion matrix (rows true, columns predicted): {r['confusion_matrix']}")
        lines.append(f"  baseline ({r['baseline']['name']}) accuracy {r['baseline']['accuracy']:.4f}")
    else:
        lines.append(
            f"  MSE {r['mse']:.4f}  MAE {r['mae']:.4f}  Pearson {r['pearson']:.4f}  Spearman {r['spearman']:.4f}"
        )
        lines.append(f"  baseline ({r['baseline']['name']}) MSE {r['baseline']['mse']:.4f}")
    lines.append(f"  improvement over baseline {r['improvement_over_baseline']:+.4f}")
    return "\n".join(lines)


async def cmd_experiments(args, settings: Settings) -> int:
    options = RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue)
    req = load_experiments(args.file, options, args.max_concurrency)
    client = await _client(settings)
    launched = await launch(
        client,
        CoordinatorWorkflow.run,
        req,
        workflow_id=req.experiment_id,
        task_queue=settings.orchestration_queue,
        what="experiment set",
        identity=lambda r: r.model_dump(mode="json", include={"experiments", "metric", "mode"}),
        replace=args.replace,
    )
    handle = launched.handle
    print(f"{launched.note} ({len(req.experiments)} experiments)", file=sys.stderr)
    if args.detach:
        print(req.experiment_id)
        return 0

    async def line() -> str:
        states = [r.state for r in (await handle.query(CoordinatorWorkflow.results)).rows]
        return " ".join(f"{s}={states.count(s)}" for s in sorted(set(states)))

    print_results(await wait_reporting(handle, line, f"experiments {req.experiment_id}"), "table")
    return 0


async def cmd_results(args, settings: Settings) -> int:
    table = await query(await _client(settings), args.experiment_id, CoordinatorWorkflow.results, "experiments")
    print_results(table, "json" if args.json else "csv" if args.csv else "table")
    return 0


def print_results(table: CoordinatorResult, fmt: str) -> None:
    if fmt == "json":
        print(table.model_dump_json())
        return
    cols = [
        "experiment",
        "run_id",
        "state",
        table.metric,
        "train_time_s",
        "resumes",
        "checkpoints",
        "config_diff",
        "note",
    ]
    rows = [
        [
            r.experiment,
            r.run_id,
            r.state,
            f"{r.metrics[table.metric]:.4f}" if table.metric in r.metrics else "",
            f"{r.train_time_s:.0f}" if r.train_time_s is not None else "",
            str(r.resumes),
            str(r.checkpoints),
            " ".join(f"{k}={v}" for k, v in r.config_diff.items()),
            r.error or (f"reused {r.cached_from}" if r.cached_from else ""),
        ]
        for r in table.rows
    ]
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(cols)
        writer.writerows(rows)
        return
    from rich.console import Console
    from rich.table import Table

    out = Table(title=f"{table.experiment_id}: sorted by {table.metric} ({table.mode})")
    for c in cols:
        out.add_column(c)
    for row in rows:
        out.add_row(*row)
    Console(width=200).print(out)


async def cmd_sweep(args, settings: Settings) -> int:
    spec = validate(SweepSpec, read_mapping(args.file))
    try:
        check_trials(spec.trials)
    except ValueError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    options = RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue)
    client = await _client(settings)
    state = SweepState(
        spec=spec, options=options, search_attributes=os.environ.get("TTRAIN_SEARCH_ATTRIBUTES", "1") != "0"
    )
    launched = await launch(
        client,
        SweepWorkflow.run,
        state,
        workflow_id=spec.id,
        task_queue=settings.orchestration_queue,
        what="sweep",
        identity=lambda s: s.spec.model_dump(mode="json", exclude=LIVE_SWEEP_SETTINGS),
        replace=args.replace,
        retry=lambda s, old: sweep_state_to_continue(client, old.id),
    )
    handle = launched.handle
    print(f"{launched.note} ({spec.strategy}, {spec.trials} trials)", file=sys.stderr)
    if args.detach:
        print(spec.id)
        return 0

    async def line() -> str:
        board = await client.get_workflow_handle(spec.id).query(SweepWorkflow.leaderboard, BoardPage(limit=0))
        best = f"{board.best.latest.score:.4f} ({board.best.run_id})" if board.best else "-"
        return f"trials {board.trials_started}/{board.trials_total}  steps {board.steps_used}  best {best}"

    await wait_reporting(handle, line, f"sweep {spec.id}")
    print_leaderboard(await leaderboard(client, spec.id, TABLE_TOP), as_json=False)
    return 0


async def sweep_state_to_continue(client: Client, sweep_id: str) -> SweepState:
    """A closed sweep's whole state (its last execution, replayed to answer the query), ready to run again. Nothing
    runs for it any more (a cancelled sweep cancelled its segments; a failed one's report to nobody): its trials that
    were running count as failed in the new run."""
    state = await query(client, sweep_id, SweepWorkflow.state, "sweep")
    return state.model_copy(update={"stopping": False, "live": []})


async def cmd_sweep_ctl(args, settings: Settings) -> int:
    client = await _client(settings)
    handle = client.get_workflow_handle(args.sweep_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        raise CliError(f"sweep {args.sweep_id!r}: {exc.message}") from None
    running = desc.status is not None and desc.status.name == "RUNNING"
    if args.action in ("pause", "resume", "stop", "cancel", "concurrency", "budget") and not running:
        raise CliError(f"sweep {args.sweep_id} is not running")
    if args.action in ("pause", "resume", "stop"):
        await handle.signal(args.action)
    elif args.action == "cancel":  # running trials are cancelled and stop their Ray jobs
        await handle.cancel()
    elif args.action == "concurrency":
        await handle.execute_update(SweepWorkflow.set_max_concurrency, args.value)
    elif args.action == "budget":
        await handle.execute_update(SweepWorkflow.raise_budget, args.value)
    elif running:  # extend a live sweep: more trials
        await handle.execute_update(SweepWorkflow.add_trials, args.value)
    else:  # extend a closed sweep (completed, failed or cancelled): a new run of the same id from its whole state
        state = await sweep_state_to_continue(client, args.sweep_id)
        try:
            state.spec.trials = check_trials(state.spec.trials + args.value)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        await client.start_workflow(SweepWorkflow.run, state, id=args.sweep_id, task_queue=settings.orchestration_queue)
    print(f"sweep {args.sweep_id}: {args.action} sent")
    return 0


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


async def cmd_leaderboard(args, settings: Settings) -> int:
    if args.top is not None and args.top < 1:
        raise CliError(f"--top must be at least 1 (got {args.top})")
    top = args.top if args.top is not None or args.json else TABLE_TOP
    print_leaderboard(await leaderboard(await _client(settings), args.sweep_id, top), as_json=args.json)
    return 0


def print_leaderboard(board: SweepLeaderboard, as_json: bool) -> None:
    if as_json:
        print(board.model_dump_json())
        return
    from rich.console import Console
    from rich.table import Table

    out = Table(
        title=f"sweep {board.sweep_id} ({board.strategy}): {board.metric}, {board.mode}; steps {board.steps_used}"
    )
    for c in ("trial", "run id", "state", "rung", "steps", board.metric, "params"):
        out.add_column(c)
    for t in board.trials:
        r = t.latest
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        out.add_row(
            str(t.index),
            t.run_id,
            t.state,
            str(t.rung),
            str(r.steps if r else "-"),
            f"{r.score:.4f}" if r else "-",
            params,
        )
    Console(width=200).print(out)
    if len(board.trials) < board.trials_started:
        print(f"{board.trials_started - len(board.trials)} more trials: --top N, or --json for all")


async def cmd_doctor(args, settings: Settings) -> int:
    from orchestration.doctor import run_checks

    checks = await run_checks(settings)
    for ok, line in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    return 0 if all(ok for ok, _ in checks) else 1


def cmd_up(args, settings: Settings) -> int:
    from cluster import local_stack

    if args.temporal_address:
        settings.temporal_address = args.temporal_address
    if args.ray_address:
        settings.ray_address = args.ray_address
    settings.save_addresses()
    started = local_stack.up(
        settings,
        start_ray_head=not args.ray_address,
        start_temporal_server=not args.temporal_address,
        training_workers=args.training_workers,
    )
    print(f"started: {', '.join(started) or 'nothing (all running)'}")
    return cmd_ps(args, settings)


def cmd_down(args, settings: Settings) -> int:
    from cluster import local_stack

    stopped = local_stack.down(settings)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def cmd_ps(args, settings: Settings) -> int:
    from cluster import local_stack

    for s in local_stack.ps(settings):
        print(f"{s.name:<24} {'running' if s.alive else 'dead':<8} pid {s.pid or '-':<8} {s.detail}")
    print(f"Temporal {settings.temporal_address}   Ray Jobs API {settings.ray_dashboard_url}")
    return 0


async def cmd_ls(args, settings: Settings) -> int:
    listed = await inventory.list_work(await _client(settings), args.kind and [args.kind], args.limit)
    if args.json:
        print(json.dumps([item.model_dump(mode="json") for item in listed]))
        return 0
    for item in listed:
        closed = f"  closed {item.closed:%Y-%m-%d %H:%M:%S}" if item.closed else ""
        print(
            f"{item.kind:<12} {item.status.lower():<15} {item.id:<40} started {item.started:%Y-%m-%d %H:%M:%S}{closed}"
        )
    return 0


async def cmd_cancel(args, settings: Settings) -> int:
    closed = await inventory.cancel(await _client(settings), args.id)
    print(f"{closed.kind} {closed.id}: {closed.status.lower()}")
    return 0


async def cmd_logs(args, settings: Settings) -> int:
    status, _ = await run_status(await _client(settings), args.run_id)
    if not status.ray_job_id:
        raise CliError(f"run {args.run_id!r} has no Ray job yet ({status.state})")
    ray = RaySubmission(settings.ray_address)
    async for chunk in inventory.job_logs(ray, status.ray_job_id, args.follow):
        print(chunk, end="", flush=True)
    return 0


def cmd_worker(args, settings: Settings) -> int:
    from orchestration.worker import run_worker

    asyncio.run(run_worker(args.queue, settings))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttrain", description="Durable, distributed model training.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack (Temporal dev server, Ray head, workers)")
    up.add_argument("--ray-address", help="use this Ray cluster's Jobs API instead of starting a head")
    up.add_argument("--temporal-address", help="use this Temporal server instead of starting a dev server")
    up.add_argument("--training-workers", type=int, default=1, help="training-queue workers to run (default 1)")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("ps", help="show the local stack")
    w = sub.add_parser("worker", help="run one Temporal worker in the foreground")
    w.add_argument("--queue", choices=["training", "orchestration"], required=True)
    t = sub.add_parser("train", help="start a checkpointed training run (any kind)")
    t.add_argument("--config", help="YAML or JSON config: text (default), `kind: image` or `kind: custom`")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--run-id")
    t.add_argument("--detach", action="store_true", help="print the run id and return")
    t.add_argument("--replace", action="store_true", help="cancel and start over a run already under --run-id")
    t.add_argument("--heartbeat-timeout", type=float, help="seconds without a heartbeat before an attempt is retried")
    t.add_argument("--stall-timeout", type=float, help="seconds without a new step before the Ray job is restarted")
    t.add_argument("--cluster-wait", type=float, help="seconds an attempt waits out an unreachable Ray (default 3600)")
    t.add_argument(
        "--max-failures-without-progress", type=int, help="failed attempts in a row, with no new checkpoint (default 8)"
    )
    s = sub.add_parser("status", help="a run's state, step and checkpoint ledger")
    s.add_argument("run_id")
    s.add_argument("--json", action="store_true")
    i = sub.add_parser("infer", help="predict labels with a run's checkpoint")
    i.add_argument("run_id")
    i.add_argument("texts", nargs="+")
    i.add_argument("--checkpoint", type=int, help="checkpoint step (default: the run's newest)")
    i.add_argument("--pair", action="append", help="the second text of each pair (text-pair tasks), in order")
    i.add_argument("--json", action="store_true")
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its snapshot's held-out split")
    ev.add_argument("run_id")
    ev.add_argument(
        "--split", choices=["test", "validation", "heldout"], default="heldout", help="all name the held-out split"
    )
    ev.add_argument("--checkpoint", type=int, help="checkpoint step (default: the run's newest)")
    ev.add_argument("--json", action="store_true")
    ex = sub.add_parser("experiments", help="run a file of experiments in parallel, each trained then evaluated")
    ex.add_argument("file")
    ex.add_argument("--max-concurrency", type=int)
    ex.add_argument("--detach", action="store_true")
    ex.add_argument("--replace", action="store_true", help="cancel and start over a set already under its id")
    rs = sub.add_parser("results", help="an experiment set's results table (live while it runs)")
    rs.add_argument("experiment_id")
    fmt = rs.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    sw = sub.add_parser("sweep", help="run a hyperparameter sweep (random, ladder, tpe) from a YAML file")
    sw.add_argument("file")
    sw.add_argument("--detach", action="store_true")
    sw.add_argument("--replace", action="store_true", help="cancel and start over a sweep already under its id")
    sc = sub.add_parser("sweep-ctl", help="pause, resume, stop, extend a sweep or change its concurrency")
    sc.add_argument("sweep_id")
    sc.add_argument("action", choices=["pause", "resume", "stop", "cancel", "extend", "budget", "concurrency"])
    sc.add_argument(
        "value", nargs="?", type=int, default=1, help="trials to add (extend), steps to add (budget), or concurrency"
    )
    lb = sub.add_parser("leaderboard", help="a sweep's trials, best first (live)")
    lb.add_argument("sweep_id")
    lb.add_argument("--top", type=int, metavar="N", help=f"the N best trials (table default {TABLE_TOP}, JSON: all)")
    lb.add_argument("--json", action="store_true", help="the whole leaderboard as JSON (fetched a page at a time)")
    ls = sub.add_parser("ls", help="runs, sweeps, experiment sets and scale-ups, newest first, with their state")
    ls.add_argument("--kind", choices=sorted(set(inventory.KINDS.values())))
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    cn = sub.add_parser("cancel", help="cancel a run, sweep, experiment set or scale-up; its Ray jobs stop")
    cn.add_argument("id")
    lg = sub.add_parser("logs", help="a run's Ray job log (its newest job)")
    lg.add_argument("run_id")
    lg.add_argument("--follow", "-f", action="store_true", help="go on printing until the job ends")
    sub.add_parser("doctor", help="check the Temporal and Ray endpoints, workers, storage and GPUs")
    cifar_cli().add_parser(sub)
    d = sub.add_parser("demo", help="start the stack, fine-tune, infer, print a summary")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a demo config key")
    return p


COMMANDS = {
    "up": cmd_up,
    "down": cmd_down,
    "ps": cmd_ps,
    "worker": cmd_worker,
    "train": cmd_train,
    "status": cmd_status,
    "infer": cmd_infer,
    "eval": cmd_eval,
    "experiments": cmd_experiments,
    "results": cmd_results,
    "sweep": cmd_sweep,
    "sweep-ctl": cmd_sweep_ctl,
    "leaderboard": cmd_leaderboard,
    "ls": cmd_ls,
    "cancel": cmd_cancel,
    "logs": cmd_logs,
    "doctor": cmd_doctor,
    "demo": cmd_demo,
    "cifar10": lambda args, settings: cifar_cli().dispatch(args, settings),
}


def cifar_cli():
    """Imported on use: it builds on this module's helpers, so it cannot be imported while this one loads."""
    from orchestration import cifar_cli

    return cifar_cli


ID_ARGUMENTS = {"run_id": "run id", "experiment_id": "experiment set id", "sweep_id": "sweep id", "id": "id"}


def check_ids(args: argparse.Namespace) -> None:
    """Every id a command was given becomes a workflow id, a Ray job id or a path: refuse a hostile one here."""
    for attr, what in ID_ARGUMENTS.items():
        if (value := getattr(args, attr, None)) is not None:
            try:
                check_id(value, what)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    handler = COMMANDS[args.command]
    try:
        check_ids(args)
        out = handler(args, settings)
        return asyncio.run(out) if asyncio.iscoroutine(out) else out
    except (CliError, ConfigError) as exc:
        print(f"ttrain: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except RPCError as exc:  # Temporal went away mid-command
        print(f"ttrain: error: Temporal at {settings.temporal_address}: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("TTRAIN_DEBUG"):
            raise
        print(f"ttrain: error: {type(exc).__name__}: {exc} (TTRAIN_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """Console entry point. Exits without interpreter finalization: the Temporal client's native threads (grpc,
    the Rust core) can abort a finalizing interpreter (seen as SIGABRT after a command had already succeeded)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    # `python -m orchestration.cli` runs this file as __main__, a second copy of the module: run the imported one,
    # so that its CliError is the class `cifar_cli` raises
    from orchestration import cli

    cli.run()
