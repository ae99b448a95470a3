"""SweepWorkflow: random, ladder (ASHA) and TPE-proposed hyperparameter sweeps that survive anything.

All state lives in one SweepState. Decisions come from pure code (`sweeps.space`, `sweeps.ladder`) or from
activities whose results the history records (TPE proposals), so replay re-derives every decision. A promoted
trial continues its own run from its rung checkpoint (same snapshot, LR schedule set for the maximum budget), never
from zero. The history stays bounded: past a threshold the sweep continues as new carrying the state, and the
segments still running go on running: each one reports its own end by signal to the sweep's id (a training child
is started with ParentClosePolicy.ABANDON and signals `run_finished`; a simulated or proxy segment's activity
signals `segment_finished` when the execution that started it has closed), so the next execution adopts them and no
slot idles while a long trial finishes.
Live control: pause / resume / stop signals; add-trials and max-concurrency updates.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from orchestration.errors import INVALID_INPUT, root_message
    from orchestration.sweeps.ladder import Ladder
    from orchestration.sweeps.models import (
        BEST_RUNG,
        BEST_SCORE,
        SEARCH_ATTRIBUTES,
        TRIALS,
        BoardPage,
        GcRequest,
        LiveSegment,
        PlotRequest,
        SegmentReport,
        SweepLeaderboard,
        SweepState,
        TpeRequest,
        TrialSegment,
        check_trials,
    )
    from orchestration.sweeps.space import apply
    from orchestration.sweeps.trials import RungResult, Trial, gc_candidates
    from orchestration.types import RunReport, TrainingRequest, TrainingResult, control_queue
    from orchestration.workflows.coordinator import CHILD
    from orchestration.workflows.training import CheckpointedTrainingWorkflow
    from ray_jobs import storage

LIVE_HANDOVER = "live-handover"  # the patch that ended the drain before continue-as-new
LADDER_BY_INDEX = "ladder-ties-by-trial-index"
SETTLE_BEFORE_HANDOVER = "settle-before-handover"
CANCEL_WAITS_FOR_CHILDREN = "cancel-waits-for-children"
CLOSE_TRACKING = "close-sweep-tracking"
ELSEWHERE_WITHIN = timedelta(minutes=2)  # a side job on the training workers' queue, if none of them serves it
CHILDREN_CLOSE_WITHIN = timedelta(minutes=10)  # each stops its Ray jobs first: seconds, unless Ray is down
ACTIVITY = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(maximum_attempts=5, non_retryable_error_types=[INVALID_INPUT]),
}
# a proposal is advice and a plot or a clean-up is a courtesy: a few quick tries, then the sweep goes on without
SIDE_JOB = {
    "start_to_close_timeout": timedelta(minutes=5),
    "retry_policy": RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1)),
}


# Not sandboxed: the SDK runs code inside the sandbox for every payload of every activation (its serialization
# context), which was half the worker's CPU per trial here (bench/sweep_scale.py: 13.9 -> 7.1 ms a trial at 1,000
# trials). The sweep's code is deterministic by construction (pure helpers, `workflow.now`, seeded draws, no I/O),
# and the recorded histories in tests/histories replay against it; the other workflows keep the sandbox.
@workflow.defn(sandboxed=False)
class SweepWorkflow:
    @workflow.init
    def __init__(self, state: SweepState) -> None:
        self.s = state
        self.live: dict[str, LiveSegment] = {seg.segment_id: seg for seg in state.live}  # handed over, still running
        self.draining = False
        self.table = table = state.table
        self.index_of = {run_id: i for i, run_id in enumerate(table.run_id)}
        self._ranking: list[int] | None = None  # the leaderboard's order, until the next result
        spec = state.spec
        if spec.uses_ladder:
            assert spec.ladder is not None
            ladder = spec.ladder
            self.ladder = Ladder(ladder.min_steps, ladder.max_steps, ladder.eta, spec.mode, ladder.rule)
        else:
            budget = spec.base.max_steps
            self.ladder = Ladder(budget or 1, budget or 1, 2, spec.mode)
        # The ladder knows trials by index, so equal scores go to the lower index at any size. Executions before
        # this patch knew them by run id, whose string order leaves trial order past t9999: they replay with it. A
        # new execution rebuilds the ladder from the table, so a sweep switches at its next continue-as-new.
        self.by_index = workflow.patched(LADDER_BY_INDEX)
        keys = range(len(table)) if self.by_index else table.run_id
        # rebuild the ladder's bookkeeping from the carried table
        arrived = zip(table.result_trial, table.result_rung, table.result_score, strict=True)
        results = [(keys[i], rung, score) for i, rung, score in arrived]
        promoted = [(keys[i], rung) for i in range(len(table)) for rung in range(table.rung[i])]
        if len(table.result_climbs) == len(results):
            self.ladder.restore(
                ((*r, climbs) for r, climbs in zip(results, table.result_climbs, strict=True)), promoted
            )
        else:  # saved before the table kept the rule's answers: ask again, in the order the results came in
            table.result_climbs = [self.ladder.record(*r) for r in results]
            for key, rung in promoted:
                self.ladder.mark_promoted(key, rung)
        self.best_key = max((self._rank(rung, score) for _, rung, score in results), default=None)
        handed_over = {seg.run_id for seg in state.live}
        for i, trial_state in enumerate(table.state):
            if trial_state == "running" and table.run_id[i] not in handed_over:
                table.state[i] = "failed"  # a sweep of before the live handover drained: it had finished or failed

    @workflow.run
    async def run(self, state: SweepState) -> SweepState:
        if self.s.search_attributes and workflow.patched("check-search-attributes"):
            await self._check_search_attributes()
        tasks: set[asyncio.Task] = set()

        def spawn(coro) -> None:
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        for seg in list(self.live.values()):  # adopted from the execution before: they report by signal
            if self.s.spec.trainer != "real":
                spawn(self._reissue_if_lost(seg))
        try:
            while True:
                await workflow.wait_condition(lambda: self._startable() or self._finished() or self._history_is_long())
                if self._history_is_long():
                    if workflow.patched(LIVE_HANDOVER) and all(seg.reports for seg in self.live.values()):
                        if workflow.patched(SETTLE_BEFORE_HANDOVER):
                            # The SDK applies an activation's signals and checks wait conditions before it applies
                            # the activity results that came with them: one more activation lets those results in,
                            # else a segment that completed its activity here would be handed over as running. A
                            # no-op local activity gives it within the workflow task (a timer waited a second).
                            await workflow.execute_local_activity(
                                "handover_point", start_to_close_timeout=timedelta(seconds=10)
                            )
                        await workflow.wait_condition(workflow.all_handlers_finished)
                        self.s.live = list(self.live.values())
                    else:  # segments of a sweep started before the live handover: drain, as it always did
                        self.draining = True
                        await workflow.wait_condition(lambda: self.running == 0)
                    self.s.generation += 1
                    workflow.continue_as_new(self.s)
                if self._finished():
                    break
                segment = await self._next_segment()
                if segment is not None:
                    spawn(self._run_segment(segment))
        except asyncio.CancelledError:
            await self._cancel_live_children()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._finalize()
        return self.state()

    @property
    def running(self) -> int:
        return len(self.live)

    # ---- decisions ----
    def _over_budget(self) -> bool:
        """A budget binds promotions too: strategies compared at an equal budget spend an equal budget."""
        spec = self.s.spec
        return (spec.max_total_steps is not None and self.s.steps_used >= spec.max_total_steps) or (
            spec.max_gpu_hours is not None and self.s.gpu_hours >= spec.max_gpu_hours
        )

    def _new_trials_left(self) -> bool:
        return len(self.table) < self.s.spec.trials and not self._over_budget()

    def _startable(self) -> bool:
        if self.s.paused or self.s.stopping or self.draining or self.running >= self.s.spec.max_concurrency:
            return False
        return self._new_trials_left() or self._promotable()

    def _promotable(self) -> bool:
        return not self._over_budget() and self.ladder.peek() is not None

    def _finished(self) -> bool:
        if self.running:
            return False
        return self.s.stopping or not (self._new_trials_left() or self._promotable())

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() > self.s.spec.history_limit

    async def _next_segment(self) -> TrialSegment | None:
        promoted = None if self._over_budget() else self.ladder.promotion()
        if promoted is not None:
            key, rung = promoted
            index = key if self.by_index else self.index_of[key]
            self.table.rung[index], self.table.state[index] = rung, "running"
        elif self._new_trials_left():
            index = await self._new_trial()
        else:
            return None
        trial = self.table.trial(index)
        try:
            segment = self._segment(trial)
        except ValueError as exc:
            self.table.fail(index, f"invalid sampled config: {exc}")
            return None
        previous = trial.latest.steps if trial.latest else 0
        self.s.steps_used += segment.stop_at_step - previous
        self.live[segment.segment_id] = LiveSegment(
            segment_id=segment.segment_id,
            run_id=trial.run_id,
            rung=trial.rung,
            started_at=workflow.now(),
            reports=self._handover,
        )
        return segment

    def _segment(self, trial: Trial) -> TrialSegment:
        """The trial's next segment: from its last rung up to its current rung's budget."""
        spec = self.s.spec
        budget = self.ladder.budgets[trial.rung]
        config = apply(spec.base, {**trial.params, "max_steps": spec.max_budget or budget})
        return TrialSegment(
            sweep_id=spec.id,
            trial=trial,
            config=config,
            stop_at_step=budget,
            options=self.s.options,
            segment_id=f"{trial.run_id}-r{trial.rung}",
            simulated_step_ms=spec.simulated_step_ms,
            proxy_task=spec.proxy_task,
        )

    async def _new_trial(self) -> int:
        spec = self.s.spec
        index = len(self.table)
        note = None
        seeded = random.Random(spec.seed * 1_000_003 + index)
        if spec.strategy == "tpe":
            history = self.table.tpe_history(spec.mode)  # one budget: rung 0; bounded
            try:
                params = await workflow.execute_activity(
                    "propose_tpe",
                    TpeRequest(space=spec.space, history=history, seed=spec.seed, index=index, mode=spec.mode),
                    result_type=dict,
                    **SIDE_JOB,
                )
            except ActivityError as exc:  # a proposal is advice: a seeded random draw keeps the sweep going
                params, note = (
                    spec.space.sample(seeded),
                    f"TPE proposal failed, seeded random instead: {root_message(exc)}",
                )
        else:
            params = spec.space.sample(seeded)
        run_id = f"{spec.id}-t{index:04d}"
        self.index_of[run_id] = self.table.add(run_id, params, note)
        return index

    # ---- execution ----
    async def _run_segment(self, seg: TrialSegment) -> None:
        """Within one execution the segment's own outcome completes it; after a handover, its report does."""
        try:
            if self.s.spec.trainer == "real":
                training = await self._train(seg)
                if seg.segment_id not in self.live:  # its report came first
                    return
                result = self._rung_result(seg.segment_id, training)
            else:
                activity_name = "simulate_segment" if self.s.spec.trainer == "simulated" else "proxy_segment"
                result = await workflow.execute_activity(activity_name, seg, result_type=RungResult, **ACTIVITY)
        except FailureError as exc:
            self._complete(seg.segment_id, error=root_message(exc))
            return
        except ValueError as exc:  # the run did not report the sweep's metric
            self._complete(seg.segment_id, error=str(exc))
            return
        self._complete(seg.segment_id, result)

    async def _reissue_if_lost(self, seg: LiveSegment) -> None:
        """An activity segment handed over by continue-as-new reports by signal; if its worker died meanwhile nobody
        retries it (its execution is closed), so after its timeout it runs again (a late report is ignored)."""
        wait = ACTIVITY["start_to_close_timeout"] - (workflow.now() - seg.started_at)
        try:
            await workflow.wait_condition(lambda: seg.segment_id not in self.live, timeout=max(wait, timedelta(0)))
        except asyncio.TimeoutError:
            trial = self.table.trial(self.index_of[seg.run_id])
            self.live[seg.segment_id] = seg.model_copy(update={"started_at": workflow.now()})
            await self._run_segment(self._segment(trial))

    def _complete(self, segment_id: str, result: RungResult | None = None, error: str | None = None) -> None:
        """A segment's end, once: by its own outcome or its report, whichever comes first."""
        live = self.live.pop(segment_id, None)
        if live is None:
            return
        table, index = self.table, self.index_of[live.run_id]
        if result is not None and not math.isfinite(result.score):  # a diverged metric ranks nowhere
            result, error = None, f"{self.s.spec.metric} is {result.score} at step {result.steps}"
        if result is None:
            table.fail(index, error)
            return
        earlier = table.positions(index)
        self.s.steps_done += result.steps - (table.result_steps[earlier[-1]] if earlier else 0)
        result = result.model_copy(
            update={"steps_spent": self.s.steps_done, "started_at": live.started_at, "finished_at": workflow.now()}
        )
        climbs = self.ladder.record(index if self.by_index else live.run_id, result.rung, result.score)
        table.record(index, result, climbs)
        table.state[index] = "completed" if table.rung[index] == self.ladder.top_rung else "waiting"
        self._ranking = None
        self._publish_best(result)

    @workflow.signal
    def segment_finished(self, report: SegmentReport) -> None:
        self._complete(report.segment_id, report.result)

    @workflow.signal
    def run_finished(self, report: RunReport) -> None:
        if report.workflow_id not in self.live:
            return
        if report.result is None:
            self._complete(report.workflow_id, error=report.error or "the run failed")
            return
        try:
            self._complete(report.workflow_id, self._rung_result(report.workflow_id, report.result))
        except ValueError as exc:
            self._complete(report.workflow_id, error=str(exc))

    async def _cancel_live_children(self) -> None:
        """The children were started to outlive an execution (ABANDON): a cancelled sweep cancels them itself, and
        each stops its own Ray jobs. The sweep closes once they have reported their end: `--replace` starts trials
        under the same ids at once, and would collide with a child still stopping its jobs."""
        if self.s.spec.trainer != "real":
            return
        for segment_id in list(self.live):
            try:
                await workflow.get_external_workflow_handle(segment_id).cancel()
            except Exception as exc:  # already closed (its report lost) or never started: nothing to wait for
                workflow.logger.info("child %s not cancelled: %s", segment_id, exc)
                self._complete(segment_id, error=f"sweep cancelled; the run could not be: {exc}")
        if workflow.patched(CANCEL_WAITS_FOR_CHILDREN):
            try:
                await workflow.wait_condition(lambda: not self.live, timeout=CHILDREN_CLOSE_WITHIN)
            except asyncio.TimeoutError:
                workflow.logger.warning("sweep cancelled; children still closing: %s", sorted(self.live))

    def _rank(self, rung: int, score: float) -> tuple[int, float]:
        """(rung, signed score): how results compare for the best so far."""
        return rung, score if self.s.spec.mode == "max" else -score

    def _publish_best(self, result: RungResult) -> None:
        """Best score, its rung and the trial count as search attributes: the Temporal UI lists sweeps by them.
        Ranked as the leaderboard ranks (higher rung first, then score), updated only when the best changes."""
        key = self._rank(result.rung, result.score)
        if not self.s.search_attributes or (self.best_key is not None and key <= self.best_key):
            return
        self.best_key = key
        workflow.upsert_search_attributes(
            [
                BEST_SCORE.value_set(result.score),
                BEST_RUNG.value_set(result.rung),
                TRIALS.value_set(len(self.table)),
            ]
        )

    async def _train(self, seg: TrialSegment) -> TrainingResult:
        """A segment below the top rung parks its job at the rung (`promotion_wait_s`); a promoted one names the job
        that committed its rung checkpoint, and trains on in it if that job still waits there."""
        trial = seg.trial
        options = {**CHILD, "parent_close_policy": ParentClosePolicy.ABANDON} if self._handover else CHILD
        ladder = self.s.spec.ladder
        request = TrainingRequest(
            run_id=trial.run_id,
            config=seg.config,
            options=seg.options,
            resume_from=trial.latest.checkpoint if trial.latest else None,
            stop_at_step=seg.stop_at_step,
            park_s=ladder.promotion_wait_s if ladder and trial.rung < self.ladder.top_rung else 0.0,
            report_to=workflow.info().workflow_id if self._handover else None,
        )
        return await workflow.execute_child_workflow(
            CheckpointedTrainingWorkflow.run, request, id=seg.segment_id, result_type=TrainingResult, **options
        )

    @property
    def _handover(self) -> bool:
        """Children outlive this execution and report by signal (sweeps started before this recorded no marker)."""
        return workflow.patched(LIVE_HANDOVER)

    def _rung_result(self, segment_id: str, result: TrainingResult) -> RungResult:
        live = self.live[segment_id]
        self.s.gpu_hours += result.wall_time_s * self._workers(live) / 3600
        metric = self.s.spec.metric
        if metric not in result.metrics:
            raise ValueError(f"metric {metric!r} not reported (have {sorted(result.metrics)})")
        ckpt = result.final_checkpoint
        return RungResult(rung=live.rung, steps=ckpt.step, score=result.metrics[metric], checkpoint=ckpt)

    def _workers(self, live: LiveSegment) -> int:
        return self._segment(self.table.trial(self.index_of[live.run_id])).config.scaling.num_workers

    async def _finalize(self) -> None:
        """Garbage-collect the losers (`gc_candidates`), draw the leaderboard next to the results, mark the sweep's
        MLflow run finished (on a training worker: it has the jobs' environment). Side jobs: retried, and if they
        still fail the sweep reports it in its warnings and ends as it would have."""
        ranking = self._ranked()
        sweep_uri = storage.join(self.s.options.storage_uri, "sweeps", self.s.spec.id)
        if self.s.spec.trainer == "real":
            losers = [
                storage.join(self.s.options.storage_uri, "runs", run_id)
                for run_id in gc_candidates(self.table, self.ladder.top_rung, ranking[0] if ranking else None)
            ]
            await self._side_job("checkpoint clean-up", "delete_runs", GcRequest(run_uris=losers))
            if workflow.patched(CLOSE_TRACKING):
                queue = control_queue(self.s.options.training_queue)
                spec = self.s.spec
                await self._side_job(
                    "closing its MLflow run", "close_sweep_tracking", spec.id, spec.base, task_queue=queue
                )
        plot = PlotRequest(state=self.s, uri=storage.join(sweep_uri, "leaderboard.png"))
        await self._side_job("leaderboard plot", "plot_sweep", plot)

    async def _side_job(self, what: str, activity: str, *args, task_queue: str | None = None) -> None:
        """`task_queue`: another queue than the sweep's, where no worker may be polling: bounded from scheduling."""
        bound = {"schedule_to_close_timeout": ELSEWHERE_WITHIN} if task_queue else {}
        try:
            await workflow.execute_activity(activity, args=args, task_queue=task_queue, **SIDE_JOB, **bound)
        except ActivityError as exc:
            self._warn(f"{what} failed: {root_message(exc)}")

    def _warn(self, message: str) -> None:
        workflow.logger.warning(message)
        self.s.warnings.append(message)

    async def _check_search_attributes(self) -> None:
        """Upserting an attribute the server does not know fails every workflow task, forever: look first."""
        names = [k.name for k in SEARCH_ATTRIBUTES]
        try:
            missing = await workflow.execute_activity(
                "missing_search_attributes", names, result_type=list[str], **SIDE_JOB
            )
        except ActivityError as exc:  # e.g. an API key without operator rights: publish nothing rather than risk it
            missing = names
            self._warn(f"could not list the namespace's search attributes ({root_message(exc)})")
        if missing:
            self.s.search_attributes = False
            self._warn(
                f"search attributes {missing} are not registered on this Temporal namespace: the sweep publishes "
                "none (register them with `temporal operator search-attribute create`)"
            )

    # ---- live control ----
    @workflow.signal
    def pause(self) -> None:
        self.s.paused = True

    @workflow.signal
    def resume(self) -> None:
        self.s.paused = False

    @workflow.signal
    def stop(self) -> None:
        """Finish the running trials, start no new ones."""
        self.s.stopping = True

    @workflow.update
    def add_trials(self, n: int) -> int:
        self.s.spec.trials += n
        return self.s.spec.trials

    @add_trials.validator
    def _check_add(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"add at least one trial (got {n})")
        check_trials(self.s.spec.trials + n)

    @workflow.update
    def raise_budget(self, steps: int) -> int:
        """More training steps for the sweep (from none, a budget of what was used plus `steps`)."""
        base = self.s.spec.max_total_steps if self.s.spec.max_total_steps is not None else self.s.steps_used
        self.s.spec.max_total_steps = base + steps
        return self.s.spec.max_total_steps

    @raise_budget.validator
    def _check_budget(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"raise the budget by at least one step (got {steps})")

    @workflow.update
    def set_max_concurrency(self, n: int) -> int:
        self.s.spec.max_concurrency = n
        return n

    @set_max_concurrency.validator
    def _check_concurrency(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"max concurrency must be >= 1 (got {n})")

    @workflow.query
    def state(self) -> SweepState:
        """Everything the sweep knows: answered also after it closed, so a failed or cancelled sweep can go on.
        `live` is what runs now (the carried list is only written at continue-as-new)."""
        return self.s.model_copy(update={"live": list(self.live.values())})

    @workflow.query
    def leaderboard(self, page: BoardPage | None = None) -> SweepLeaderboard:
        """Ranked trials, one page of them when asked (`ttrain leaderboard --top N`, or `--json` page by page)."""
        page = page or BoardPage()
        ranked = self._ranked()
        everyone = ranked + self.table.unscored()
        end = None if page.limit is None else page.offset + page.limit
        return SweepLeaderboard(
            sweep_id=self.s.spec.id,
            strategy=self.s.spec.strategy,
            metric=self.s.spec.metric,
            mode=self.s.spec.mode,
            trials_started=len(self.table),
            trials_total=self.s.spec.trials,
            steps_used=self.s.steps_used,
            paused=self.s.paused,
            stopping=self.s.stopping,
            best=self.table.trial(ranked[0]) if ranked else None,
            trials=[self.table.trial(i) for i in everyone[page.offset : end]],
            offset=page.offset,
            warnings=self.s.warnings,
        )

    def _ranked(self) -> list[int]:
        if self._ranking is None:
            self._ranking = self.table.ranked(self.s.spec.mode)
        return self._ranking
