"""What the CLI prints: progress while a run, experiment set or sweep goes on, and their results as tables.

Presentation only: every value comes from `orchestration.api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from orchestration.api import result_of, run_status
from orchestration.errors import CliError
from orchestration.sweeps.models import SweepLeaderboard
from orchestration.types import CoordinatorResult, EvaluationResult, TrainingResult

TABLE_TOP = 20  # rows of the leaderboard table unless --top says otherwise


PROGRESS_PATIENCE_S = 2.0  # a progress poll that meets a busy server skips a beat; it never delays the result


async def wait_reporting(handle: WorkflowHandle, line, what: str, every_s: float = 5.0):
    """The workflow's result; meanwhile `line()` (a live query) goes to stderr every few seconds."""
    result_task = asyncio.ensure_future(result_of(handle, what))
    while not result_task.done():
        await asyncio.wait([result_task], timeout=every_s)
        if not result_task.done():
            with contextlib.suppress(RPCError):
                print(await line(), file=sys.stderr)
    return result_task.result()


async def follow(client: Client, handle: WorkflowHandle, quiet: bool = False) -> TrainingResult:
    """Poll the run's status into a progress bar until the workflow closes."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    result_task = asyncio.ensure_future(result_of(handle, f"run {handle.id}"))
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
                status, live = await run_status(client, handle.id, patience_s=PROGRESS_PATIENCE_S)
                ckpt = status.latest_checkpoint.step if status.latest_checkpoint else "-"
                loss = f"{live.loss:.4f}" if live and live.loss is not None else "-"
                info = f"{status.state}  loss {loss}  ckpt {ckpt}  resumes {status.resumes}"
                if status.waiting or status.state == "retrying":
                    info += f"  ({status.waiting or status.last_failure})"
                bar.update(task, completed=status.step, total=status.total_steps, info=info)
            except (CliError, RPCError):
                pass  # the orchestration worker may be restarting: keep waiting for the result
            await asyncio.wait([result_task], timeout=1.0)
        result = result_task.result()
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


def format_report(result: EvaluationResult) -> str:
    r = result.report
    if "source" in r:  # a custom or image run: the metrics its own loop reported with that checkpoint
        head = f"run {result.run_id}, checkpoint step {result.checkpoint_step}: metrics {r['source']}"
        return "\n".join([head, *(f"  {k} {v:.6g}" for k, v in sorted(r.items()) if k != "source")])
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
