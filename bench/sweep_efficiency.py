"""Ladder vs random vs TPE at an equal training-step budget, over several seeds, on a real (cheap) task.

The trainer is the proxy (`orchestration/sweeps/proxy.py`): logistic regression on hashed bag-of-words of the
packaged movie reviews, checkpointed per trial, real learning curves with real sensitivity to lr, weight decay and
batch size. It stands in for MiniLM because one MiniLM segment costs ~40 s on this 2-core CPU, and 5 seeds x 3
strategies x dozens of segments would take hours; the sweep machinery (workflow, ladder, TPE, promotions from rung
checkpoints) is exactly the one real trainings use. Per run: the best score at the full budget, and the training
steps the strategy spent before one of its full-budget results matched the random search's final best.
Goal: ladder reaches it with at most a third of the steps.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_efficiency.py             # 5 seeds
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_efficiency.py --seeds 2   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

from _sweeps import run_sweep, sweep_service

from orchestration.sweeps.models import SweepSpec, SweepState

MAX_STEPS = 810
SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1.0},
    "weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
    "batch_size": {"type": "choice", "values": [16, 32, 64]},
}


def sweep_spec(strategy: str, seed: int, budget: int) -> SweepSpec:
    ladder = {"min_steps": 90, "max_steps": MAX_STEPS, "eta": 3}  # rungs 90, 270, 810
    return SweepSpec.model_validate(
        {
            "id": f"eff-{strategy.replace('+', '-')}-{seed}",
            "strategy": "tpe" if strategy.startswith("tpe") else strategy,
            "ladder": ladder if strategy in ("ladder", "tpe+ladder") else None,
            "tpe_with_ladder": strategy == "tpe+ladder",
            "space": {"params": SPACE},
            "base": {"max_steps": MAX_STEPS, "seed": seed},
            "trainer": "proxy",
            "trials": 1000,
            "max_total_steps": budget,
            "max_concurrency": 4,
            "seed": seed,
        }
    )


def full_budget_results(state: SweepState) -> list[tuple[int, float]]:
    """(steps spent by the sweep when it came in, score) for every result at the full budget, in arrival order."""
    rows = [(r.steps_spent, r.score) for t in state.trials for r in t.results if r.steps == MAX_STEPS]
    return sorted(rows)


async def run_all(seeds: list[int], strategies: list[str], budget: int) -> list[dict]:
    out = []
    async with sweep_service() as client:
        for seed in seeds:
            finals = {}
            for strategy in strategies:
                finals[strategy] = await run_sweep(client, sweep_spec(strategy, seed, budget))
            target = max(s for _, s in full_budget_results(finals["random"]))
            for strategy, state in finals.items():
                results = full_budget_results(state)
                reached = next((steps for steps, score in results if score >= target), None)
                row = {
                    "seed": seed,
                    "strategy": strategy,
                    "trials": len(state.trials),
                    "steps": state.steps_done,
                    "best": max((s for _, s in results), default=float("nan")),
                    "steps_to_random_best": reached,
                    "fraction_of_random_steps": reached / finals["random"].steps_done if reached else None,
                }
                out.append(row)
                print(json.dumps(row), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=int, default=8 * MAX_STEPS, help="training steps per sweep (default 8 full trials)")
    args = p.parse_args()
    strategies = ["random", "ladder", "tpe", "tpe+ladder"]
    rows = asyncio.run(run_all(list(range(args.seeds)), strategies, args.budget))
    print(
        f"\nproxy task, budget {args.budget} steps per sweep, {args.seeds} seeds (mean ± std; steps fraction: median)"
    )
    print(f"{'strategy':<11} {'trials':>7} {'best score':>16} {'reached random best':>19} {'steps fraction':>15}")
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        best = [r["best"] for r in mine]
        fractions = [r["fraction_of_random_steps"] for r in mine if r["fraction_of_random_steps"] is not None]
        print(
            f"{strategy:<11} {statistics.mean(r['trials'] for r in mine):>7.1f}"
            f" {statistics.mean(best):>8.4f} ± {statistics.pstdev(best):.4f}"
            f" {len(fractions):>12}/{len(mine)} runs"
            f" {statistics.median(fractions) if fractions else float('nan'):>15.2f}"
        )
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "sweep_efficiency.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
