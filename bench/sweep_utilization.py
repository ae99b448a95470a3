"""Slot utilization of a ladder sweep that continues as new several times while its trials take real time.

The trainer is `simulate_segment` with `simulated_step_ms`: a segment of S steps takes S x that many ms, so rung-0
segments last a fraction of a second and top-rung ones seconds, like (much) shortened real trials. The history
limit is set low enough that the sweep continues as new at least 5 times. Utilization = busy slot-seconds /
(max_concurrency x wall), wall from the sweep's start to its last segment's start (the tail, where fewer trials are
left than slots, is no orchestration's fault); busy time is measured from the start and finish times the workflow
recorded for every result. A sweep that drains before continuing as new idles most slots while its longest segment
finishes; one that hands its running segments over does not.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_utilization.py                # 200 trials, 20 ms a step
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_utilization.py --trials 100 --step-ms 10

Prints a table; writes bench/out/sweep_utilization.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from _sweeps import run_sweep, sweep_service

from orchestration.sweeps.models import SweepSpec
from orchestration.sweeps.usage import slot_usage


async def measure(trials: int, step_ms: float, concurrency: int, history_limit: int) -> dict:
    spec = SweepSpec.model_validate(
        {
            "id": f"util-{trials}",
            "strategy": "ladder",
            "ladder": {"min_steps": 10, "max_steps": 270, "eta": 3},
            "space": {"params": {"lr": {"type": "loguniform", "low": 1e-6, "high": 1e-2}}},
            "trainer": "simulated",
            "simulated_step_ms": step_ms,
            "trials": trials,
            "max_concurrency": concurrency,
            "history_limit": history_limit,
        }
    )
    async with sweep_service(max_concurrent_activities=concurrency * 2) as client:
        t0 = time.perf_counter()
        final = await run_sweep(client, spec)
        wall = time.perf_counter() - t0
    usage = slot_usage(final)
    return {
        "trials": trials,
        "segments": sum(len(t.results) for t in final.trials),
        "step_ms": step_ms,
        "max_concurrency": concurrency,
        "continued_as_new": final.generation,
        "wall_s": wall,
        "utilization": usage.utilization,
        "longest_idle_slot_s": usage.longest_idle_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--step-ms", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--history-limit", type=int, default=300)
    p.add_argument("--label", default="", help="a name for this code version in the output (e.g. before, after)")
    args = p.parse_args()
    row = {"label": args.label, **asyncio.run(measure(args.trials, args.step_ms, args.concurrency, args.history_limit))}
    print(
        f"\n{'label':>8} {'trials':>6} {'segments':>8} {'CAN':>4} {'wall s':>7} {'utilization':>11} {'longest idle s':>14}"
    )
    print(
        f"{row['label']:>8} {row['trials']:>6} {row['segments']:>8} {row['continued_as_new']:>4} {row['wall_s']:>7.1f}"
        f" {row['utilization']:>11.3f} {row['longest_idle_slot_s']:>14.2f}"
    )
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"sweep_utilization{'-' + args.label if args.label else ''}.json").write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
