"""Sweep algorithms with fake results: search-space sampling and ladder (ASHA) promotions."""

from __future__ import annotations

import json
import random

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestration.sweeps.ladder import Ladder
from orchestration.sweeps.models import SweepSpec
from orchestration.sweeps.space import SearchSpace, apply
from ray_jobs.specs import CustomTrainConfig, FineTuneConfig, ImageTrainConfig

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1},
    "batch_size": {"type": "choice", "values": [8, 16, 32]},
    "max_seq_length": {"type": "int", "low": 32, "high": 128},
    "dataset.max_rows": {"type": "int", "low": 100, "high": 200},
}


def test_sampling_is_deterministic_and_in_range():
    space = SearchSpace.model_validate({"params": SPACE})
    a = [space.sample(random.Random(7)) for _ in range(3)]
    b = [space.sample(random.Random(7)) for _ in range(3)]
    assert a == b
    draws = [space.sample(rng) for rng in [random.Random(1)] for _ in range(200)]
    assert all(1e-5 <= d["lr"] <= 1e-3 for d in draws)
    assert all(32 <= d["max_seq_length"] <= 128 and isinstance(d["max_seq_length"], int) for d in draws)
    assert {d["batch_size"] for d in draws} == {8, 16, 32}
    small = sum(d["lr"] < 1e-4 for d in draws)
    assert 70 <= small <= 130  # log-uniform: half the mass below the geometric midpoint


def test_apply_sets_dotted_keys_and_revalidates():
    cfg = apply(FineTuneConfig(), {"lr": 2e-4, "dataset.max_rows": 150})
    assert (cfg.lr, cfg.dataset.max_rows) == (2e-4, 150)
    with pytest.raises(ValidationError):
        apply(FineTuneConfig(scaling={"num_workers": 4}), {"batch_size": 6})


@pytest.mark.parametrize(
    "params",
    [
        {"learning_rate": {"type": "uniform", "low": 0, "high": 1}},
        {"lr": {"type": "loguniform", "low": 0.0, "high": 1}},
        {"lr": {"type": "uniform", "low": 1, "high": 1}},
        {"lr": {"type": "normal", "low": 0, "high": 1}},
        {"seed": {"type": "choice", "values": []}},
    ],
)
def test_bad_spaces_are_refused(params):
    with pytest.raises(ValidationError):
        SweepSpec.model_validate({"id": "s", "space": {"params": params}, "base": {"max_steps": 10}})


CUSTOM = {"kind": "custom", "entrypoint": "ray_jobs.examples.mlp:train_func", "max_steps": 40}


def test_a_space_names_the_keys_of_its_base_configs_kind():
    """A custom loop's own settings live in `train_loop_config`, free-form: any key under it can be swept (and
    goes to the loop); elsewhere only the kind's own keys. An image sweep sweeps image keys."""
    space = {
        "train_loop_config.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
        "seed": {"type": "int", "low": 0, "high": 9},
    }
    spec = SweepSpec.model_validate({"id": "c", "space": {"params": space}, "base": CUSTOM})
    config = apply(spec.base, {"train_loop_config.lr": 0.05, "train_loop_config.model.width": 8, "seed": 3})
    assert type(config) is CustomTrainConfig
    assert (config.train_loop_config, config.seed) == ({"lr": 0.05, "model": {"width": 8}}, 3)
    with pytest.raises(ValueError, match="'opt' of the base config is 'adam', not a section"):
        apply(spec.base.model_copy(update={"train_loop_config": {"opt": "adam"}}), {"train_loop_config.opt.lr": 1})
    with pytest.raises(ValidationError, match="keys of the custom config"):
        SweepSpec.model_validate({"id": "c", "space": {"params": {"lr": space["seed"]}}, "base": CUSTOM})
    image = SweepSpec.model_validate(
        {
            "id": "i",
            "space": {"params": {"width": {"type": "choice", "values": [8, 16]}}},
            "base": {"kind": "image", "max_steps": 9},
        }
    )
    assert type(apply(image.base, {"width": 8})) is ImageTrainConfig
    with pytest.raises(ValidationError, match="keys of the text config"):
        SweepSpec.model_validate({"id": "t", "space": {"params": {"width": space["seed"]}}, "base": {"max_steps": 9}})


def test_ladder_rungs_and_argument_checks():
    assert Ladder(10, 270, eta=3).budgets == [10, 30, 90, 270]
    assert Ladder(10, 100, eta=3).budgets == [10, 30, 90, 100]
    assert Ladder(50, 50).budgets == [50]
    for args in [(0, 10), (10, 5), (10, 100, 1)]:
        with pytest.raises(ValueError):
            Ladder(*args)


def test_ladder_promotes_top_third_without_waiting_for_stragglers():
    ladder = Ladder(10, 90, eta=3, mode="max")
    ladder.record("t0", 0, 0.60)
    ladder.record("t1", 0, 0.70)
    assert ladder.promotion() is None  # 2 results: top 1/3 is nobody yet
    ladder.record("t2", 0, 0.65)
    assert ladder.promotion() == ("t1", 1)  # promoted at once, although other trials are still running
    assert ladder.promotion() is None  # t1 is not promoted twice
    for t, s in [("t3", 0.90), ("t4", 0.10), ("t5", 0.20)]:
        ladder.record(t, 0, s)
    assert ladder.promotion() == ("t3", 1)  # 6 results: top 2 are t3 and t1; t1 already went up
    ladder.record("t1", 1, 0.75)
    ladder.record("t3", 1, 0.80)
    assert ladder.promotion() is None
    assert ladder.best() == ("t3", 1, 0.80)


def test_ladder_min_mode_and_higher_rungs_first():
    ladder = Ladder(1, 9, eta=3, mode="min")
    for i, loss in enumerate([0.9, 0.5, 0.7, 0.4, 0.8, 0.6]):
        ladder.record(f"t{i}", 0, loss)
    assert ladder.promotion() == ("t3", 1)
    assert ladder.promotion() == ("t1", 1)
    for t, loss in [("t3", 0.30), ("t1", 0.35), ("t9", 0.50)]:
        ladder.record(t, 1, loss)
    assert ladder.promotion() == ("t3", 2)  # rung 1's decision comes before rung 0's
    with pytest.raises(ValueError):
        ladder.record("t3", 1, 0.1)


def test_lenient_ladder_decides_on_arrival_as_ray_tunes_asha_does():
    """Ray Tune's ASHAScheduler (`_Bracket.on_result`): a trial goes on unless its score is below the (1 - 1/eta)
    percentile of the results the rung had before it (np.nanpercentile([0.6, 0.5], 66.7) = 0.5667); the first
    result at a rung always goes on; the decision is never revisited."""
    ladder = Ladder(10, 90, eta=3, rule="lenient")
    ladder.record("t0", 0, 0.60)
    assert ladder.promotion() == ("t0", 1)  # the first result climbs at once (strict: only after 3 results)
    ladder.record("t1", 0, 0.50)  # below 0.60: stops here for good
    ladder.record("t2", 0, 0.58)  # cutoff 0.5667 over [0.5, 0.6] (0.5867 counting itself): goes on
    assert ladder.promotion() == ("t2", 1)
    for t, s in [("t3", 0.10), ("t4", 0.20), ("t5", 0.30), ("t6", 0.40)]:
        ladder.record(t, 0, s)
    assert ladder.promotion() is None  # t1 ranks in the top third now, but its decision was made
    ladder.record("t0", 1, 0.8)
    assert ladder.promotion() == ("t0", 2)
    min_mode = Ladder(1, 3, eta=3, mode="min", rule="lenient")
    min_mode.record("a", 0, 0.5)
    min_mode.record("b", 0, 0.9)  # a loss above the cutoff: stops
    assert min_mode.promotion() == ("a", 1) and min_mode.promotion() is None


def _promotion_by_definition(ladder: Ladder, results: list[dict], promoted: list[set], passed: list[set]):
    """The rule as written: rank the rung's results; strict: the top 1/eta, lenient: those that passed on arrival;
    the first of them not promoted yet, highest rung first."""
    for rung in range(ladder.top_rung - 1, -1, -1):
        r = results[rung]
        ranked = sorted(r, key=lambda t: (-r[t] if ladder.mode == "max" else r[t], t))
        eligible = (
            ranked[: len(r) // ladder.eta] if ladder.rule == "strict" else [t for t in ranked if t in passed[rung]]
        )
        for trial in eligible:
            if trial not in promoted[rung]:
                return trial, rung + 1
    return None


@pytest.mark.parametrize("rule", ["strict", "lenient"])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_ladder_decides_as_the_rule_is_written_in_any_order_of_results_and_promotions(rule, mode):
    """The ladder keeps rankings incrementally (a decision must not cost more as a sweep grows): over random sweeps,
    with ties, it promotes exactly whom re-ranking everything each time would."""
    import numpy as np

    rng = random.Random(f"{rule}-{mode}")
    for _ in range(30):
        ladder = Ladder(1, 27, eta=rng.choice([2, 3]), mode=mode, rule=rule)
        results = [{} for _ in ladder.budgets]
        promoted = [set() for _ in ladder.budgets]
        passed = [set() for _ in ladder.budgets]
        at = {}  # trial → rung it trains towards
        expected = None
        log = []  # (trial, rung, score, climbs): what a saved sweep keeps of each result
        for step in range(rng.randint(5, 120)):
            found = ladder.promotion() if rng.random() < 0.4 else None
            if found is not None:
                assert found == expected
                promoted[found[1] - 1].add(found[0])
                at[found[0]] = found[1]
            else:
                trial = f"t{step:03d}" if rng.random() < 0.6 or not at else rng.choice(sorted(at))
                rung = at.setdefault(trial, 0)
                if trial in results[rung]:
                    continue
                score = rng.choice([0.1, 0.2, 0.5]) if rng.random() < 0.3 else rng.random()
                signed = [v if mode == "max" else -v for v in results[rung].values()]
                if not signed or (score if mode == "max" else -score) >= np.percentile(
                    signed, 100 * (1 - 1 / ladder.eta)
                ):
                    passed[rung].add(trial)
                climbs = ladder.record(trial, rung, score)
                assert climbs == (rule == "strict" or trial in passed[rung])
                log.append((trial, rung, score, climbs))
                results[rung][trial] = score
            expected = _promotion_by_definition(ladder, results, promoted, passed)
            assert ladder.peek() == expected
        # a new execution rebuilds the ladder in one go from what the sweep saved: the same decisions follow
        restored = Ladder(1, 27, eta=ladder.eta, mode=mode, rule=rule)
        restored.restore(rng.sample(log, len(log)), [(t, rung) for rung, ts in enumerate(promoted) for t in ts])
        assert [restored.promotion() for _ in range(8)] == [ladder.promotion() for _ in range(8)]


def test_lenient_cutoff_is_numpys_percentile_to_the_last_bit():
    """Replay must decide as the first run did, whatever numpy version a worker has: the cutoff is computed in pure
    Python, and must sit exactly where np.percentile puts it (at the cutoff: goes on; one ulp below: stops)."""
    import math

    import numpy as np

    rng = random.Random(7)
    for _ in range(300):
        eta, mode = rng.choice([2, 3, 4, 5]), rng.choice(["max", "min"])
        ladder = Ladder(1, 9, eta=eta, mode=mode, rule="lenient")
        scores = [rng.choice([0.25, rng.random(), rng.uniform(-1e3, 1e3)]) for _ in range(rng.randint(1, 40))]
        for i, score in enumerate(scores):
            ladder.record(f"t{i}", 0, score)
        sign = 1.0 if mode == "max" else -1.0
        cutoff = float(np.percentile([sign * v for v in scores], 100 * (1 - 1 / eta)))
        assert ladder._clears_cutoff(0, sign * cutoff)
        assert not ladder._clears_cutoff(0, sign * math.nextafter(cutoff, -math.inf))


def test_ladder_ties_go_to_the_lower_trial_id():
    ladder = Ladder(1, 3, eta=3)
    for t in ["b", "a", "c"]:
        ladder.record(t, 0, 0.5)
    assert ladder.promotion() == ("a", 1)


def test_gc_keeps_the_best_and_everything_that_may_still_be_promoted():
    from orchestration.sweeps.trials import RungResult, Trial, TrialTable, gc_candidates

    def trial(i, rung, state, results=1):
        rs = [RungResult(rung=k, steps=10 * 3**k, score=0.5) for k in range(results)]
        return Trial(index=i, run_id=f"t{i}", params={}, rung=rung, state=state, results=rs)

    best = trial(0, 2, "completed", 3)
    trials = [
        best,
        trial(1, 2, "completed", 3),
        trial(2, 0, "waiting"),
        trial(3, 1, "failed", 1),
        trial(4, 1, "waiting", 2),
    ]
    assert gc_candidates(TrialTable.of(trials), top_rung=2, best=best.index) == ["t1", "t3"]


def test_the_leaderboard_plot_draws_a_sweep_with_a_trial_that_failed_before_any_result(tmp_path):
    """matplotlib 3.11 refuses an empty curve: the plot of any sweep with such a trial failed (a warning only)."""
    from orchestration.activities.sweeps import plot
    from orchestration.sweeps.models import PlotRequest, SweepState
    from orchestration.sweeps.trials import RungResult, Trial, TrialTable
    from orchestration.types import RunOptions

    trials = [
        Trial(index=0, run_id="t0", params={}, state="failed", error="loss became NaN at step 6"),
        Trial(index=1, run_id="t1", params={}, state="completed", results=[RungResult(rung=0, steps=20, score=0.5)]),
    ]
    spec = SweepSpec.model_validate({"id": "s", "space": {"params": SPACE}, "trials": 2, "base": {"max_steps": 20}})
    state = SweepState(spec=spec, options=RunOptions(storage_uri=str(tmp_path)), table=TrialTable.of(trials))
    uri = str(tmp_path / "leaderboard.png")
    assert plot(PlotRequest(state=state, uri=uri)) == uri
    assert (tmp_path / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_tpe_proposal_carries_a_bounded_history_with_the_best_and_the_newest(mode, monkeypatch):
    from orchestration.sweeps.trials import TPE_GOOD, RungResult, Trial, TrialTable

    rng = random.Random(0)
    trials = [
        Trial(index=i, run_id=f"t{i}", params={"i": i}, results=[RungResult(rung=0, steps=10, score=rng.random())])
        for i in range(3_000)
    ] + [Trial(index=3_000, run_id="t3000", params={"i": 3_000})]  # no result yet: not history
    table = TrialTable.of(trials)
    assert len(TrialTable.of(trials[:900]).tpe_history(mode, limit=1_000)) == 900  # under the bound: all of it
    kept = table.tpe_history(mode, limit=1_000)
    assert len(kept) == 1_000
    indices = [params["i"] for params, _ in kept]
    assert indices == sorted(indices)  # trial order
    ranked = sorted(trials[:3_000], key=lambda t: t.results[0].score, reverse=mode == "max")
    assert {t.index for t in ranked[:TPE_GOOD]} <= set(indices)  # the good set TPE builds is all there
    assert set(range(2_100, 3_000)) <= set(indices)  # then the newest
    assert len(table.tpe_history(mode, limit=TPE_GOOD)) == TPE_GOOD

    read = []  # a proposal reads the trials it carries, not the whole sweep: its cost stays flat as the sweep grows
    positions = TrialTable.positions
    monkeypatch.setattr(TrialTable, "positions", lambda self, i: read.append(i) or positions(self, i))
    assert len(table.tpe_history(mode, limit=100)) == 100 and len(read) == 100


def scanned_tpe_history(table, mode: str, limit: int) -> list[tuple[dict, float]]:
    """The history as a scan of the whole sweep picks it (what a proposal cost before): the reference."""
    from orchestration.sweeps.trials import TPE_GOOD

    scored = [(table.params[i], table.result_score[p[0]]) for i in range(len(table)) if (p := table.positions(i))]
    if len(scored) <= limit:
        return scored
    sign = -1.0 if mode == "max" else 1.0
    keep = set(sorted(range(len(scored)), key=lambda i: sign * scored[i][1])[:TPE_GOOD])
    newest = (i for i in range(len(scored) - 1, -1, -1) if i not in keep)
    keep.update(next(newest) for _ in range(limit - len(keep)))
    return [scored[i] for i in sorted(keep)]


@pytest.mark.parametrize("seed", range(6))
def test_the_tpe_history_kept_as_results_arrive_is_the_one_a_scan_of_the_sweep_picks(seed):
    """First results arrive out of trial order, later rungs and unscored trials mix in, scores tie (a coarse metric),
    and a reloaded table (a new execution) must pick the same history as the one that recorded them."""
    from orchestration.sweeps.trials import RungResult, TrialTable

    rng = random.Random(seed)
    table = TrialTable()
    for i in range(400):
        table.add(f"t{i:04d}", {"i": i})
    pending = list(range(400))
    rng.shuffle(pending)
    for i in pending[:350]:
        table.record(i, RungResult(rung=0, steps=10, score=rng.randint(0, 20) / 20))
        if rng.random() < 0.3:
            table.record(i, RungResult(rung=1, steps=30, score=rng.random()))
    reloaded = TrialTable.model_validate_json(table.model_dump_json())
    for mode in ("max", "min"):
        for limit in (25, 60, 349, 350, 1_000):
            expected = scanned_tpe_history(table, mode, limit)
            assert table.tpe_history(mode, limit) == expected
            assert reloaded.tpe_history(mode, limit) == expected


@pytest.mark.parametrize("task", ["reviews", "fashion-mnist"])
def test_a_proxy_trial_resumed_from_its_rung_checkpoint_trains_as_an_uninterrupted_one(tmp_path, task):
    from orchestration.sweeps.proxy import train_segment

    params = {"lr": 0.05, "weight_decay": 1e-4, "batch_size": 32}
    train_segment(str(tmp_path / "a.npz"), params, 7, 0, 30, 90, task)
    resumed = train_segment(str(tmp_path / "a.npz"), params, 7, 30, 90, 90, task)
    assert resumed == train_segment(str(tmp_path / "b.npz"), params, 7, 0, 90, 90, task)


@pytest.mark.parametrize("by_index", [True, False], ids=["ladder by index", "by run id (replay)"])
@pytest.mark.parametrize("rule", ["strict", "lenient"])
def test_a_sweep_saved_as_a_trial_table_resumes_as_the_sweep_saved_as_trial_records(rule, by_index, monkeypatch):
    """A new execution loads the trial table (columns) instead of one record per trial, so 100,000 trials load
    within a workflow task. A sweep saved before that (records) and the same sweep saved as a table give the
    same trials, the same ladder and the same leaderboard once loaded; and the table keeps the lenient rule's
    answers, which the records could only re-derive by replaying every result in order. Loaded outside a workflow,
    so the patch that keys the ladder by index is answered here, both ways."""
    from datetime import datetime, timedelta, timezone

    from temporalio import workflow

    from orchestration.sweeps.models import SweepSpec, SweepState
    from orchestration.sweeps.trials import RungResult, Trial
    from orchestration.types import RunOptions
    from orchestration.workflows.sweep import SweepWorkflow

    spec = SweepSpec.model_validate(
        {
            "id": "s",
            "strategy": "ladder",
            "ladder": {"min_steps": 10, "max_steps": 270, "eta": 3, "rule": rule},
            "space": {"params": {"lr": {"type": "uniform", "low": 0.0, "high": 1.0}}},
            "trainer": "simulated",
            "trials": 3_000,
        }
    )
    rng, start, spent, trials = random.Random(rule), datetime(2026, 1, 1, tzinfo=timezone.utc), 0, []
    for i in range(3_000):
        top = 0
        while top < 3 and rng.random() < 0.4:
            top += 1
        results = []
        for rung in range(top + 1):
            spent += 10 * 3**rung
            at = start + timedelta(seconds=spent / 7)
            score = rng.choice([0.25, 0.5]) if rng.random() < 0.2 else rng.random()
            results.append(RungResult(rung=rung, steps=10 * 3**rung, score=score, steps_spent=spent, finished_at=at))
        state = "completed" if top == 3 else rng.choice(["waiting", "failed"])
        trials.append(
            Trial(
                index=i,
                run_id=f"s-t{i:04d}",
                params={"lr": rng.random()},
                rung=top,
                state=state,
                results=results,
                error="boom" if state == "failed" else None,
            )
        )

    monkeypatch.setattr(workflow, "patched", lambda patch_id: by_index)

    def load(state: SweepState) -> SweepWorkflow:
        wf = object.__new__(SweepWorkflow)
        wf.__init__(state)
        return wf

    old = SweepState.model_validate_json(
        SweepState(spec=spec, options=RunOptions(storage_uri="/x"), trials=trials).model_dump_json()
    )
    from_records = load(old)  # the table cannot hold the rule's answers yet: replays every result, in order
    saved = old.model_dump_json()
    assert '"results"' not in saved  # saved again: as the table
    # a worker of the release before the table (a rolling upgrade) must fail on it, not read a sweep of no trials
    with pytest.raises(ValidationError):
        TypeAdapter(list[dict]).validate_python(json.loads(saved)["trials"])
    from_table = load(SweepState.model_validate_json(saved))
    assert from_table.s.trials == trials
    for part in ("_scores", "_ranked", "_waiting", "_promoted"):
        assert getattr(from_table.ladder, part) == getattr(from_records.ladder, part)
    assert from_table.best_key == from_records.best_key
    assert from_table.leaderboard().trials == from_records.leaderboard().trials
    ranked = sorted(trials, key=lambda t: (-t.latest.rung, -t.latest.score, t.index))
    assert from_table.leaderboard().trials == ranked
    assert [from_table.ladder.promotion() for _ in range(20)] == [from_records.ladder.promotion() for _ in range(20)]
