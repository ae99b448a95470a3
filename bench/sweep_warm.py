"""Warm promotions: one real ladder sweep (a tiny MiniLM on movie-reviews), cold and warm, side by side on one stack.

The two sweeps are the same (space, seed, rungs 10/30/90, the lenient rule, so a good early result is promoted at
once); `cold` sets `ladder.promotion_wait_s: 0`, so every promotion submits a new Ray job that resumes from the rung
checkpoint, and `warm` keeps the default (the job waits 20 s at its rung; a promotion meanwhile trains on in it).

Per mode: wall time, promotions and how many of them went on in the waiting job, and the fixed cost per promotion:
from the sweep's decision (the segment's `started_at`) to the promoted segment's first checkpoint, less the time
its steps took to train (timed between that checkpoint and the next, so it includes checkpoint saves).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_warm.py [--trials 6] [--concurrency 2] [--seed 0]

Prints a table; writes bench/out/sweep_warm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time

import _stack  # sets the bench environment (ports, RAY_AUTH_MODE) before anything below imports ray

# isort: split

from temporalio.client import Client

from orchestration.client import connect
from orchestration.settings import Settings
from orchestration.sweeps.models import LadderSpec, SweepSpec, SweepState
from orchestration.types import RunOptions
from orchestration.workflows.sweep import SweepWorkflow
from orchestration.workflows.training import CheckpointedTrainingWorkflow

MODES = {"cold": 0.0, "warm": LadderSpec.model_fields["promotion_wait_s"].default}


async def sweep(client: Client, settings: Settings, mode: str, args: argparse.Namespace) -> dict:
    spec = SweepSpec(
        id=f"bench-warm-{mode}",
        strategy="ladder",
        ladder=LadderSpec(min_steps=10, max_steps=90, eta=3, rule="lenient", promotion_wait_s=MODES[mode]),
        space={"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        base=_stack.bench_config(max_steps=None, checkpoint_every_steps=5),
        trials=args.trials,
        max_concurrency=args.concurrency,
        seed=args.seed,
    )
    options = RunOptions(storage_uri=settings.storage_uri, training_queue=settings.training_queue)
    started = time.monotonic()
    state: SweepState = await client.execute_workflow(
        SweepWorkflow.run,
        SweepState(spec=spec, options=options),
        id=spec.id,
        task_queue=settings.orchestration_queue,
    )
    wall = time.monotonic() - started
    costs, warm = [], 0
    for trial in state.trials:
        for before, result in itertools.pairwise(trial.results):
            handle = client.get_workflow_handle(f"{trial.run_id}-r{result.rung}")
            status = await handle.query(CheckpointedTrainingWorkflow.status)
            warm += status.attempts[0].reattached
            first, second = [c for c in status.checkpoints if c.step > before.steps][:2]
            step_s = (second.created_at - first.created_at).total_seconds() / (second.step - first.step)
            to_first = (first.created_at - result.started_at).total_seconds()
            costs.append(to_first - (first.step - before.steps) * step_s)
    best = max((t.latest.score for t in state.trials if t.latest and t.latest.rung == 2), default=None)
    _stack.log(f"{mode}: {wall:.0f}s, {len(costs)} promotions ({warm} warm)")
    return {
        "mode": mode,
        "wall_s": wall,
        "trials": len(state.trials),
        "promotions": len(costs),
        "warm_promotions": warm,
        "fixed_cost_s": costs,
        "mean_fixed_cost_s": statistics.fmean(costs) if costs else None,
        "best_top_rung_score": best,
    }


async def main(args: argparse.Namespace) -> None:
    with _stack.running_stack(keep_home=args.keep_home) as settings:
        client = await connect(settings)
        rows = [await sweep(client, settings, mode, args) for mode in MODES]
    _stack.print_table(
        f"Promotions cold vs warm: {args.trials} trials, {args.concurrency} at a time, rungs 10/30/90, lenient",
        ["mode", "wall s", "promotions", "warm", "fixed cost / promotion s (mean)", "min", "max", "best score"],
        [
            [
                r["mode"],
                r["wall_s"],
                r["promotions"],
                r["warm_promotions"],
                r["mean_fixed_cost_s"],
                min(r["fixed_cost_s"], default=None),
                max(r["fixed_cost_s"], default=None),
                r["best_top_rung_score"],
            ]
            for r in rows
        ],
    )
    print(_stack.write_results("sweep_warm", {"environment": _stack.environment(args), "rows": rows}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-home", action="store_true")
    asyncio.run(main(parser.parse_args()))
