"""Sweeps at scale with the simulated trainer (an activity that returns a synthetic learning curve at once), on a
real Temporal dev server: bounded history through continue-as-new, ASHA invariants, determinism, TPE proposals."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from orchestration.activities.sweeps import SWEEP_ACTIVITIES, propose
from orchestration.client import patient_query
from orchestration.sweeps.ladder import Ladder
from orchestration.sweeps.models import (
    BEST_SCORE,
    MAX_TRIALS,
    SEARCH_ATTRIBUTES,
    BoardPage,
    SweepSpec,
    SweepState,
    TpeRequest,
)
from orchestration.sweeps.space import SearchSpace
from orchestration.sweeps.usage import slot_usage
from orchestration.types import RunOptions
from orchestration.workflows.sweep import SweepWorkflow
from tests.helpers import run

SPACE = {
    "lr": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
    "weight_decay": {"type": "uniform", "low": 0, "high": 0.1},
}


def spec(**kw) -> SweepSpec:
    base = {
        "id": f"sim-{uuid.uuid4().hex[:6]}",
        "strategy": "ladder",
        "ladder": {"min_steps": 10, "max_steps": 270, "eta": 3},
        "space": {"params": SPACE},
        "trainer": "simulated",
        "trials": 30,
        "max_concurrency": 8,
        "seed": 3,
    }
    return SweepSpec.model_validate({**base, **kw})


async def run_sweeps(
    specs: list[SweepSpec | SweepState], storage: Path, converter: DataConverter = pydantic_data_converter
) -> list[tuple[SweepState, list]]:
    """Run sweeps (from their start, or from a given state) on a fresh dev server; returns each final state and the
    histories of all its runs (as the server keeps them: payloads encoded)."""
    temporal = str(Path(sys.executable).parent / "temporal")
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal, data_converter=converter, search_attributes=SEARCH_ATTRIBUTES
    ) as env:
        queue = f"sweep-{uuid.uuid4().hex[:6]}"
        async with Worker(
            env.client,
            task_queue=queue,
            workflows=[SweepWorkflow],
            activities=SWEEP_ACTIVITIES,
            max_concurrent_activities=64,
        ):
            out = []
            for given in specs:
                options = RunOptions(storage_uri=str(storage))
                state = given if isinstance(given, SweepState) else SweepState(spec=given, options=options)
                s = state.spec
                handle = await env.client.start_workflow(SweepWorkflow.run, state, id=s.id, task_queue=queue)
                final = await handle.result()
                attrs = (await handle.describe()).typed_search_attributes
                trials = final.trials  # built from the table at each read
                top = max(len(t.results) for t in trials)
                best = max(t.results[-1].score for t in trials if t.results and len(t.results) == top)
                assert attrs.get(BEST_SCORE) == best  # the UI can list sweeps by their best score
                histories = []
                async for wf in env.client.list_workflows(f"WorkflowId = '{s.id}'"):
                    histories.append(await env.client.get_workflow_handle(s.id, run_id=wf.run_id).fetch_history())
                out.append((final, histories))
            return out


def test_thousand_trial_ladder_sweep_keeps_history_bounded_and_promotes_correctly(tmp_path):
    s = spec(trials=1000, max_concurrency=50, history_limit=1500)  # forces several continue-as-new generations
    started = time.monotonic()
    ((state, histories),) = run(run_sweeps([s], tmp_path))
    elapsed = time.monotonic() - started
    assert len(state.trials) == 1000
    assert sorted(t.index for t in state.trials) == list(range(1000))  # every trial exactly once
    assert all(t.results and t.results[0].rung == 0 for t in state.trials)
    assert state.generation >= 2 and len(histories) == state.generation + 1
    assert max(len(h.events) for h in histories) < 1500 + 400  # bounded: drain + continue-as-new
    budgets = [10, 30, 90, 270]
    at = [sum(1 for t in state.trials if any(r.rung == k for r in t.results)) for k in range(4)]
    for k in range(3):
        # ASHA promotes the top 1/eta of the results seen so far, so a trial promoted early can later drop out of
        # the top third: the count may exceed n/eta a little, never by much (the exact rule is unit-tested)
        assert at[k] // 3 * 0.9 <= at[k + 1] <= at[k] // 3 * 1.2 + 2, at
    for t in state.trials:  # a trial's rungs are consecutive, each at its rung's budget
        assert [r.rung for r in t.results] == list(range(len(t.results)))
        assert [r.steps for r in t.results] == budgets[: len(t.results)]
    assert state.steps_used == sum(budgets[len(t.results) - 1] for t in state.trials)
    best = max((t for t in state.trials if len(t.results) == 4), key=lambda t: t.results[-1].score)
    assert 3e-5 < best.params["lr"] < 3e-4  # the synthetic optimum is lr = 1e-4
    assert (tmp_path / "sweeps" / s.id / "leaderboard.png").stat().st_size > 1000
    print(f"\n1000-trial ladder sweep: {elapsed:.1f}s, {1000 * elapsed / 1000:.1f} ms per trial end to end")


def test_a_sweep_state_past_the_payload_limit_travels_as_a_claim_check(tmp_path):
    """Temporal refuses payloads over 2 MB: a sweep's state (every trial) would stop a sweep at ~7,000 trials. The
    mechanism, tested with a 4 KB limit: a state many times that size continues as new, completes and is queried,
    while no event the server keeps carries more than the limit."""
    from orchestration.payloads import ENCODING, data_converter

    s = spec(trials=300, max_concurrency=20, history_limit=400)
    ((state, histories),) = run(run_sweeps([s], tmp_path, data_converter(str(tmp_path), inline_max=4 * 1024)))
    assert len(state.trials) == 300 and sorted(t.index for t in state.trials) == list(range(300))
    assert state.generation >= 2 and len(state.model_dump_json()) > 8 * 4 * 1024
    events = [e for h in histories for e in h.events]
    assert max(e.ByteSize() for e in events) < 8 * 1024
    assert sum(ENCODING in e.SerializeToString() for e in events) >= state.generation  # each continue-as-new's state
    assert len(list((tmp_path / "payloads").iterdir())) >= state.generation


def test_equal_scores_go_to_the_lower_trial_index_past_t9999(tmp_path):
    """Run ids sort as strings ("t10000" before "t9999"): the ladder must rank trials by index. A sweep of 10,001
    trials at rung 0, two of them tied at the top, and a budget left for one promotion: the lower index climbs."""
    from orchestration.payloads import data_converter
    from orchestration.sweeps.trials import RungResult, TrialTable

    n, tied = 10_001, (9_999, 10_000)
    s = spec(trials=n, max_concurrency=1, ladder={"min_steps": 10, "max_steps": 30, "eta": 3})
    s.max_total_steps = n * 10 + 20  # what is spent, and one promotion from 10 to 30 steps
    table = TrialTable()
    for i in range(n):
        table.add(f"{s.id}-t{i:04d}", {"lr": 1e-4, "weight_decay": 0.0})
        table.record(i, RungResult(rung=0, steps=10, score=0.9 if i in tied else 0.1, steps_spent=(i + 1) * 10))
        table.state[i] = "waiting"
    options = RunOptions(storage_uri=str(tmp_path))
    state = SweepState(spec=s, options=options, table=table, steps_used=n * 10, steps_done=n * 10)
    ((final, _),) = run(run_sweeps([state], tmp_path, data_converter(str(tmp_path))))
    assert [t.index for t in final.trials if len(t.results) == 2] == [tied[0]]


def test_same_seed_same_decisions_and_replay(tmp_path):
    # one at a time, results arrive in the same order: the same seed must then give the same sweep
    s1, s2 = spec(id="det-a", max_concurrency=1), spec(id="det-b", max_concurrency=1)
    (a, hist_a), (b, _) = run(run_sweeps([s1, s2], tmp_path))

    def decisions(state):
        return [(t.index, t.params, [(r.rung, r.steps) for r in t.results]) for t in state.trials]

    assert decisions(a) == decisions(b)

    async def replay():
        replayer = Replayer(workflows=[SweepWorkflow], data_converter=pydantic_data_converter)
        for h in hist_a:
            await replayer.replay_workflow(h)

    run(replay())
    (c, hist_c), *_ = run(run_sweeps([spec(id="det-c", max_concurrency=8)], tmp_path))

    async def replay_concurrent():  # with concurrent trials the order varies, but replay re-derives every decision
        replayer = Replayer(workflows=[SweepWorkflow], data_converter=pydantic_data_converter)
        for h in hist_c:
            await replayer.replay_workflow(h)

    run(replay_concurrent())
    assert len(c.trials) == 30


def test_a_lenient_ladder_decides_the_same_across_continue_as_new(tmp_path):
    """The lenient rule depends on the order results arrived in: a new execution must rebuild it in that order."""
    ladder = {"min_steps": 10, "max_steps": 270, "eta": 3, "rule": "lenient"}
    once, many = (spec(ladder=ladder, max_concurrency=1, trials=50, history_limit=h) for h in (4000, 200))
    (a, _), (b, hist_b) = run(run_sweeps([once, many], tmp_path))
    assert b.generation >= 2 and len(hist_b) == b.generation + 1

    def decisions(state):
        return [(t.index, [(r.rung, r.steps) for r in t.results]) for t in state.trials]

    assert decisions(a) == decisions(b)
    top = [t for t in a.trials if len(t.results) == 4]
    assert top and min(t.index for t in top) < 3  # lenient: an early trial climbs before three results are in


def test_random_and_tpe_sweeps_complete(tmp_path):
    rnd = spec(id="rnd", strategy="random", ladder=None, base={"max_steps": 90}, trials=12)
    tpe = spec(id="tpe", strategy="tpe", ladder=None, base={"max_steps": 90}, trials=12)
    (r, _), (t, _) = run(run_sweeps([rnd, tpe], tmp_path))
    for state in (r, t):
        assert len(state.trials) == 12
        assert all(len(tr.results) == 1 and tr.results[0].steps == 90 for tr in state.trials)
        assert state.steps_used == 12 * 90


def test_tpe_proposals_are_seeded_and_learn_from_history():
    space = SearchSpace.model_validate({"params": SPACE})
    history = [({"lr": lr, "weight_decay": 0.05}, -abs(lr - 1e-4)) for lr in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 2e-4)]
    req = TpeRequest(space=space, history=history, seed=1, index=6, mode="max")
    assert propose(req) == propose(req)
    assert propose(req) != propose(req.model_copy(update={"index": 7}))
    draws = [propose(req.model_copy(update={"index": i}))["lr"] for i in range(20)]
    assert sum(1e-5 < lr < 1e-3 for lr in draws) >= 12  # TPE concentrates near the good region


def test_live_control_and_extending_a_finished_sweep(tmp_path):
    temporal = str(Path(sys.executable).parent / "temporal")

    async def go():
        async with (
            await WorkflowEnvironment.start_local(
                dev_server_existing_path=temporal,
                data_converter=pydantic_data_converter,
                search_attributes=SEARCH_ATTRIBUTES,
            ) as env,
            Worker(
                env.client,
                task_queue="ctl",
                workflows=[SweepWorkflow],
                activities=SWEEP_ACTIVITIES,
            ),
        ):
            s = spec(id="ctl", trials=9)
            state = SweepState(spec=s, options=RunOptions(storage_uri=str(tmp_path)), paused=True)
            handle = await env.client.start_workflow(SweepWorkflow.run, state, id=s.id, task_queue="ctl")
            board = await patient_query(handle, SweepWorkflow.leaderboard)
            assert board.paused and board.trials_started == 0  # paused: nothing starts
            assert await handle.execute_update(SweepWorkflow.add_trials, 3) == 12
            with pytest.raises(WorkflowUpdateFailedError):  # past what a continue-as-new can carry: refused
                await handle.execute_update(SweepWorkflow.add_trials, MAX_TRIALS)
            with pytest.raises(WorkflowUpdateFailedError):
                await handle.execute_update(SweepWorkflow.set_max_concurrency, 0)  # refused by the validator
            assert await handle.execute_update(SweepWorkflow.set_max_concurrency, 2) == 2
            assert await handle.execute_update(SweepWorkflow.raise_budget, 100_000) == 100_000
            await handle.signal(SweepWorkflow.resume)
            first = await handle.result()
            assert len(first.trials) == 12

            # extend the finished sweep: a new run of the same id from its whole state, as `sweep-ctl extend` does
            first.spec.trials += 6
            handle = await env.client.start_workflow(SweepWorkflow.run, first, id=s.id, task_queue="ctl")
            extended = await handle.result()
            assert len(extended.trials) == 18
            assert [t.results[0] for t in extended.trials[:12]] == [t.results[0] for t in first.trials]
            whole = await patient_query(handle, SweepWorkflow.leaderboard)
            page = await patient_query(handle, SweepWorkflow.leaderboard, BoardPage(offset=5, limit=4))
            assert len(whole.trials) == 18 and page.trials == whole.trials[5:9] and page.offset == 5
            assert (await patient_query(handle, SweepWorkflow.leaderboard, BoardPage(limit=0))).best == whole.best

            stopped = SweepState(spec=spec(id="ctl-stop", trials=50), options=state.options, paused=True)
            handle = await env.client.start_workflow(SweepWorkflow.run, stopped, id="ctl-stop", task_queue="ctl")
            await handle.signal(SweepWorkflow.stop)
            await handle.signal(SweepWorkflow.resume)
            assert (await handle.result()).trials == []  # stop: start nothing new, finish

    run(go())


@pytest.mark.parametrize(
    "bad",
    [
        {"strategy": "ladder", "ladder": None},
        {"strategy": "random", "ladder": None},  # no base.max_steps
        {"space": {"params": {"lrr": {"type": "uniform", "low": 0, "high": 1}}}},
        {"ladder": {"min_steps": 100, "max_steps": 10}},
    ],
)
def test_bad_sweep_specs_are_refused(bad):
    with pytest.raises(ValueError):
        spec(**bad)


@pytest.mark.parametrize("task", ["reviews", "fashion-mnist"])
def test_proxy_trainer_ladder_sweep_learns_and_resumes_from_rung_checkpoints(tmp_path, task):
    space = {"params": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1.0}}}
    ladder = {"min_steps": 30, "max_steps": 270, "eta": 3}
    # One segment at a time, so each result frees the one slot. Which trials climb depends on the order results
    # arrive in (ASHA promotes by the results seen so far: 9 arriving worst first take up to 7 trials to rung 1), so
    # the test replays the arrivals, in the order the table recorded them, through the rule.
    s = spec(
        id=f"proxy-{task}", trainer="proxy", proxy_task=task, trials=9, space=space, ladder=ladder, max_concurrency=1
    )
    ((state, _),) = run(run_sweeps([s], tmp_path))
    assert len(state.trials) == 9
    rule, expected, table = Ladder(30, 270, eta=3), set(), state.table
    for index, rung, score in zip(table.result_trial, table.result_rung, table.result_score, strict=True):
        rule.record(index, rung, score)
        if (promoted := rule.promotion()) is not None:  # a promotion takes the freed slot if the rule allows one
            expected.add(promoted)
    assert {(t.index, r.rung) for t in state.trials for r in t.results if r.rung > 0} == expected
    at = [sum(len(t.results) > k for t in state.trials) for k in range(3)]
    assert 9 == at[0] > at[1] > at[2] >= 1, at
    top = max((t for t in state.trials if len(t.results) == 3), key=lambda t: t.results[-1].score)
    assert [r.steps for r in top.results] == [30, 90, 270]
    assert 0.6 < top.results[-1].score <= 1.0  # real learning on real data (chance: 0.5 and 0.1)
    assert state.steps_done == sum(t.results[-1].steps for t in state.trials)
    assert [r.steps_spent for t in state.trials for r in t.results] != []


def test_continue_as_new_keeps_trials_running_and_every_slot_busy(tmp_path):
    # segments of 0.3 s (rung 0) to 1.8 s (top rung), history short enough to continue as new several times
    s = spec(
        trials=80,
        max_concurrency=4,
        ladder={"min_steps": 10, "max_steps": 90, "eta": 3},
        simulated_step_ms=30,
        history_limit=200,
    )
    ((state, histories),) = run(run_sweeps([s], tmp_path))
    assert len(histories) >= 3, "the sweep never continued as new"
    handed_over = [h for h in histories[1:] if _started_with(h).live]
    assert handed_over, "no execution adopted running segments"
    assert sorted(t.index for t in state.trials) == list(range(80))  # every trial once
    for t in state.trials:  # every result once, at consecutive rungs
        assert [r.rung for r in t.results] == list(range(len(t.results)))
    assert state.steps_done == sum(t.results[-1].steps for t in state.trials)  # no segment counted twice
    assert state.live == [], "the final state lists segments that reported long ago: extending it would hang"
    signalled = [
        e for h in histories for e in h.events if e.workflow_execution_signaled_event_attributes.signal_name
    ]  # a segment reports by signal only when the execution that started it has closed: one workflow task less
    assert 0 < len(signalled) <= sum(len(_started_with(h).live) for h in histories)
    usage = slot_usage(state)
    assert usage.longest_idle_s <= 1.0, f"a slot idled {usage.longest_idle_s:.2f}s (a drain?)"
    assert usage.utilization >= 0.85, usage


def test_results_that_come_with_a_signal_as_the_sweep_continues_as_new_are_taken_not_handed_over(tmp_path):
    """The SDK applies an activation's signals and checks wait conditions before it applies the activity results that
    came with them. Here the sweep's workflow worker is down while segments complete their activities and a signal
    arrives, and those events take the history past its limit: the next execution must start with those results in
    its table, not with their segments as running (which would idle their slots until re-issued, 5 minutes later)."""
    import asyncio
    import math

    from temporalio.api.enums.v1 import EventType

    from orchestration.activities.sweeps import handover_point
    from orchestration.sweeps.trials import RungResult

    s = spec(trials=500, max_concurrency=100, history_limit=200, simulated_step_ms=60_000)  # segments never end
    temporal = str(Path(sys.executable).parent / "temporal")

    async def scheduled(handle) -> list[tuple[str, str]]:
        events = (await handle.fetch_history()).events
        return [
            (a.activity_id, json.loads(a.input.payloads[0].data)["segment_id"])
            for e in events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and (a := e.activity_task_scheduled_event_attributes).activity_type.name == "simulate_segment"
        ]

    async def go() -> tuple[SweepState, list[str]]:
        async with await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal,
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTES,
        ) as env:
            client, queue = env.client, f"settle-{uuid.uuid4().hex[:6]}"
            # the sweep's own worker, with its local activity only: the other worker runs the segments
            workflows = {
                "task_queue": queue,
                "workflows": [SweepWorkflow],
                "activities": [handover_point],
                "no_remote_activities": True,
            }
            state = SweepState(spec=s, options=RunOptions(storage_uri=str(tmp_path)))
            async with Worker(client, task_queue=queue, activities=SWEEP_ACTIVITIES, max_concurrent_activities=200):
                async with Worker(client, **workflows):
                    handle = await client.start_workflow(SweepWorkflow.run, state, id=s.id, task_queue=queue)
                    while len(await scheduled(handle)) < s.max_concurrency:
                        await asyncio.sleep(0.2)
                length = len((await handle.fetch_history()).events)  # the workflow worker is down from here
                assert length < s.history_limit
                done = (await scheduled(handle))[: math.ceil((s.history_limit - length) / 2) + 5]
                for activity_id, _ in done:  # each adds its started and completed events
                    activity = client.get_async_activity_handle(workflow_id=s.id, run_id=None, activity_id=activity_id)
                    await activity.complete(RungResult(rung=0, steps=10, score=0.5))
                await handle.signal(SweepWorkflow.resume)
                async with Worker(client, **workflows):
                    while len([wf async for wf in client.list_workflows(f"WorkflowId = '{s.id}'")]) < 2:
                        await asyncio.sleep(0.2)
                    nxt = _started_with(await client.get_workflow_handle(s.id).fetch_history())
                    await handle.terminate()
            return nxt, [segment for _, segment in done]

    nxt, done = run(go())
    assert nxt.generation == 1
    assert not {seg.segment_id for seg in nxt.live} & set(done), "completed segments were handed over as running"
    taken = {t.run_id for t in nxt.trials if t.results}
    assert {segment.removesuffix("-r0") for segment in done} <= taken


def _started_with(history) -> SweepState:
    payload = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    return SweepState.model_validate_json(payload.data)


class FakeSweepServer:
    """What a segment's report meets: its activity's own completion (refused NOT_FOUND when `closed`, as the server
    answers once the execution that started it has continued as new), then signals to the sweep's current execution,
    the first `closing` of them refused while that execution is itself closing."""

    def __init__(self, closed: bool, closing: int = 0) -> None:
        from temporalio.service import RPCError, RPCStatusCode

        self.completed: list = []
        self.sent: list[str] = []
        server = self

        class Activity:
            async def complete(self, result) -> None:
                if closed:
                    raise RPCError("invoking workflow is completed", RPCStatusCode.NOT_FOUND, b"")
                server.completed.append(result)

        class Handle:
            async def signal(self, name: str, report) -> None:
                server.sent.append(report.segment_id)
                if len(server.sent) <= closing:
                    raise RPCError("workflow is closing", RPCStatusCode.RESOURCE_EXHAUSTED, b"")

        self.activity_handle, self.workflow_handle = Activity(), Handle()

    def get_async_activity_handle(self, task_token: bytes):
        return self.activity_handle

    def get_workflow_handle(self, *args, **kw):
        return self.workflow_handle


def report_through(server: FakeSweepServer):
    import asyncio

    from temporalio import activity
    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.sweeps import reported
    from orchestration.sweeps.models import TrialSegment
    from orchestration.sweeps.trials import RungResult, Trial
    from ray_jobs.specs import FineTuneConfig

    seg = TrialSegment(
        sweep_id="s",
        trial=Trial(index=0, run_id="s-t0000", params={}),
        config=FineTuneConfig(),
        stop_at_step=10,
        options=RunOptions(storage_uri="/s"),
        segment_id="s-t0000-r0",
    )
    result = RungResult(rung=0, steps=10, score=0.5)
    with pytest.raises(activity._CompleteAsyncError):  # the SDK must not complete it a second time
        asyncio.run(ActivityEnvironment(client=server).run(reported, seg, result))
    return result


def test_a_segment_reports_through_its_own_activity_while_its_execution_runs():
    server = FakeSweepServer(closed=False)
    assert server.completed == [report_through(server)] and server.sent == []


def test_a_segments_report_refused_while_the_sweep_continues_as_new_is_sent_again():
    """The execution that started the segment has closed: the report is the only way the segment's result reaches
    the next one. The server refuses signals to a workflow that is closing its execution, so it is sent again
    (before, the slot waited minutes for the segment to be re-issued)."""
    server = FakeSweepServer(closed=True, closing=2)
    report_through(server)
    assert server.completed == [] and server.sent == ["s-t0000-r0"] * 3
