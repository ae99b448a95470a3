"""Inference activities (orchestration queue, CPU): find a run's checkpoint through its workflow, then predict."""

from __future__ import annotations

import asyncio
from functools import lru_cache

from temporalio import activity

from orchestration.errors import invalid
from orchestration.types import CheckpointInfo, InferenceRequest, PredictInput, Prediction
from ray_jobs.predict import Predictor


@activity.defn
async def resolve_checkpoint(req: InferenceRequest) -> CheckpointInfo:
    """The run id names the training workflow; its ledger names the checkpoint (final unless a step is chosen)."""
    handle = activity.client().get_workflow_handle(req.run_id)
    try:
        ledger = [CheckpointInfo.model_validate(c) for c in await handle.query("ledger")]
    except Exception as exc:
        raise invalid(f"run {req.run_id!r} cannot be queried for its checkpoints: {exc}") from None
    if not ledger:
        raise invalid(f"run {req.run_id!r} has no committed checkpoint yet")
    if req.checkpoint_step is None:
        return ledger[-1]
    for c in ledger:
        if c.step == req.checkpoint_step:
            return c
    raise invalid(
        f"run {req.run_id!r} has no checkpoint at step {req.checkpoint_step} (has {[c.step for c in ledger]})"
    )


@lru_cache(maxsize=2)
def _predictor(uri: str) -> Predictor:
    return Predictor(uri)


@activity.defn
async def predict(inp: PredictInput) -> list[Prediction]:
    def run() -> list[Prediction]:
        rows = _predictor(inp.checkpoint.uri).predict(inp.texts, inp.text_pairs)
        return [Prediction(text=t, **row) for t, row in zip(inp.texts, rows, strict=True)]

    return await asyncio.to_thread(run)
