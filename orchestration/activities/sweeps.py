"""Sweep activities (orchestration queue): TPE proposals through Optuna, a simulated trainer for scale tests,
the leaderboard plot, and garbage collection of losing trials' checkpoints."""

from __future__ import annotations

import asyncio
import math
import random
from typing import NoReturn

from temporalio import activity
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.service import RPCError, RPCStatusCode
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from orchestration.sweeps.models import GcRequest, PlotRequest, SegmentReport, TpeRequest, TrialSegment
from orchestration.sweeps.space import Choice, IntRange, LogUniform
from orchestration.sweeps.trials import RungResult
from ray_jobs import storage

CLOSING_WAIT_S = 60.0  # a continue-as-new takes a workflow task or two: well under a second, unless the server is down


def propose(req: TpeRequest) -> dict:
    """Rebuild the study from the history (results at one budget only) and ask once, seeded by the trial index:
    the workflow records the answer, so replay never calls Optuna again."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for key, dim in req.space.params.items():
        if isinstance(dim, Choice):
            dists[key] = optuna.distributions.CategoricalDistribution(dim.values)
        elif isinstance(dim, IntRange):
            dists[key] = optuna.distributions.IntDistribution(dim.low, dim.high)
        else:
            dists[key] = optuna.distributions.FloatDistribution(dim.low, dim.high, log=isinstance(dim, LogUniform))
    sampler = optuna.samplers.TPESampler(seed=req.seed * 1_000_003 + req.index, n_startup_trials=4)
    study = optuna.create_study(direction="maximize" if req.mode == "max" else "minimize", sampler=sampler)
    for params, score in req.history:
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=score))
    return study.ask(dists).params


@activity.defn
async def propose_tpe(req: TpeRequest) -> dict:
    return await asyncio.to_thread(propose, req)


def synthetic_score(seg: TrialSegment, seed: int) -> float:
    """A learning curve with a per-configuration ceiling: higher budget helps, lr near 1e-4 is best."""
    lr = float(seg.trial.params.get("lr", 1e-4))
    ceiling = 0.95 - 0.15 * abs(math.log10(lr) + 4.0)
    noise = random.Random(seed * 7_919 + seg.trial.index * 31 + seg.stop_at_step).gauss(0.0, 0.005)
    return ceiling * (1.0 - math.exp(-seg.stop_at_step / 60.0)) + noise


def _closing(exc: BaseException) -> bool:
    """The sweep is continuing as new at this moment: the server refuses signals until the next execution runs."""
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.RESOURCE_EXHAUSTED


async def reported(seg: TrialSegment, result: RungResult) -> NoReturn:
    """Completes the segment's activity itself, by its task token: the execution that started the segment takes the
    result. If the server refuses (NOT_FOUND: that execution has continued as new, which no check made before could
    rule out; or any other error), the result goes by signal to the sweep's current execution, which adopted the
    segment or still runs it: the sweep takes a segment's end once, so a second report is harmless. A signal
    refused while the sweep is closing an execution is sent again to the next (else the segment is lost until it is
    re-issued, minutes later). Signalling every result instead cost each segment a second workflow task: a third of
    a simulated sweep's events (bench/sweep_scale.py)."""
    client, info = activity.client(), activity.info()
    try:
        await client.get_async_activity_handle(task_token=info.task_token).complete(result)
    except RPCError:
        await _signal_current(client.get_workflow_handle(info.workflow_id), seg, result)
    activity.raise_complete_async()  # completed above, or handed to the current execution: nothing left to send


async def _signal_current(handle, seg: TrialSegment, result: RungResult) -> None:
    report = SegmentReport(segment_id=seg.segment_id, result=result)
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_closing),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            stop=stop_after_delay(CLOSING_WAIT_S),
            reraise=True,
        ):
            with attempt:
                await handle.signal("segment_finished", report)
    except RPCError as exc:  # the sweep has closed (this was a re-issued segment's late twin): nobody to tell
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


@activity.defn
async def proxy_segment(seg: TrialSegment) -> RungResult:
    """The proxy trainer (`sweeps.proxy`): a real linear model on real data, checkpointed per trial in storage."""
    from orchestration.sweeps.proxy import train_segment

    uri = storage.join(seg.options.storage_uri, "proxy", f"{seg.trial.run_id}.npz")
    start = seg.trial.latest.steps if seg.trial.latest else 0
    score, steps = await asyncio.to_thread(
        train_segment,
        uri,
        seg.trial.params,
        seg.config.seed,
        start,
        seg.stop_at_step,
        seg.config.max_steps or seg.stop_at_step,
        seg.proxy_task,
    )
    await reported(seg, RungResult(rung=seg.trial.rung, steps=steps, score=score))


@activity.defn
async def simulate_segment(seg: TrialSegment) -> RungResult:
    """A synthetic learning curve; with `simulated_step_ms`, it takes that long per step, like a real segment."""
    start = seg.trial.latest.steps if seg.trial.latest else 0
    await asyncio.sleep((seg.stop_at_step - start) * seg.simulated_step_ms / 1000)
    score = synthetic_score(seg, seg.config.seed)
    await reported(seg, RungResult(rung=seg.trial.rung, steps=seg.stop_at_step, score=score))


def plot(req: PlotRequest) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    spec, table = req.state.spec, req.state.table
    fig, ax = plt.subplots(figsize=(8, 5))
    # a trial that failed before its first result has no curve (matplotlib 3.11 refuses an empty one)
    curves = [[(table.result_steps[p], table.result_score[p]) for p in table.positions(i)] for i in range(len(table))]
    curves = [curve for curve in curves if curve]
    # one artist for every curve: 100,000 trials draw in seconds, where a line each took minutes
    ax.add_collection(LineCollection(curves, colors=plt.rcParams["axes.prop_cycle"].by_key()["color"], lw=1, alpha=0.7))
    ax.scatter(table.result_steps, table.result_score, s=9, color="black", alpha=0.5, zorder=3)
    ax.autoscale()
    if spec.ladder is not None:
        b = spec.ladder.min_steps
        while b < spec.ladder.max_steps:
            ax.axvline(b, color="grey", ls=":", lw=1)
            b *= spec.ladder.eta
        ax.axvline(spec.ladder.max_steps, color="grey", ls=":", lw=1)
    ax.set_xlabel("training steps (budget)")
    ax.set_ylabel(spec.metric)
    ax.set_title(f"sweep {spec.id}: {spec.strategy}, {len(table)} trials (rungs dotted)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(req.uri, buf.getvalue())
    return req.uri


@activity.defn
async def plot_sweep(req: PlotRequest) -> str:
    return await asyncio.to_thread(plot, req)


@activity.defn
async def delete_runs(req: GcRequest) -> int:
    for uri in req.run_uris:
        await asyncio.to_thread(storage.delete_dir, uri)
    return len(req.run_uris)


@activity.defn
async def missing_search_attributes(names: list[str]) -> list[str]:
    """Which of `names` this namespace does not know (a sweep publishes only attributes that exist)."""
    client = activity.client()
    known = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return [n for n in names if n not in known.custom_attributes and n not in known.system_attributes]


@activity.defn
async def handover_point() -> None:
    """Run as a local activity by a sweep about to continue as new: nothing to do, it only lets one more workflow
    activation (with the activity results that came in alongside a signal) happen before the handover."""


# Everything a sweep worker must register: the orchestration worker, the tests and the benches use this one list.
SWEEP_ACTIVITIES = [
    propose_tpe,
    simulate_segment,
    proxy_segment,
    plot_sweep,
    delete_runs,
    missing_search_attributes,
    handover_point,
]
