"""Sweep orchestration cost per trial: simulated ladder sweeps of 1,000 / 10,000 (up to `MAX_TRIALS`) trials.

The trainer is `simulate_segment` (a synthetic learning curve, returned at once), so everything measured is
orchestration: the workflow's decisions, the activities' round trips, continue-as-new. The worker runs in this
process, so `time.process_time()` is the worker's (and workflow's) CPU; the Temporal dev server's CPU is read
from its process with psutil. Also: the sweep's state size at the end, the largest event the server kept for it (the
state travels as a claim check past 256 KB: `orchestration.payloads`), and the process's peak RSS.
Goal (issue 12): <= 5 ms per trial, growing linearly.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_scale.py                 # 1,000 and 10,000 trials
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_scale.py --trials 20000   # the most one sweep may run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

import psutil
from _sweeps import run_sweep, sweep_service

from orchestration.sweeps.models import SweepSpec


def sweep_spec(trials: int) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "id": f"scale-{trials}",
            "strategy": "ladder",
            "ladder": {"min_steps": 10, "max_steps": 810, "eta": 3},
            "space": {"params": {"lr": {"type": "loguniform", "low": 1e-6, "high": 1e-2}}},
            "trainer": "simulated",
            "trials": trials,
            "max_concurrency": 100,
            "seed": 0,
        }
    )


async def measure(sizes: list[int]) -> list[dict]:
    rows = []
    async with sweep_service(max_concurrent_activities=200) as client:
        server = next(p for p in psutil.Process().children(recursive=True) if "temporal" in p.name())
        for n in sizes:
            cpu0, srv0, t0 = time.process_time(), server.cpu_times(), time.perf_counter()
            final = await run_sweep(client, sweep_spec(n))
            wall, cpu, srv1 = time.perf_counter() - t0, time.process_time() - cpu0, server.cpu_times()
            segments = sum(len(t.results) for t in final.trials)
            largest = 0  # the largest event the server keeps for the sweep: what its payload limits apply to
            async for wf in client.list_workflows(f"WorkflowId = '{final.spec.id}'"):
                history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
                largest = max([largest, *(e.ByteSize() for e in history.events)])
            rows.append(
                {
                    "trials": n,
                    "segments": segments,
                    "generations": final.generation + 1,
                    "state_kb": len(final.model_dump_json()) / 1024,
                    "largest_event_kb": largest / 1024,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "wall_s": wall,
                    "wall_ms_per_trial": 1000 * wall / n,
                    "worker_cpu_ms_per_trial": 1000 * cpu / n,
                    "server_cpu_ms_per_trial": 1000 * (srv1.user + srv1.system - srv0.user - srv0.system) / n,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", default="1000,10000", help="comma-separated sweep sizes")
    args = p.parse_args()
    rows = asyncio.run(measure([int(x) for x in args.trials.split(",")]))
    print(
        f"\n{'trials':>7} {'segments':>9} {'runs':>5} {'wall s':>8} {'wall ms/trial':>14} {'worker CPU ms/trial':>20}"
        f" {'server CPU ms/trial':>20} {'state KB':>9} {'largest event KB':>17} {'peak RSS MB':>12}"
    )
    for r in rows:
        print(
            f"{r['trials']:>7} {r['segments']:>9} {r['generations']:>5} {r['wall_s']:>8.1f} {r['wall_ms_per_trial']:>14.2f}"
            f" {r['worker_cpu_ms_per_trial']:>20.2f} {r['server_cpu_ms_per_trial']:>20.2f} {r['state_kb']:>9.0f}"
            f" {r['largest_event_kb']:>17.1f} {r['peak_rss_mb']:>12.0f}"
        )
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "sweep_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
