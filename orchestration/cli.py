"""`ttrain`: the command line. Each subcommand parses its arguments, calls `orchestration.api` and prints through
`orchestration.views`.

Errors are one readable line on stderr and a non-zero exit; tracebacks are for bugs, not for bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from temporalio.service import RPCError

from orchestration import cifar_cli, inventory, metrics_view
from orchestration.api import (
    SWEEP_CONTROLS,
    as_sweep_spec,
    connect_client,
    control_sweep,
    evaluate,
    experiments_request,
    export,
    export_target,
    infer,
    launch_experiments,
    launch_sweep,
    launch_training,
    leaderboard,
    new_run_id,
    query,
    run_status,
    start_training,
)
from orchestration.config_loading import ConfigError, load_config
from orchestration.errors import CliError
from orchestration.ray_submission import RaySubmission
from orchestration.settings import Settings
from orchestration.sweeps.models import BoardPage
from orchestration.types import EvaluationRequest, InferenceRequest, RunStatus
from orchestration.views import (
    TABLE_TOP,
    follow,
    format_report,
    print_leaderboard,
    print_result,
    print_results,
    wait_reporting,
)
from orchestration.workflows.coordinator import CoordinatorWorkflow
from orchestration.workflows.sweep import SweepWorkflow
from ray_jobs.specs import check_id

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


def status_json(status: RunStatus) -> dict:
    return status.model_dump(mode="json")


async def cmd_train(args, settings: Settings) -> int:
    config = load_config(args.config, args.set)
    client = await connect_client(settings)
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
    status, _ = await run_status(await connect_client(settings), args.run_id)
    if args.json:
        print(json.dumps(status_json(status)))
        return 0
    job = f" (Ray job {status.ray_job_status.lower()})" if status.ray_job_status else ""
    print(f"run {status.run_id}: {status.state}{job}, step {status.step}/{status.total_steps or '?'}")
    print(f"  snapshot {status.snapshot_id}  ray job {status.ray_job_id}  resumes {status.resumes}")
    namespace = os.environ.get("TEMPORAL_NAMESPACE", "default")
    print(f"  Temporal UI {settings.temporal_ui_url}/namespaces/{namespace}/workflows/{status.run_id}")
    if status.ray_job_id:
        print(f"  Ray dashboard {settings.ray_dashboard_url}/#/jobs/{status.ray_job_id}")
    if status.waiting:
        print(f"  waiting: {status.waiting}")
    if status.last_failure and status.state != "completed":
        retry = f"; next attempt at {status.retry_at:%H:%M:%S}" if status.retry_at else ""
        print(f"  last failure: {status.last_failure} ({status.failures_without_progress} in a row{retry})")
    if status.earlier_deleted_checkpoints:
        print(f"  {status.earlier_deleted_checkpoints} earlier checkpoints deleted by keep_last")
    metric, top = status.best_metric, status.best_checkpoint
    if top is not None:
        print(f"  best checkpoint: step {top.step} ({metric} {top.metrics[metric]:.4f})")
    for c in status.checkpoints:
        where = "deleted by keep_last" if c.deleted else c.uri
        score = f"  {metric} {c.metrics[metric]:.4f}" if metric in c.metrics else ""
        mark = "  (best)" if top is not None and c.step == top.step else ""
        print(f"  checkpoint step {c.step:>6}  loss {c.metrics.get('loss', float('nan')):.4f}{score}  {where}{mark}")
    return 0


async def cmd_infer(args, settings: Settings) -> int:
    if args.pair and len(args.pair) != len(args.texts):
        raise ConfigError(f"--pair: give one per text ({len(args.texts)} texts, {len(args.pair)} pairs)")
    step, best = args.checkpoint
    req = InferenceRequest(run_id=args.run_id, texts=args.texts, text_pairs=args.pair or None, checkpoint_step=step)
    result = await infer(await connect_client(settings), settings, req, best)
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
        client = await connect_client(settings)
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
            where = "deleted by keep_last" if c.deleted else c.uri
            print(f"  checkpoint step {c.step:>5}  loss {c.metrics.get('loss', float('nan')):.4f}  {where}")
        print(f"predictions (checkpoint step {preds.checkpoint_step}):")
        for p in preds.predictions:
            print(f"  {p.label:>8}  {p.confidence:.3f}  {p.text}")
        print(f"demo finished in {time.monotonic() - t0:.0f}s")
    finally:
        for name in reversed(started):
            await asyncio.to_thread(local_stack.stop, settings, name)
    return 0


async def cmd_eval(args, settings: Settings) -> int:
    step, best = args.checkpoint
    req = EvaluationRequest(run_id=args.run_id, checkpoint_step=step)
    result = await evaluate(await connect_client(settings), settings, req, best)
    if args.json:
        print(result.model_dump_json())
        return 0
    print(format_report(result))
    return 0


async def cmd_export(args, settings: Settings) -> int:
    step, best = args.checkpoint
    target = export_target(args.directory)
    exported = await export(await connect_client(settings), args.run_id, target, step, best)
    if args.json:
        print(exported.model_dump_json())
        return 0
    which = f"the best by {exported.best_metric}" if exported.is_best else "chosen"
    print(f"run {exported.run_id}: checkpoint step {exported.step} ({which}) exported to {exported.directory}")
    print(f"  {len(exported.files)} files: {', '.join(exported.files)}")
    return 0


async def cmd_experiments(args, settings: Settings) -> int:
    req = experiments_request(settings, args.file, args.max_concurrency)
    launched = await launch_experiments(await connect_client(settings), settings, req, args.replace)
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
    table = await query(await connect_client(settings), args.experiment_id, CoordinatorWorkflow.results, "experiments")
    print_results(table, "json" if args.json else "csv" if args.csv else "table")
    return 0


async def cmd_sweep(args, settings: Settings) -> int:
    spec = as_sweep_spec(args.file)
    client = await connect_client(settings)
    launched = await launch_sweep(client, settings, spec, args.replace)
    print(f"{launched.note} ({spec.strategy}, {spec.trials} trials)", file=sys.stderr)
    if args.detach:
        print(spec.id)
        return 0

    async def line() -> str:
        board = await client.get_workflow_handle(spec.id).query(SweepWorkflow.leaderboard, BoardPage(limit=0))
        best = f"{board.best.latest.score:.4f} ({board.best.run_id})" if board.best else "-"
        return f"trials {board.trials_started}/{board.trials_total}  steps {board.steps_used}  best {best}"

    await wait_reporting(launched.handle, line, f"sweep {spec.id}")
    print_leaderboard(await leaderboard(client, spec.id, TABLE_TOP), as_json=False)
    return 0


async def cmd_sweep_ctl(args, settings: Settings) -> int:
    await control_sweep(await connect_client(settings), settings, args.sweep_id, args.action, args.value)
    print(f"sweep {args.sweep_id}: {args.action} sent")
    return 0


async def cmd_leaderboard(args, settings: Settings) -> int:
    if args.top is not None and args.top < 1:
        raise CliError(f"--top must be at least 1 (got {args.top})")
    top = args.top if args.top is not None or args.json else TABLE_TOP
    print_leaderboard(await leaderboard(await connect_client(settings), args.sweep_id, top), as_json=args.json)
    return 0


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


def cmd_metrics(args, settings: Settings) -> int:
    rows = metrics_view.history(settings.storage_uri, args.run_id)
    if args.plot:
        metrics_view.plot(rows, args.run_id, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    print(
        metrics_view.as_json(rows)
        if args.json
        else metrics_view.as_csv(rows)
        if args.csv
        else metrics_view.as_table(rows)
    )
    return 0


async def cmd_ls(args, settings: Settings) -> int:
    listed = await inventory.list_work(await connect_client(settings), args.kind and [args.kind], args.limit)
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
    closed = await inventory.cancel(await connect_client(settings), args.id)
    print(f"{closed.kind} {closed.id}: {closed.status.lower()}")
    return 0


async def cmd_logs(args, settings: Settings) -> int:
    status, _ = await run_status(await connect_client(settings), args.run_id)
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


CHECKPOINT_HELP = "a step, best (by the config's best_metric) or latest (the default)"


def checkpoint_choice(value: str) -> tuple[int | None, bool]:
    """`--checkpoint`: (step, best)."""
    if value in ("best", "latest"):
        return None, value == "best"
    if not value.isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a step, best or latest")
    return int(value), False


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
    i.add_argument("--checkpoint", type=checkpoint_choice, default=(None, False), help=CHECKPOINT_HELP)
    i.add_argument("--pair", action="append", help="the second text of each pair (text-pair tasks), in order")
    i.add_argument("--json", action="store_true")
    ev = sub.add_parser("eval", help="evaluate a run's checkpoint on its snapshot's held-out split")
    ev.add_argument("run_id")
    ev.add_argument(
        "--split", choices=["test", "validation", "heldout"], default="heldout", help="all name the held-out split"
    )
    ev.add_argument("--checkpoint", type=checkpoint_choice, default=(None, False), help=CHECKPOINT_HELP)
    ev.add_argument("--json", action="store_true")
    xp = sub.add_parser("export", help="write a run's best (or chosen) checkpoint to a folder your own code loads")
    xp.add_argument("run_id")
    xp.add_argument("directory", help="a new or empty folder")
    xp.add_argument(
        "--checkpoint", type=checkpoint_choice, default=(None, True), help="a step, best or latest (default: best)"
    )
    xp.add_argument("--json", action="store_true")
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
    sc.add_argument("action", choices=SWEEP_CONTROLS)
    sc.add_argument(
        "value", nargs="?", type=int, default=1, help="trials to add (extend), steps to add (budget), or concurrency"
    )
    lb = sub.add_parser("leaderboard", help="a sweep's trials, best first (live)")
    lb.add_argument("sweep_id")
    lb.add_argument("--top", type=int, metavar="N", help=f"the N best trials (table default {TABLE_TOP}, JSON: all)")
    lb.add_argument("--json", action="store_true", help="the whole leaderboard as JSON (fetched a page at a time)")
    mt = sub.add_parser("metrics", help="a run's metric history: every reported value by step")
    mt.add_argument("run_id")
    fmt = mt.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    mt.add_argument("--plot", metavar="FILE.png", help="also draw each metric's curve into this PNG")
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
    cifar_cli.add_parser(sub)
    su = sub.add_parser("scaleup", help="an image config or a custom loop at several worker counts: throughput")
    su.add_argument("--config", required=True, help="a YAML or JSON config of kind image or custom")
    su.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    cifar_cli.scaleup_flags(su)
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
    "export": cmd_export,
    "experiments": cmd_experiments,
    "results": cmd_results,
    "sweep": cmd_sweep,
    "sweep-ctl": cmd_sweep_ctl,
    "leaderboard": cmd_leaderboard,
    "metrics": cmd_metrics,
    "ls": cmd_ls,
    "cancel": cmd_cancel,
    "logs": cmd_logs,
    "doctor": cmd_doctor,
    "demo": cmd_demo,
    "cifar10": cifar_cli.dispatch,
    "scaleup": cifar_cli.cmd_scaleup,
}


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
    run()
