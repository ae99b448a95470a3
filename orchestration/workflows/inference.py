"""InferenceWorkflow: labels and confidences from a run's checkpoint, found through the run's own ledger."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from orchestration.errors import INVALID_INPUT
    from orchestration.types import CheckpointInfo, InferenceRequest, InferenceResult, PredictInput, Prediction

RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=[INVALID_INPUT])


@workflow.defn
class InferenceWorkflow:
    @workflow.run
    async def run(self, req: InferenceRequest) -> InferenceResult:
        checkpoint = await workflow.execute_activity(
            "resolve_checkpoint",
            req,
            result_type=CheckpointInfo,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
        )
        predictions = await workflow.execute_activity(
            "predict",
            PredictInput(checkpoint=checkpoint, texts=req.texts, text_pairs=req.text_pairs),
            result_type=list[Prediction],
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RETRY,
        )
        return InferenceResult(run_id=req.run_id, checkpoint_step=checkpoint.step, predictions=predictions)
