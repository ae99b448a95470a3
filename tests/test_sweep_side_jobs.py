"""A sweep's side jobs never fail the sweep: search attributes the server does not know, a leaderboard plot that
cannot be written, a TPE proposal that fails. Each is reported in the leaderboard's warnings (or the trial's note)
and the sweep completes with every trial. A failed or cancelled sweep's state stays queryable, so it can go on.

Real Temporal dev server, started without ttrain's search attributes; the plot's storage path is a file, so the
real plot activity fails for real; only the TPE proposal is a stand-in that raises.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from temporalio import activity
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from orchestration.activities.sweeps import SWEEP_ACTIVITIES
from orchestration.client import patient_query
from orchestration.sweeps.models import SweepSpec, SweepState, TpeRequest
from orchestration.types import RunOptions
from orchestration.workflows.sweep import SweepWorkflow
from tests.helpers import run

TEMPORAL = str(Path(sys.executable).parent / "temporal")


@activity.defn(name="propose_tpe")
async def broken_tpe(req: TpeRequest) -> dict:
    raise RuntimeError("optuna exploded")


def test_side_job_failures_are_warnings_and_the_sweep_completes(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "sweeps").write_text("a file where the sweeps' folder should be: the plot cannot be written")
    spec = SweepSpec(
        id=f"side-{uuid.uuid4().hex[:6]}",
        strategy="tpe",
        space={"params": {"lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}},
        base={"max_steps": 30},
        trainer="simulated",
        trials=6,
        max_concurrency=2,
    )
    activities = [a for a in SWEEP_ACTIVITIES if a.__name__ != "propose_tpe"] + [broken_tpe]

    async def go() -> tuple[SweepState, SweepState]:
        async with (
            await WorkflowEnvironment.start_local(
                dev_server_existing_path=TEMPORAL, data_converter=pydantic_data_converter
            ) as env,
            Worker(env.client, task_queue="side", workflows=[SweepWorkflow], activities=activities),
        ):
            state = SweepState(spec=spec, options=RunOptions(storage_uri=str(storage)))
            handle = await env.client.start_workflow(SweepWorkflow.run, state, id=spec.id, task_queue="side")
            final = await handle.result()
            return final, await patient_query(handle, SweepWorkflow.state)  # answered after the sweep closed

    final, queried = run(go())
    assert len(final.trials) == 6 and all(t.state == "completed" for t in final.trials)
    assert all(t.note and "TPE proposal failed" in t.note and "optuna exploded" in t.note for t in final.trials)
    assert len({t.params["lr"] for t in final.trials}) == 6  # seeded random draws, one per trial
    assert not final.search_attributes
    assert any("not registered" in w for w in final.warnings)
    assert any(w.startswith("leaderboard plot failed") for w in final.warnings)
    assert queried == final
