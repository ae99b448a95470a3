"""InferenceWorkflow and EvaluationWorkflow: predictions and metrics from a run's checkpoint, found by run id."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from orchestration.activities.heartbeat import HEARTBEAT_TIMEOUT
    from orchestration.errors import INVALID_INPUT
    from orchestration.types import (
        EvaluateInput,
        EvaluationRequest,
        EvaluationResult,
        InferenceRequest,
        InferenceResult,
        PredictInput,
        Prediction,
        RunArtifacts,
    )

# Image and custom runs answered without a model (the patch keeps histories that an older release's workflow wrote
# replaying, also one whose `resolve_run` a newer worker answered with an image run)
NOT_TEXT = "not-text-runs"
RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=[INVALID_INPUT])


async def _resolve(req: InferenceRequest | EvaluationRequest) -> RunArtifacts:
    return await workflow.execute_activity(
        "resolve_run", req, result_type=RunArtifacts, start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY
    )


@workflow.defn
class InferenceWorkflow:
    @workflow.run
    async def run(self, req: InferenceRequest) -> InferenceResult:
        artifacts = await _resolve(req)
        if artifacts.kind != "text" and workflow.patched(NOT_TEXT):
            raise ApplicationError(
                f"run {req.run_id!r} is a {artifacts.kind} run: ttrain predicts with text classifiers only; "
                f"`ttrain export {req.run_id} DIR` writes its checkpoint for your own code to load",
                type=INVALID_INPUT,
                non_retryable=True,
            )
        predictions = await workflow.execute_activity(
            "predict",
            PredictInput(checkpoint=artifacts.checkpoint, texts=req.texts, text_pairs=req.text_pairs),
            result_type=list[Prediction],
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RETRY,
        )
        return InferenceResult(run_id=req.run_id, checkpoint_step=artifacts.checkpoint.step, predictions=predictions)


@workflow.defn
class EvaluationWorkflow:
    @workflow.run
    async def run(self, req: EvaluationRequest) -> EvaluationResult:
        artifacts = await _resolve(req)
        if artifacts.kind != "text" and workflow.patched(NOT_TEXT):  # its loop evaluated it: that is the report
            report = {"source": "reported by the training loop", **artifacts.checkpoint.metrics}
            return EvaluationResult(
                run_id=req.run_id, checkpoint_step=artifacts.checkpoint.step, split=req.split, report=report
            )
        report = await workflow.execute_activity(
            "evaluate",
            EvaluateInput(artifacts=artifacts, split=req.split, batch_size=req.batch_size),
            result_type=dict,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            retry_policy=RETRY,
        )
        return EvaluationResult(
            run_id=req.run_id, checkpoint_step=artifacts.checkpoint.step, split=req.split, report=report
        )
