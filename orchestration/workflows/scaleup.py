"""ScaleUpWorkflow: the same image training at each worker count, one after another, and what each worker bought.

Runs are sequential so each count has the cluster to itself and images/s compare fairly. Every run is an ordinary
CheckpointedTrainingWorkflow child (snapshot, ledger, resume on failure). A count the cluster cannot hold is
reported as such before anything is submitted, instead of a Ray job that waits forever for resources.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from orchestration import scaleup
    from orchestration.errors import root_message
    from orchestration.types import (
        ClusterCapacity,
        ScaleUpRequest,
        ScaleUpResult,
        ScaleUpRow,
        TrainingRequest,
        TrainingResult,
    )
    from orchestration.workflows.coordinator import CHILD, SHORT
    from orchestration.workflows.training import CheckpointedTrainingWorkflow
    from ray_jobs.specs import ImageTrainConfig


@workflow.defn
class ScaleUpWorkflow:
    @workflow.init
    def __init__(self, req: ScaleUpRequest) -> None:
        self.req = req
        self.rows = [ScaleUpRow(workers=n, global_batch=scaleup.global_batch(req, n)) for n in req.workers]

    @workflow.run
    async def run(self, req: ScaleUpRequest) -> ScaleUpResult:
        capacity = await workflow.execute_activity(
            "cluster_capacity", result_type=ClusterCapacity, task_queue=req.options.training_queue, **SHORT
        )
        for i, n in enumerate(req.workers):
            if reason := scaleup.does_not_fit(req, n, capacity):
                self.rows[i] = self.rows[i].model_copy(update={"state": "does-not-fit", "detail": reason})
                continue
            run_id = f"{req.scaleup_id}-w{n}"
            self.rows[i] = self.rows[i].model_copy(update={"state": "running", "run_id": run_id})
            try:
                result: TrainingResult = await workflow.execute_child_workflow(
                    CheckpointedTrainingWorkflow.run,
                    TrainingRequest(run_id=run_id, config=scaleup.config_for(req, n), options=req.options),
                    id=run_id,
                    **CHILD,
                )
            except FailureError as exc:
                self.rows[i] = self.rows[i].model_copy(update={"state": "failed", "detail": root_message(exc)})
                continue
            m = result.metrics
            self.rows[i] = self.rows[i].model_copy(
                update={
                    "state": "completed",
                    "images_per_s": scaleup.throughput(req, m),
                    "time_to_target_s": m.get("time_to_target_s"),
                    "final_accuracy": m.get("eval_accuracy"),
                    "wall_time_s": result.wall_time_s,
                }
            )
        plot_uri = f"{req.options.storage_uri.rstrip('/')}/scaleups/{req.scaleup_id}/scaleup.png"
        result = self.result().model_copy(update={"plot_uri": plot_uri})
        await workflow.execute_activity("plot_scaleup", result, **SHORT)
        return result

    def result(self) -> ScaleUpResult:
        rows, baseline = scaleup.with_efficiency(self.rows)
        cfg = self.req.config
        image = isinstance(cfg, ImageTrainConfig)
        return ScaleUpResult(
            scaleup_id=self.req.scaleup_id,
            scaling=self.req.scaling,
            dataset=cfg.dataset if image else f"custom loop {cfg.entrypoint}",
            synthetic=image and cfg.dataset == "synthetic",
            target_accuracy=cfg.target_accuracy if image else None,
            baseline_workers=baseline,
            rows=rows,
            throughput="images/s" if image else "samples/s",
        )

    @workflow.query
    def table(self) -> ScaleUpResult:
        """The table so far (live while the runs go on)."""
        return self.result()
