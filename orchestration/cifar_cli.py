"""`ttrain cifar10 train | scaleup | results`: image runs from the command line, on the same machinery as `train`.

A train run is an ordinary CheckpointedTrainingWorkflow with an ImageTrainConfig; a scale-up is a ScaleUpWorkflow.
Flags are shorthands for config keys (`--workers 2` is `--set scaling.num_workers=2`); `--set` reaches every key.
"""

from __future__ import annotations

import argparse
import sys

from orchestration.api import connect_client, launch_scaleup, launch_training, new_run_id, query, scaleup_request
from orchestration.config_loading import ConfigError, load_config
from orchestration.settings import Settings
from orchestration.types import ScaleUpResult
from orchestration.views import follow, print_result, wait_reporting
from orchestration.workflows.scaleup import ScaleUpWorkflow
from ray_jobs.specs import ImageTrainConfig, TrainConfig

FLAG_KEYS = {
    "dataset": "dataset",
    "data": "data_path",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "arch": "arch",
    "width": "width",
}


def add_parser(sub) -> None:
    c = sub.add_parser("cifar10", help="image classification (CIFAR-10, Fashion-MNIST) on Ray Train: train, scale up")
    csub = c.add_subparsers(dest="cifar_command", required=True)
    t = csub.add_parser("train", help="one checkpointed, durable image training run")
    _config_flags(t)
    t.add_argument("--workers", type=int, help="Ray Train workers (data-parallel replicas)")
    t.add_argument("--run-id")
    t.add_argument("--detach", action="store_true", help="print the run id and return")
    t.add_argument("--replace", action="store_true", help="cancel and start over a run already under --run-id")
    s = csub.add_parser("scaleup", help="the same training at several worker counts: images/s and efficiency")
    _config_flags(s)
    scaleup_flags(s)
    r = csub.add_parser("results", help="a scale-up's table (live while it runs)")
    r.add_argument("scaleup_id")
    r.add_argument("--json", action="store_true")


def scaleup_flags(s: argparse.ArgumentParser) -> None:
    """Shared by `ttrain cifar10 scaleup` and `ttrain scaleup CONFIG` (an image config or a custom loop)."""
    s.add_argument("--workers", required=True, help="comma-separated worker counts, e.g. 1,2,4,8")
    s.add_argument(
        "--weak", action="store_true", help="weak scaling: keep the per-worker batch (default: strong, keep the global)"
    )
    s.add_argument("--id", help="scale-up id (default: a new one)")
    s.add_argument("--detach", action="store_true")
    s.add_argument("--replace", action="store_true", help="cancel and start over a scale-up already under --id")
    s.add_argument("--json", action="store_true")


def _config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML or JSON ImageTrainConfig")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--dataset", choices=["cifar10", "fashion-mnist", "synthetic"])
    p.add_argument("--data", help="CIFAR-10 archive/folder/parquet folder, or Fashion-MNIST IDX folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch (scale-up: at one worker)")
    p.add_argument("--arch", choices=["airbench", "resnet18"])
    p.add_argument("--width", type=int)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (bf16 autocast, channels_last)")


def _config(args, **extra: str) -> ImageTrainConfig:
    sets = [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items() if getattr(args, flag, None) is not None]
    sets += ["scaling.use_gpu=true"] if args.gpu else []
    sets += [f"{k}={v}" for k, v in extra.items()]
    cfg = load_config(args.config, [*sets, *args.set], model=ImageTrainConfig)
    if cfg.dataset == "cifar10" and cfg.data_path is None:
        raise ConfigError(
            "CIFAR-10 needs --data: the python archive (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), "
            "its extracted folder, or a folder of HF parquet files; or use --dataset fashion-mnist|synthetic"
        )
    return cfg


async def cmd_train(args, settings: Settings) -> int:
    config = _config(args, **({"scaling.num_workers": str(args.workers)} if args.workers is not None else {}))
    client = await connect_client(settings)
    run_id = args.run_id or new_run_id("img")
    launched = await launch_training(client, settings, run_id, config, args.replace)
    print(f"{launched.note} ({config.dataset}, {config.arch}, {config.scaling.num_workers} workers)", file=sys.stderr)
    if args.detach:
        print(run_id)
        return 0
    result = await follow(client, launched.handle)
    print_result(result)
    m = result.metrics
    print(f"images/s {m.get('images_per_s', 0):.0f} over {m.get('workers', 0):g} workers (training steps only)")
    return 0


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--workers {text!r}: expected comma-separated integers, e.g. 1,2,4") from None
    return counts


def _scaleup_config(args) -> TrainConfig:
    """`ttrain cifar10 scaleup`: an image config built from the flags; `ttrain scaleup`: a config file's own kind."""
    if getattr(args, "cifar_command", None):
        return _config(args)
    return load_config(args.config, args.set)


async def cmd_scaleup(args, settings: Settings) -> int:
    req = scaleup_request(settings, _scaleup_config(args), _worker_counts(args.workers), args.weak, args.id)
    launched = await launch_scaleup(await connect_client(settings), settings, req, args.replace)
    handle, scaleup_id = launched.handle, req.scaleup_id
    print(f"{launched.note}: workers {req.workers}, {req.scaling} scaling", file=sys.stderr)
    if args.detach:
        print(scaleup_id)
        return 0

    async def line() -> str:
        table = await handle.query(ScaleUpWorkflow.table)
        return "  ".join(f"{r.workers}w:{r.state}" for r in table.rows)

    print_scaleup(await wait_reporting(handle, line, f"scale-up {scaleup_id}"), args.json)
    return 0


async def cmd_results(args, settings: Settings) -> int:
    client = await connect_client(settings)
    print_scaleup(await query(client, args.scaleup_id, ScaleUpWorkflow.table, "scale-up"), args.json)
    return 0


def print_scaleup(result: ScaleUpResult, as_json: bool) -> None:
    if as_json:
        print(result.model_dump_json())
        return
    from rich.console import Console
    from rich.table import Table

    def num(v: float | None, fmt: str) -> str:
        return format(v, fmt) if v is not None else ""

    data = f"{result.dataset} (SYNTHETIC: throughput only)" if result.synthetic else result.dataset
    target = f", target accuracy {result.target_accuracy}" if result.target_accuracy else ""
    base = f"vs {result.baseline_workers} worker(s)" if result.baseline_workers else ""
    out = Table(title=f"scale-up {result.scaleup_id}: {result.scaling} scaling, {data}{target}")
    for col in ("workers", "global batch", "state", result.throughput, f"efficiency {base}", "time to target s",
                "final accuracy", "wall s", "note"):  # fmt: skip
        out.add_column(col)
    for r in result.rows:
        out.add_row(
            str(r.workers),
            str(r.global_batch or ""),
            r.state,
            num(r.images_per_s, ".0f"),
            num(r.efficiency, ".2f"),
            num(r.time_to_target_s, ".1f") if result.target_accuracy else "",
            num(r.final_accuracy, ".4f"),
            num(r.wall_time_s, ".0f"),
            r.detail or r.run_id or "",
        )
    Console(width=200).print(out)
    if result.plot_uri:
        print(f"plot: {result.plot_uri}")


COMMANDS = {"train": cmd_train, "scaleup": cmd_scaleup, "results": cmd_results}


async def dispatch(args, settings: Settings) -> int:
    return await COMMANDS[args.cifar_command](args, settings)
