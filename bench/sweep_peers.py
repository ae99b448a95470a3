"""ttrain's sweeps against Ray Tune (ASHAScheduler) and Optuna (TPE + HyperbandPruner) on the same proxy tasks.

ttrain runs its ladder (strict and lenient rules) and TPE, with and without the ladder.

The same task, search space, rungs (90 / 270 / 810 steps, eta 3), concurrency (4) and training-step budget for all,
over several seeds, on both proxy tasks (`orchestration/sweeps/proxy.py`): `reviews` (early rungs carry little
signal) and `fashion-mnist` (they carry a lot). Every method trains with the very same SGD code (`proxy.train_steps`),
so the differences are the search and its orchestration:
- ttrain: a `SweepWorkflow` on a Temporal dev server, trials as `proxy_segment` activities that checkpoint at each
  rung and resume from it on promotion (`_sweeps.sweep_service`, worker in this process);
- Ray Tune: `Tuner` with `ASHAScheduler(time_attr="steps", grace_period=90, max_t=810, reduction_factor=3)`, random
  search (`BasicVariantGenerator(random_state=seed)`), `reuse_actors=True` (Tune's advice for many short trials), a
  `Stopper` that ends the experiment at the step budget; the trainable reports every 30 steps;
- Optuna: `TPESampler(seed=seed)` + `HyperbandPruner(min_resource=90, max_resource=810, reduction_factor=3)` (the
  pairing Optuna's docs recommend), `n_jobs=4`, `trial.report` every 30 steps, `study.stop()` at the budget.
Per run: the best held-out accuracy among trials trained to the full 810 steps, trials started, steps trained, wall
time. Per task: the Spearman rank correlation between scores at 90 and at 810 steps over 40 random configurations.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_peers.py                    # 5 seeds, both tasks
    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep_peers.py --seeds 2 --tasks fashion-mnist
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _sweeps import run_sweep, sweep_service

from orchestration.sweeps import proxy
from orchestration.sweeps.models import SweepSpec
from orchestration.sweeps.space import SearchSpace

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

MIN_STEPS, MAX_STEPS, ETA = 90, 810, 3
REPORT_EVERY = 30  # steps between the peers' intermediate reports
CONCURRENCY = 4
SPACE = {
    "lr": {"type": "loguniform", "low": 1e-4, "high": 1.0},
    "weight_decay": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
    "batch_size": {"type": "choice", "values": [16, 32, 64]},
}
TTRAIN = {  # strategy, ladder rule, whether trials climb a ladder
    "ttrain ladder": ("ladder", "strict", True),
    "ttrain ladder lenient": ("ladder", "lenient", True),
    "ttrain tpe+ladder": ("tpe", "strict", True),
    "ttrain tpe": ("tpe", "strict", False),  # no early stopping: every trial trains the full 810 steps
}
PEERS = ("ray tune asha", "optuna tpe+hyperband")


def ttrain_spec(method: str, task: str, seed: int, budget: int) -> SweepSpec:
    strategy, rule, climbs = TTRAIN[method]
    return SweepSpec.model_validate(
        {
            "id": f"peers-{task}-{method.split()[-1].replace('+', '-')}-{rule}-{seed}",
            "strategy": strategy,
            "ladder": {"min_steps": MIN_STEPS, "max_steps": MAX_STEPS, "eta": ETA, "rule": rule} if climbs else None,
            "tpe_with_ladder": strategy == "tpe" and climbs,
            "space": {"params": SPACE},
            "base": {"max_steps": MAX_STEPS, "seed": seed},
            "trainer": "proxy",
            "proxy_task": task,
            "trials": 100_000,  # the step budget ends the sweep
            "max_total_steps": budget,
            "max_concurrency": CONCURRENCY,
            "seed": seed,
        }
    )


async def run_ttrain(methods: list[str], task: str, seeds: list[int], budget: int) -> list[dict]:
    rows: list[dict] = []
    if not methods:
        return rows
    async with sweep_service(max_concurrent_activities=CONCURRENCY) as client:
        await run_sweep(client, ttrain_spec(methods[0], task, 999, MAX_STEPS))  # warm: the worker, the dataset
        for seed in seeds:
            for method in methods:
                t0 = time.perf_counter()
                state = await run_sweep(client, ttrain_spec(method, task, seed, budget))
                wall = time.perf_counter() - t0
                full = [r.score for t in state.trials for r in t.results if r.steps == MAX_STEPS]
                rows.append(row(method, task, seed, max(full, default=None), len(state.trials), state.steps_done, wall))
    return rows


def row(method: str, task: str, seed: int, best: float | None, trials: int, steps: int, wall: float) -> dict:
    out = {"method": method, "task": task, "seed": seed, "best": best, "trials": trials, "steps": steps, "wall_s": wall}
    print(json.dumps(out), flush=True)
    return out


# ---- Ray Tune -------------------------------------------------------------------------------------------------------


def tune_trainable(config: dict, task: proxy.Task, seed: int) -> None:
    from ray import tune

    w = task.init()
    for start in range(0, MAX_STEPS, REPORT_EVERY):
        w = proxy.train_steps(task, w, config, seed, start, start + REPORT_EVERY, MAX_STEPS)
        tune.report({"accuracy": proxy.score(task, w), "steps": start + REPORT_EVERY})


def run_tune(task_name: str, seeds: list[int], budget: int) -> list[dict]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    class StepBudget(tune.Stopper):
        """Ends the experiment once the trials' steps add up to the budget (Tune has no step budget of its own)."""

        def __init__(self) -> None:
            self.steps: dict[str, int] = {}

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.steps[trial_id] = int(result["steps"])
            return False

        def stop_all(self) -> bool:
            return sum(self.steps.values()) >= budget

    space = {
        "lr": tune.loguniform(1e-4, 1.0),
        "weight_decay": tune.loguniform(1e-6, 1e-2),
        "batch_size": tune.choice([16, 32, 64]),
    }
    ray.init(num_cpus=CONCURRENCY, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    try:
        # warm, as ttrain's worker is: a small experiment starts the worker processes and ships the task
        task = proxy.task(task_name)
        tune.Tuner(
            tune.with_parameters(tune_trainable, task=task, seed=0),
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=CONCURRENCY, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(prefix="ttrain-tune-"), verbose=0),
        ).fit()
        for seed in seeds:
            t0 = time.perf_counter()
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(tune_trainable, task=task, seed=seed), {"cpu": 1}),
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric="accuracy",
                    mode="max",
                    scheduler=ASHAScheduler(
                        time_attr="steps", max_t=MAX_STEPS, grace_period=MIN_STEPS, reduction_factor=ETA
                    ),
                    search_alg=BasicVariantGenerator(random_state=seed),
                    num_samples=100_000,
                    max_concurrent_trials=CONCURRENCY,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    stop=StepBudget(), storage_path=tempfile.mkdtemp(prefix="ttrain-tune-"), verbose=0
                ),
            )
            grid = tuner.fit()
            wall = time.perf_counter() - t0
            last = [r.metrics for r in grid if "steps" in (r.metrics or {})]  # trained (not those still queued)
            full = [m["accuracy"] for m in last if m.get("steps") == MAX_STEPS]
            steps = sum(int(m.get("steps", 0)) for m in last)
            rows.append(row(PEERS[0], task_name, seed, max(full, default=None), len(last), steps, wall))
    finally:
        ray.shutdown()
    return rows


# ---- Optuna ---------------------------------------------------------------------------------------------------------


class StepCounter:
    """Steps trained across the study's threads (`n_jobs`)."""

    def __init__(self) -> None:
        self.steps, self._lock = 0, threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.steps += n


def optuna_objective(task: proxy.Task, seed: int, counter: StepCounter):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        params = {
            "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
        }
        w = task.init()
        for start in range(0, MAX_STEPS, REPORT_EVERY):
            w = proxy.train_steps(task, w, params, seed, start, start + REPORT_EVERY, MAX_STEPS)
            counter.add(REPORT_EVERY)
            accuracy = proxy.score(task, w)
            trial.report(accuracy, start + REPORT_EVERY)
            if trial.should_prune():
                raise optuna.TrialPruned
        return accuracy

    return objective


def run_optuna(task_name: str, seeds: list[int], budget: int) -> list[dict]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = proxy.task(task_name)
    rows = []
    for seed in seeds:
        counter = StepCounter()

        def at_budget(study: optuna.Study, _: optuna.trial.FrozenTrial, counter: StepCounter = counter) -> None:
            if counter.steps >= budget:
                study.stop()

        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=MIN_STEPS, max_resource=MAX_STEPS, reduction_factor=ETA),
        )
        t0 = time.perf_counter()
        study.optimize(
            optuna_objective(task, seed, counter), n_trials=100_000, n_jobs=CONCURRENCY, callbacks=[at_budget]
        )
        wall = time.perf_counter() - t0
        full = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        rows.append(row(PEERS[1], task_name, seed, max(full, default=None), len(study.trials), counter.steps, wall))
    return rows


# ---- the task's early signal, and the table ------------------------------------------------------------------------


def early_signal(task_name: str, configs: int = 40) -> float:
    """Spearman correlation between held-out accuracy at the first rung and at the full budget, random configs."""
    task, space = proxy.task(task_name), SearchSpace.model_validate({"params": SPACE})
    early, final = [], []
    for i in range(configs):
        params = space.sample(random.Random(i))  # as a random sweep draws trial i
        w = proxy.train_steps(task, task.init(), params, i, 0, MIN_STEPS, MAX_STEPS)
        early.append(proxy.score(task, w))
        final.append(proxy.score(task, proxy.train_steps(task, w, params, i, MIN_STEPS, MAX_STEPS, MAX_STEPS)))
    return float(pd.Series(early).rank().corr(pd.Series(final).rank()))  # Spearman: Pearson of the ranks


def summary(rows: list[dict], methods: list[str]) -> list[dict[str, Any]]:
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        best = [r["best"] for r in mine if r["best"] is not None]
        out.append(
            {
                "method": method,
                "runs": len(mine),
                "best_mean": statistics.mean(best) if best else None,
                "best_std": statistics.pstdev(best) if best else None,
                "no_full_budget_result": len(mine) - len(best),
                "trials": statistics.mean(r["trials"] for r in mine),
                "steps": statistics.mean(r["steps"] for r in mine),
                "wall_s": statistics.mean(r["wall_s"] for r in mine),
                "wall_ms_per_trial": 1000 * sum(r["wall_s"] for r in mine) / sum(r["trials"] for r in mine),
            }
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--tasks", default="reviews,fashion-mnist")
    p.add_argument("--budget", type=int, default=24 * MAX_STEPS, help="training steps per run (default 24 full trials)")
    p.add_argument("--methods", default=",".join([*TTRAIN, *PEERS]))
    args = p.parse_args()
    seeds, methods = list(range(args.seeds)), args.methods.split(",")
    report: dict[str, Any] = {"args": vars(args), "cpus": os.cpu_count(), "tasks": {}}
    for task in args.tasks.split(","):
        rows = asyncio.run(run_ttrain([m for m in methods if m in TTRAIN], task, seeds, args.budget))
        if PEERS[0] in methods:
            rows += run_tune(task, seeds, args.budget)
        if PEERS[1] in methods:
            rows += run_optuna(task, seeds, args.budget)
        report["tasks"][task] = {"early_signal": early_signal(task), "rows": rows, "summary": summary(rows, methods)}
    for task, got in report["tasks"].items():
        print(
            f"\n{task}: budget {args.budget} steps, {args.seeds} seeds, rung-0 vs final Spearman {got['early_signal']:.2f}"
        )
        print(
            f"{'method':<22} {'best at 810 steps':>18} {'trials':>7} {'steps':>7} {'wall s':>7} {'wall ms/trial':>14}"
        )
        for s in got["summary"]:
            best = f"{s['best_mean']:.4f} ± {s['best_std']:.4f}" if s["best_mean"] is not None else "-"
            print(
                f"{s['method']:<22} {best:>18} {s['trials']:>7.1f} {s['steps']:>7.0f} {s['wall_s']:>7.1f}"
                f" {s['wall_ms_per_trial']:>14.0f}"
            )
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "sweep_peers.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
