"""Warm promotions, both sides of the hand-over through storage: the job that waits at its rung (`Segment`) and the
promoted segment's attempt that hands it the next stop, or starts a job of its own when it cannot."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from ray.job_submission import JobStatus

from ray_jobs import storage
from ray_jobs.job_runner import Segment, run_dir
from ray_jobs.outcome import PARKED_FILE, Parked, Promotion, job_dir, promotion_uri, read_parked
from ray_jobs.specs import FineTuneConfig, JobSpec
from tests.test_failure_rules import checkpoint, manifest

CPU = torch.device("cpu")


def job_spec(tmp_path: Path, park_s: float, stop_at_step: int | None = 10) -> JobSpec:
    return JobSpec(
        run_id="r",
        ray_job_id="job-1",
        config=FineTuneConfig(),
        snapshot_uri="/snap",
        storage_path=str(tmp_path / "runs"),
        stop_at_step=stop_at_step,
        park_s=park_s,
    )


def parked_state(spec: JobSpec) -> Parked | None:
    return read_parked(run_dir(spec), spec.ray_job_id)


def test_a_waiting_job_takes_the_promotion_and_moves_its_stop(tmp_path):
    spec = job_spec(tmp_path, park_s=30)
    segment = Segment(spec, total=90)

    def promote() -> None:
        while (parked := parked_state(spec)) is None:
            time.sleep(0.05)
        assert parked.state == "waiting" and parked.step == 10 and parked.until > time.time() + 25
        offer = Promotion(stop_at_step=30, park_s=5).model_dump(mode="json")
        storage.write_json(promotion_uri(run_dir(spec), spec.ray_job_id, 10), offer)

    thread = threading.Thread(target=promote)
    thread.start()
    started = time.monotonic()
    assert segment.await_promotion(rank=0, device=CPU)
    thread.join()
    assert time.monotonic() - started < 5  # went on as soon as the promotion was there, not at the deadline
    assert (segment.stop, segment.park_s) == (30, 5.0)
    assert parked_state(spec).state == "promoted"


def test_without_a_promotion_the_job_leaves_at_its_deadline(tmp_path):
    spec = job_spec(tmp_path, park_s=0.5)
    segment = Segment(spec, total=90)
    assert not segment.await_promotion(rank=0, device=CPU)
    assert segment.stop == 10
    assert parked_state(spec).state == "left"


@pytest.mark.parametrize("park_s, stop_at_step", [(0.0, 10), (30.0, 90), (30.0, None)])
def test_no_wait_without_a_park_or_at_the_end_of_the_run(tmp_path, park_s, stop_at_step):
    spec = job_spec(tmp_path, park_s=park_s, stop_at_step=stop_at_step)
    started = time.monotonic()
    assert not Segment(spec, total=90).await_promotion(rank=0, device=CPU)
    assert time.monotonic() - started < 1
    assert not (Path(job_dir(run_dir(spec), spec.ray_job_id)) / PARKED_FILE).exists()


class Handle:
    def __init__(self, signals: list) -> None:
        self.signals = signals

    async def signal(self, name: str, payload) -> None:
        self.signals.append((name, payload))


class Client:
    def __init__(self) -> None:
        self.signals: list = []

    def get_workflow_handle(self, *args, **kw) -> Handle:
        return Handle(self.signals)


class Ray:
    """The Ray Jobs API as the promoted attempt sees it: the rung-0 job `warm` goes through `statuses`; when it ends
    SUCCEEDED it has left its rung (its parked marker says so, as the real job writes it)."""

    def __init__(self, statuses: list[JobStatus], run_uri: str) -> None:
        self.statuses, self.run_uri = statuses, run_uri
        self.submitted: list[dict] = []

    def status(self, job_id: str) -> JobStatus | None:
        assert job_id == "warm"
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if status == JobStatus.SUCCEEDED:
            write_parked(self.run_uri, Parked(step=10, until=time.time(), state="left"))
        return status

    def find_live(self, run_id: str, hint: str | None, incarnation: str | None) -> str | None:
        """As `RaySubmission.find_live`: the hint if it is alive or succeeded; `warm` is of another incarnation."""
        return hint if hint and self.status(hint) in {JobStatus.RUNNING, JobStatus.SUCCEEDED} else None

    def strangers(self, *args) -> list[str]:
        return []

    def submit(self, job_id: str, run_id: str, module: str, spec_uri: str, *args) -> None:
        self.submitted.append(json.loads(Path(spec_uri).read_text()))
        raise PermissionError("the test ends the attempt here")


def write_parked(run_uri: str, parked: Parked) -> None:
    storage.write_json(storage.join(job_dir(run_uri, "warm"), PARKED_FILE), parked.model_dump(mode="json"))


def promoted_attempt(
    tmp_path: Path, statuses: list[JobStatus], parked: Parked | None, retry: bool = False
) -> tuple[Ray, Path]:
    """The rung-1 segment's attempt: resumes from the rung-0 checkpoint at step 10 that job `warm` committed. The
    first attempt is told to promote `warm`; a `retry` (its predecessor took `warm` over, then was lost) follows it."""
    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.training import _Attempt, runs_root
    from orchestration.settings import Settings
    from orchestration.types import DatasetSnapshot, RunOptions, TrainAttemptInput

    rung = checkpoint(10).model_copy(update={"ray_job_id": "warm", "metrics": {"total_steps": 90.0}})
    inp = TrainAttemptInput(
        run_id="r",
        config=FineTuneConfig(),
        snapshot=DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False),
        options=RunOptions(storage_uri=str(tmp_path), poll_interval_s=0.05),
        checkpoints=[rung],
        stop_at_step=30,
        warm_job_id=None if retry else "warm",
        reattach_job_id="warm" if retry else None,
        attempt=2 if retry else 1,
    )
    run_uri = storage.join(runs_root(inp.options.storage_uri), "r")
    if parked is not None:
        write_parked(run_uri, parked)
    ray = Ray(statuses, run_uri)
    with pytest.raises(PermissionError):
        asyncio.run(ActivityEnvironment(client=Client()).run(_Attempt(ray, Settings.from_env(), inp).run))
    return ray, Path(promotion_uri(run_uri, "warm", 10))


def test_a_job_that_left_as_the_promotion_was_written_is_followed_by_a_cold_resume_from_the_rung(tmp_path):
    """The race the margin makes rare: the promotion is written, but the job had taken its last look and ends
    where it was. The attempt must resume from the rung checkpoint, not fail the segment."""
    waiting = Parked(step=10, until=time.time() + 60)
    ray, offer = promoted_attempt(tmp_path, [JobStatus.RUNNING, JobStatus.SUCCEEDED], waiting)
    assert Promotion.model_validate_json(offer.read_text()).stop_at_step == 30  # it was offered the promotion
    (spec,) = ray.submitted
    assert (spec["resume_from_step"], spec["stop_at_step"]) == (10, 30)


def test_a_retry_after_the_taken_over_job_left_at_its_rung_resumes_from_the_rung_checkpoint(tmp_path):
    """The attempt that took the job over was lost (a deploy), and the job had left at its rung meanwhile: the retry
    reattaches to it by id, finds it ended below the segment's stop, and must not count that as a failure (every
    retry would find the same job, until the run failed)."""
    ray, _ = promoted_attempt(tmp_path, [JobStatus.SUCCEEDED], None, retry=True)
    (spec,) = ray.submitted
    assert (spec["resume_from_step"], spec["stop_at_step"]) == (10, 30)


@pytest.mark.parametrize(
    "state, step, seconds_left",
    [
        (None, 10, 60),  # no marker: a job of the release before warm promotions, or one that never got to wait
        ("left", 10, 60),
        ("promoted", 10, 60),  # an earlier try of this attempt promoted it
        ("waiting", 10, 1),  # about to leave: it might never read the promotion
        ("waiting", 5, 60),  # waits somewhere else than the checkpoint the segment resumes from
    ],
    ids=["no-marker", "left", "promoted", "leaving", "other-step"],
)
def test_a_job_not_waiting_at_the_rung_is_not_promoted_and_a_new_job_resumes_from_it(
    tmp_path, state, step, seconds_left
):
    parked = None if state is None else Parked(step=step, until=time.time() + seconds_left, state=state)
    ray, offer = promoted_attempt(tmp_path, [JobStatus.RUNNING, JobStatus.SUCCEEDED], parked)
    assert not offer.exists()
    (spec,) = ray.submitted
    assert (spec["resume_from_step"], spec["stop_at_step"], spec["park_s"]) == (10, 30, 0.0)
