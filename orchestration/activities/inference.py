"""Activities that use a finished checkpoint (orchestration queue, CPU or GPU): find it, predict, evaluate.

The run id names the training workflow, and its ledger and snapshot name what to load: the same run id gives the
same model and the same held-out rows, never a live re-download.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

from temporalio import activity

from orchestration.activities.heartbeat import in_thread
from orchestration.errors import invalid
from orchestration.types import (
    CheckpointInfo,
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


@activity.defn
async def resolve_run(req: InferenceRequest | EvaluationRequest) -> RunArtifacts:
    """The run's newest checkpoint, or the one at `checkpoint_step`, and its dataset snapshot. A checkpoint that
    keep_last (or a sweep's clean-up) removed is refused in one line that lists the steps still there."""
    handle = activity.client().get_workflow_handle(req.run_id)
    try:
        status = RunStatus.model_validate(await handle.query("status"))
    except Exception as exc:
        raise invalid(f"run {req.run_id!r} cannot be queried for its checkpoints: {exc}") from None
    ledger: list[CheckpointInfo] = status.checkpoints
    if not ledger or status.snapshot_uri is None:
        raise invalid(f"run {req.run_id!r} has no committed checkpoint yet")
    present = await asyncio.to_thread(lambda: [c for c in ledger if not c.deleted and storage.exists(c.uri)])
    wanted = req.checkpoint_step if req.checkpoint_step is not None else (present[-1].step if present else None)
    chosen = next((c for c in present if c.step == wanted), None)
    if chosen is None:
        steps = [c.step for c in present]
        if wanted is None:
            raise invalid(f"run {req.run_id!r} has no checkpoint left in storage (all were deleted)")
        if any(c.step == wanted for c in ledger):
            why = "was deleted (keep_last, or a sweep's clean-up)"
        elif status.earlier_deleted_checkpoints:  # continue-as-new dropped deleted entries: both are possible
            why = "is not in the ledger (deleted earlier by keep_last, or never committed)"
        else:
            why = "was never committed"
        raise invalid(f"run {req.run_id!r}: the checkpoint at step {wanted} {why}; available steps: {steps}")
    return RunArtifacts(checkpoint=chosen, snapshot_uri=status.snapshot_uri)


@lru_cache(maxsize=2)
def _predictor(uri: str) -> Predictor:
    return Predictor(uri)


@activity.defn
async def predict(inp: PredictInput) -> list[Prediction]:
    def run() -> list[Prediction]:
        rows = _predictor(inp.checkpoint.uri).predict(inp.texts, inp.text_pairs)
        return [Prediction(text=t, **row) for t, row in zip(inp.texts, rows, strict=True)]

    return await in_thread(run)


@activity.defn
async def evaluate(inp: EvaluateInput) -> dict:
    def run() -> dict:
        return _predictor(inp.artifacts.checkpoint.uri).evaluate(inp.artifacts.snapshot_uri, inp.split, inp.batch_size)

    return await in_thread(run)
