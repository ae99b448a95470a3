"""Activities that use a finished checkpoint (orchestration queue, CPU or GPU): find it, predict, evaluate.

The run id names the training workflow, and its ledger and snapshot name what to load: the same run id gives the
same model and the same held-out rows, never a live re-download.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from temporalio import activity
from temporalio.service import RPCError

from orchestration.activities.heartbeat import in_child
from orchestration.client import BUSY, patient_query
from orchestration.errors import invalid
from orchestration.ledger import choose, present
from orchestration.types import (
    EvaluateInput,
    EvaluationRequest,
    InferenceRequest,
    PredictInput,
    Prediction,
    RunArtifacts,
    RunStatus,
)
from ray_jobs import storage
from ray_jobs.predict import Predictor

QUERY_PATIENCE_S = 20.0  # within the attempt's 30 s: a workflow still busy then is an error the retries wait out


@activity.defn
async def resolve_run(req: InferenceRequest | EvaluationRequest) -> RunArtifacts:
    """The run's newest checkpoint, or the one at `checkpoint_step` (the client resolves `best` to a step, so a worker
    of an older release never takes it for the newest), and its dataset snapshot. A checkpoint that keep_last (or a
    sweep's clean-up) removed is refused in one line that lists the steps still there."""
    handle = activity.client().get_workflow_handle(req.run_id)
    try:
        status = RunStatus.model_validate(await patient_query(handle, "status", patience_s=QUERY_PATIENCE_S))
    except Exception as exc:
        if isinstance(exc, RPCError) and exc.status in BUSY:  # still busy: the activity's retries wait on
            raise
        raise invalid(f"run {req.run_id!r} cannot be queried for its checkpoints: {exc}") from None
    if not status.checkpoints or status.snapshot_uri is None:
        raise invalid(f"run {req.run_id!r} has no committed checkpoint yet")
    there = await asyncio.to_thread(present, status, storage.exists)
    try:
        chosen = choose(status, there, req.checkpoint_step, best=False)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return RunArtifacts(checkpoint=chosen, snapshot_uri=status.snapshot_uri, kind=status.kind)


@lru_cache(maxsize=2)
def _predictor(uri: str) -> Predictor:
    return Predictor(uri)


def _predict(inp: PredictInput) -> list[Prediction]:
    rows = _predictor(inp.checkpoint.uri).predict(inp.texts, inp.text_pairs)
    return [Prediction(text=t, **row) for t, row in zip(inp.texts, rows, strict=True)]


def _evaluate(inp: EvaluateInput) -> dict:
    return _predictor(inp.artifacts.checkpoint.uri).evaluate(inp.artifacts.snapshot_uri, inp.split, inp.batch_size)


@activity.defn
async def predict(inp: PredictInput) -> list[Prediction]:
    return await in_child(_predict, inp)


@activity.defn
async def evaluate(inp: EvaluateInput) -> dict:
    return await in_child(_evaluate, inp)
