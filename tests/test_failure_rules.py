"""The rules that decide what a failure means, as pure code: the retry budget, the divergence guard, the job's
outcome classification, NaN on the wire, id reuse differences and what a model cannot take."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from ray.exceptions import ActorDiedError
from ray.job_submission import JobStatus
from ray.train import WorkerGroupError
from temporalio.contrib.pydantic import pydantic_data_converter
from transformers import BertConfig

from orchestration.activities.snapshot import model_mismatch
from orchestration.attempts import after_failure
from orchestration.launch import differences
from orchestration.ledger import mark_deleted
from orchestration.types import AttemptFailure, CheckpointInfo, Progress, RetryState
from ray_jobs.job_runner import DivergenceGuard, failure_outcome
from ray_jobs.outcome import Diverged, InvalidJobInput
from ray_jobs.specs import FineTuneConfig, SnapshotManifest

# --- the retry budget -----------------------------------------------------------------------------------------------


def failure(step: int, message: str = "Ray job ended FAILED", training_code: bool = False) -> AttemptFailure:
    return AttemptFailure(kind="RayJobFailed", message=message, checkpoint_step=step, from_training_code=training_code)


def test_failures_that_made_progress_never_exhaust_the_budget():
    state = RetryState()
    for step in range(10, 1000, 10):  # a spot node lost every checkpoint interval, for 99 attempts
        verdict = after_failure(state, failure(step), start_step=0, limit=3)
        assert verdict.give_up is None and verdict.backoff_s == 1.0
    assert state.failures_without_progress == 0


def test_consecutive_failures_without_progress_give_up_with_the_last_error():
    state = RetryState()
    # the first attempt got from step 0 to 20 (free); the next four get nowhere
    verdicts = [after_failure(state, failure(20, f"boom {i}"), start_step=0, limit=4) for i in range(5)]
    assert [v.give_up is None for v in verdicts] == [True, True, True, True, False]
    assert verdicts[1].backoff_s < verdicts[2].backoff_s <= 60  # backs off while nothing moves
    assert verdicts[-1].give_up is not None
    assert "3 attempts in a row" not in verdicts[-1].give_up and "4 attempts in a row" in verdicts[-1].give_up
    assert "boom 4" in verdicts[-1].give_up


def test_progress_resets_the_count():
    state = RetryState()
    after_failure(state, failure(20), 0, limit=3)
    after_failure(state, failure(20), 0, limit=3)
    assert state.failures_without_progress == 1
    assert after_failure(state, failure(30), 0, limit=3).give_up is None
    assert state.failures_without_progress == 0


def test_the_same_training_error_from_the_same_checkpoint_twice_is_deterministic():
    state = RetryState()
    bug = "RuntimeError: The size of tensor a (600) must match the size of tensor b (512)"
    assert after_failure(state, failure(20, bug, training_code=True), 0, limit=8).give_up is None
    verdict = after_failure(state, failure(20, bug, training_code=True), 0, limit=8)
    assert verdict.give_up is not None and bug in verdict.give_up and "step 20" in verdict.give_up


@pytest.mark.parametrize(
    "second",
    [
        failure(30, "RuntimeError: x", training_code=True),  # from a newer checkpoint: it got further
        failure(20, "RuntimeError: y", training_code=True),  # another error
        failure(20, "RuntimeError: x", training_code=False),  # not raised by the training code (a lost node)
    ],
)
def test_anything_else_twice_is_retried(second):
    state = RetryState()
    after_failure(state, failure(20, "RuntimeError: x", training_code=True), 0, limit=8)
    assert after_failure(state, second, 0, limit=8).give_up is None


# --- the divergence guard -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "word"), [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_divergence_guard_names_the_first_non_finite_step(bad, word):
    guard = DivergenceGuard(torch.device("cpu"))
    for step, loss in enumerate([0.7, 0.6, bad, float("nan"), 0.5], start=1):
        guard.observe(torch.tensor(loss), step)
    with pytest.raises(Diverged, match=f"^loss became {word} at step 3$"):
        guard.check()


def test_divergence_guard_passes_finite_losses_and_checks_at_checkpoints():
    guard = DivergenceGuard(torch.device("cpu"))
    for step in range(1, 30):
        guard.observe(torch.tensor(1.0 / step), step)
    guard.check()
    assert guard.due(7, checkpoint_due=True) and guard.due(DivergenceGuard.CHECK_EVERY, False)
    assert not guard.due(7, checkpoint_due=False)


# --- what a failed job was ------------------------------------------------------------------------------------------


# In the driver, `WorkerGroupError.worker_failures` holds the training function's own exceptions (Ray 2.60), and
# Ray's own errors (ActorDiedError, ...) for workers that were lost.


def test_deterministic_errors_win_whatever_the_rank():
    exc = WorkerGroupError(
        "2 workers failed",
        {0: RuntimeError("connection reset by peer"), 1: Diverged("loss became NaN at step 5")},
    )
    out = failure_outcome("job-1", exc)
    assert out.deterministic and out.from_training_code
    assert (out.error_type, out.message) == ("Diverged", "loss became NaN at step 5")


def test_other_training_errors_are_retryable_and_named_by_the_lowest_rank():
    exc = WorkerGroupError("failed", {1: KeyError("b"), 0: RuntimeError("size mismatch")})
    out = failure_outcome("job-1", exc)
    assert not out.deterministic and out.from_training_code
    assert (out.error_type, out.message) == ("RuntimeError", "size mismatch")


def test_a_lost_worker_is_not_the_training_codes_error():
    exc = WorkerGroupError("failed", {0: ActorDiedError()})
    out = failure_outcome("job-1", exc)
    assert not out.deterministic and not out.from_training_code


@pytest.mark.parametrize(
    "error",
    [
        OSError(5, "Input/output error"),  # a checkpoint read while storage is out
        ConnectionResetError("connection reset by peer"),
        torch.distributed.DistNetworkError("connection to rank 1 lost"),
    ],
)
def test_storage_network_and_backend_errors_are_not_the_training_codes(error):
    out = failure_outcome("job-1", WorkerGroupError("failed", {0: error}))
    assert not out.deterministic and not out.from_training_code  # so never "the same error twice" from them
    assert out.error_type == type(error).__name__


def test_invalid_job_input_is_deterministic():
    assert failure_outcome("j", WorkerGroupError("x", {0: InvalidJobInput("bad")})).deterministic


def test_an_error_ray_loses_between_two_reads_of_a_workers_status_still_fails_the_job(tmp_path, monkeypatch):
    """Ray 2.60's worker poll reads the loop's error, then whether its thread is alive: a loop that raises in between
    reads as one that returned and `fit()` succeeds. Seen in CI, a loop that could not be imported ended SUCCEEDED with
    no checkpoint, and every retry reattached to that job until the run gave up with the wrong reason."""
    from types import SimpleNamespace

    import ray.train.torch

    from ray_jobs import job_runner
    from ray_jobs.outcome import read_outcome
    from ray_jobs.specs import JobSpec

    class LosesTheError:  # what `fit()` does when the poll missed it: the workers raised, the run "finished"
        def __init__(self, loop, train_loop_config: dict, **kwargs) -> None:
            self.loop, self.config = loop, train_loop_config

        def fit(self) -> SimpleNamespace:
            for rank in (0, 1):
                monkeypatch.setattr(ray.train, "get_context", lambda r=rank: SimpleNamespace(get_world_rank=lambda: r))
                with pytest.raises((KeyError, InvalidJobInput)):
                    self.loop(self.config)
            return SimpleNamespace(metrics={})

    def loop(config: dict) -> None:
        if ray.train.get_context().get_world_rank() == 0:
            raise KeyError("not the one to blame")
        raise InvalidJobInput("entrypoint 'bad_loops:no_such_function' cannot be imported")

    spec = JobSpec(run_id="r", ray_job_id="r-j1", config=FineTuneConfig(), snapshot_uri="x", storage_path=str(tmp_path))
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(ray.train.torch, "TorchTrainer", LosesTheError)
    assert job_runner.main(loop, "a job", ["--spec", str(tmp_path / "spec.json")]) == 3
    outcome = read_outcome(str(tmp_path / "r"), "r-j1")
    assert outcome is not None and outcome.status == "failed" and outcome.deterministic
    assert outcome.message == "entrypoint 'bad_loops:no_such_function' cannot be imported"


def test_a_worker_group_ray_restarts_in_the_job_clears_what_its_predecessor_recorded(tmp_path, monkeypatch):
    """Ray Train restarts a preempted job's workers in place (Ray 2.60's default): an error the first group recorded
    must not fail the job that the second group then finished."""
    from types import SimpleNamespace

    import ray.train

    from ray_jobs import job_runner
    from ray_jobs.specs import JobSpec

    spec = JobSpec(run_id="r", ray_job_id="r-j1", config=FineTuneConfig(), snapshot_uri="x", storage_path=str(tmp_path))
    monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_rank=lambda: 1))
    attempts = iter([torch.distributed.DistNetworkError("peer rank 0 lost"), None])

    def loop(config: dict) -> None:
        if error := next(attempts):
            raise error

    wrapped = job_runner.recording_errors(loop)
    with pytest.raises(torch.distributed.DistNetworkError):
        wrapped(spec.model_dump(mode="json"))
    assert job_runner.lost_worker_error(spec).error_type == "DistNetworkError"
    wrapped(spec.model_dump(mode="json"))  # the restarted group
    assert job_runner.lost_worker_error(spec) is None


# --- NaN on the wire ------------------------------------------------------------------------------------------------


def checkpoint(step: int, **metrics: float) -> CheckpointInfo:
    return CheckpointInfo(
        run_id="r",
        step=step,
        epoch=0.1,
        uri=f"/x/step_{step}",
        metrics=metrics,
        content_hash="sha256:0",
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        ray_job_id="j",
    )


def test_non_finite_metrics_survive_the_data_converter():
    async def round_trip():
        info = checkpoint(5, loss=float("nan"), eval_loss=float("inf"))
        progress = Progress(ray_job_id="j", loss=float("nan"), latest_checkpoint=info)
        payloads = await pydantic_data_converter.encode([info, progress])
        return await pydantic_data_converter.decode(payloads, [CheckpointInfo, Progress])

    info, progress = asyncio.run(round_trip())
    assert math.isnan(info.metrics["loss"]) and info.metrics["eval_loss"] == float("inf")
    assert math.isnan(progress.loss) and math.isnan(progress.latest_checkpoint.metrics["loss"])


def test_wire_models_ignore_fields_a_newer_worker_adds():
    data = checkpoint(5).model_dump(mode="json") | {"added_in_a_later_release": 1}
    assert CheckpointInfo.model_validate(data).step == 5


def test_mark_deleted_keeps_the_entries_and_says_so():
    ledger = [checkpoint(5), checkpoint(10), checkpoint(15)]
    mark_deleted(ledger, [5, 10])
    mark_deleted(ledger, [5])  # delivered twice: no change
    assert [(c.step, c.deleted) for c in ledger] == [(5, True), (10, True), (15, False)]


# --- id reuse and what a model cannot take --------------------------------------------------------------------------


def test_differences_name_each_changed_key():
    old = FineTuneConfig(lr=1e-4, max_steps=40).model_dump(mode="json")
    new = FineTuneConfig(lr=3e-4, max_steps=80).model_dump(mode="json")
    assert differences(old, new) == "lr 0.0001 -> 0.0003, max_steps 40 -> 80"
    assert differences(old, old) == ""


def manifest(task: str = "classification", labels: list[str] | None = None) -> SnapshotManifest:
    return SnapshotManifest(
        snapshot_id="ds-1",
        source="x",
        text_field="text",
        text_pair_field=None,
        label_field="label",
        task=task,
        label_names=labels if labels is not None else ["0", "1"],
        num_train=10,
        num_heldout=2,
        tokenizer_id="t",
    )


def test_sequence_longer_than_the_models_positions_is_refused_before_compute():
    problem = model_mismatch(FineTuneConfig(max_seq_length=600), BertConfig(max_position_embeddings=512), manifest())
    assert problem == "max_seq_length 600 exceeds the 512 positions of model 'all-MiniLM-L6-v2'"
    assert model_mismatch(FineTuneConfig(max_seq_length=512), BertConfig(), manifest()) is None


def test_a_classification_head_of_another_size_is_refused():
    head = BertConfig(architectures=["BertForSequenceClassification"], num_labels=3)
    assert "head for 3 labels; the data has 2" in model_mismatch(FineTuneConfig(), head, manifest())
    assert model_mismatch(FineTuneConfig(), BertConfig(architectures=["BertModel"]), manifest("regression", [])) is None


def test_optimizer_state_is_loaded_onto_the_cpu_first(tmp_path, monkeypatch):
    """A checkpoint written on cuda:3 must load where there is no cuda:3: every torch.load maps to the CPU (the
    optimizer then moves its state to its parameters' device)."""
    from ray_jobs import checkpointing

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    torch.save(model.state_dict(), tmp_path / "model.safetensors")  # only its hash is read back
    checkpointing.save_training_state(str(tmp_path), optimizer, scheduler, {"step": 1})
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw) or real_load(*a, **kw))
    state = checkpointing.load_training_state(str(tmp_path), optimizer, scheduler)
    assert state["step"] == 1 and len(seen) == 2
    assert all(kw.get("map_location") == "cpu" and kw.get("weights_only") is True for kw in seen)


# --- activities that block ------------------------------------------------------------------------------------------


def test_blocking_activity_work_heartbeats_so_a_dead_worker_is_noticed(monkeypatch):
    """Snapshot, evaluate and predict run for minutes to hours in a thread: without heartbeats a worker that died
    under them is noticed only at their start-to-close timeout."""
    import time

    from temporalio.testing import ActivityEnvironment

    from orchestration.activities import heartbeat

    monkeypatch.setattr(heartbeat, "EVERY_S", 0.05)
    beats: list[tuple] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)

    async def work() -> None:
        return await heartbeat.in_child(time.sleep, 0.5)

    assert asyncio.run(env.run(work)) is None
    assert len(beats) >= 5


def test_blocking_activity_work_runs_in_a_child_process_below_the_workers_priority():
    """Not in the worker's process, where it would hold the GIL and the cores that workflow tasks (failed past 2 s)
    and trainings' heartbeats need; seen failing both in suite runs while an evaluation ran in a thread."""
    import os

    from temporalio.testing import ActivityEnvironment

    from orchestration.activities import heartbeat

    async def where() -> tuple[int, int]:
        return await heartbeat.in_child(os.getpid), await heartbeat.in_child(os.nice, 0)

    pid, niceness = asyncio.run(ActivityEnvironment().run(where))
    assert pid != os.getpid() and niceness == max(heartbeat.NICENESS, os.nice(0))


def test_a_child_process_that_died_idle_is_replaced_for_the_next_activity():
    """Killed while no activity waited on it (the OOM killer, say): the pool refuses all work from then on, and
    without a new one every snapshot, evaluation and prediction on that worker would fail until it restarts."""
    import os
    import signal
    import time

    from temporalio.testing import ActivityEnvironment

    from orchestration.activities import heartbeat

    async def child() -> int:
        return await heartbeat.in_child(os.getpid)

    first = asyncio.run(ActivityEnvironment().run(child))
    os.kill(first, signal.SIGKILL)
    time.sleep(1.0)  # the pool's manager thread notices, and marks the pool broken
    assert asyncio.run(ActivityEnvironment().run(child)) not in (first, os.getpid())


def test_an_error_in_the_child_process_reaches_the_activity_as_itself_without_the_childs_traceback():
    """A user reads an activity's failure in one line (`max_seq_length 600 exceeds ...`); the pool chains the child's
    traceback text as the cause, which the failure would carry to the CLI (seen in the faults test)."""
    from temporalio.testing import ActivityEnvironment

    from orchestration.activities import heartbeat

    async def fails() -> None:
        await heartbeat.in_child(int, "not a number")

    with pytest.raises(ValueError, match="invalid literal") as raised:
        asyncio.run(ActivityEnvironment().run(fails))
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_cancel_during_a_submit_lets_the_submit_land_before_the_attempt_ends(tmp_path):
    """The workflow lists the run's jobs to stop them once the cancelled attempt has ended: a submit still in flight
    then (its thread goes on) would land after the list and leave a job that outlives the run."""
    import time

    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.training import _Attempt
    from orchestration.settings import Settings
    from orchestration.types import DatasetSnapshot, RunOptions, TrainAttemptInput

    class SlowRay:
        submitted: list[str] = []

        def find_live(self, *args) -> None:
            return None

        def strangers(self, *args) -> list[str]:
            return []

        def submit(self, job_id: str, *args) -> None:
            time.sleep(1.0)  # the Jobs API is slow to answer
            self.submitted.append(job_id)

    inp = TrainAttemptInput(
        run_id="r",
        config=FineTuneConfig(),
        snapshot=DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False),
        options=RunOptions(storage_uri=str(tmp_path)),
    )
    ray = SlowRay()
    env = ActivityEnvironment()

    async def cancelled_mid_submit() -> list[str]:
        attempt = asyncio.ensure_future(env.run(_Attempt(ray, Settings.from_env(), inp).run))
        await asyncio.sleep(0.3)
        env.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        return list(ray.submitted)  # what existed when the attempt had ended

    assert len(asyncio.run(cancelled_mid_submit())) == 1


def test_an_attempt_retires_what_the_ledger_it_is_handed_holds_beyond_keep_last(tmp_path):
    """Seen in a suite run: a long run continued as new between committing steps 27 and 30 and pruning 15 and 18 (the
    job had deleted them; the attempt's signal went to the closed execution). The next attempt reattached to the
    finished job, found nothing new to mirror, and the ledger listed 15 and 18 as present for good."""
    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.training import _Attempt
    from orchestration.settings import Settings
    from orchestration.types import DatasetSnapshot, RunOptions, TrainAttemptInput
    from tests.test_warm_promotion import Client

    class Ray:
        def find_live(self, *args) -> None:
            raise PermissionError("the test ends the attempt here")

    steps = [3, 15, 18, 21, 24, 27, 30]
    ledger = [
        checkpoint(s).model_copy(update={"uri": str(tmp_path / f"step_{s}"), "metrics": {"step": s}}) for s in steps
    ]
    for c in ledger:
        Path(c.uri).mkdir()
    inp = TrainAttemptInput(
        run_id="r",
        config=FineTuneConfig(keep_last=4, best_metric="step", best_mode="min"),
        snapshot=DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False),
        options=RunOptions(storage_uri=str(tmp_path)),
        checkpoints=ledger,
        reattach_job_id="j",
    )
    client = Client()
    with pytest.raises(PermissionError):
        asyncio.run(ActivityEnvironment(client=client).run(_Attempt(Ray(), Settings.from_env(), inp).run))
    assert client.signals == [("checkpoints_deleted", [15, 18])]
    assert sorted(int(p.name[5:]) for p in tmp_path.glob("step_*")) == [3, 21, 24, 27, 30]


def test_an_attempt_does_not_follow_again_a_job_that_ended_well_short_of_its_end(tmp_path):
    """Seen in CI: a job ended SUCCEEDED without its final checkpoint (Ray lost its worker's error), and each retry
    reattached to it, failed with "its final checkpoint is not committed", and the next did the same, eight times."""
    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.training import _Attempt
    from orchestration.settings import Settings
    from orchestration.types import DatasetSnapshot, RunOptions, TrainAttemptInput
    from tests.test_warm_promotion import Client

    class Ray:
        submitted: list[str] = []

        def status(self, job_id: str) -> JobStatus:
            return JobStatus.SUCCEEDED

        def find_live(self, run_id: str, hint: str | None, *args) -> str | None:
            return hint  # as `RaySubmission.find_live`: the last attempt's job, which succeeded

        def strangers(self, *args) -> list[str]:
            return []

        def submit(self, job_id: str, *args) -> None:
            self.submitted.append(job_id)
            raise PermissionError("the test ends the attempt here")

    inp = TrainAttemptInput(
        run_id="r",
        config=FineTuneConfig(),
        snapshot=DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False),
        options=RunOptions(storage_uri=str(tmp_path)),
        reattach_job_id="r--00000000-2-1",
        attempt=2,
    )
    with pytest.raises(PermissionError):
        asyncio.run(ActivityEnvironment(client=Client()).run(_Attempt(Ray(), Settings.from_env(), inp).run))
    assert len(Ray.submitted) == 1 and Ray.submitted[0] != inp.reattach_job_id


@pytest.mark.parametrize("committed", [[10, 20], []])
def test_an_attempt_the_previous_release_scheduled_resumes_from_the_workflows_ledger(tmp_path, committed):
    """During a rolling upgrade a `train` task scheduled by the previous release (no ledger in its input; Temporal
    retries it with the input it had) reaches a new worker: it must resume from the run's newest checkpoint, not 0
    (and from 0 when the run has none yet)."""
    import dataclasses
    import json

    from temporalio.testing import ActivityEnvironment

    from orchestration.activities.training import _Attempt
    from orchestration.settings import Settings
    from orchestration.types import DatasetSnapshot, RunOptions, TrainAttemptInput

    ledger = [checkpoint(step) for step in committed]
    specs: list[dict] = []

    class Handle:
        async def query(self, name: str, **kw) -> list:
            assert name == "ledger"
            return ledger

        async def signal(self, *args) -> None:
            return None

    class Client:
        def get_workflow_handle(self, *args, **kw) -> Handle:
            return Handle()

    class Ray:
        def find_live(self, *args) -> None:
            return None

        def strangers(self, *args) -> list[str]:
            return []

        def submit(self, job_id: str, run_id: str, module: str, spec_uri: str, *args) -> None:
            specs.append(json.loads(Path(spec_uri).read_text()))
            raise PermissionError("the test ends the attempt here")

    old_input = {  # the previous release's TrainAttemptInput of a fresh run: no `checkpoints`, no `resume_from`
        "run_id": "r",
        "config": FineTuneConfig().model_dump(mode="json"),
        "snapshot": DatasetSnapshot(snapshot_id="ds-1", uri="/snap", manifest=manifest(), reused=False),
        "options": RunOptions(storage_uri=str(tmp_path)),
    }
    env = ActivityEnvironment(client=Client())
    env.info = dataclasses.replace(env.info, attempt=3)
    with pytest.raises(PermissionError):
        asyncio.run(env.run(_Attempt(Ray(), Settings.from_env(), TrainAttemptInput.model_validate(old_input)).run))
    assert specs[0]["resume_from_step"] == max(committed, default=0)
    assert specs[0]["resume_from_uri"] == (ledger[-1].uri if ledger else None)


def test_large_payloads_become_claim_checks_and_everything_else_passes_through(tmp_path):
    from temporalio.api.common.v1 import Payload

    from orchestration.payloads import ENCODING, ClaimCheckCodec

    codec = ClaimCheckCodec(str(tmp_path), inline_max=1024)
    small, large = Payload(data=b"x" * 100), Payload(metadata={"encoding": b"json/plain"}, data=b"y" * 5000)

    async def round_trip() -> tuple[list[Payload], list[Payload]]:
        encoded = await codec.encode([small, large])
        return encoded, await codec.decode(encoded)

    encoded, decoded = asyncio.run(round_trip())
    assert encoded[0] == small  # below the limit, and histories recorded before the codec: untouched
    assert encoded[1].metadata["encoding"] == ENCODING and encoded[1].ByteSize() < 300
    assert decoded == [small, large]
    (blob,) = (tmp_path / "payloads").iterdir()
    blob.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match its hash"):
        asyncio.run(codec.decode([encoded[1]]))


# --- waiting for a result -------------------------------------------------------------------------------------------


class FlakyServer:
    """A workflow handle's two calls, failing as a loaded or restarting server fails them (seen in a suite run: a
    result long poll answered DEADLINE_EXCEEDED while the run went on and completed)."""

    def __init__(self, result_errors: list, describe_errors: Iterable) -> None:
        self.result_errors, self.describe_errors, self.asked = result_errors, iter(describe_errors), 0

    async def describe(self) -> None:
        if (error := next(self.describe_errors, None)) is not None:
            raise error

    async def result(self) -> str:
        self.asked += 1
        await asyncio.sleep(self.waits)
        if self.result_errors:
            raise self.result_errors.pop(0)
        return "done"

    waits = 0.0  # how long each result long-poll loop runs before it fails or returns


def rpc_error(status):
    from temporalio.service import RPCError

    return RPCError(status.name, status, b"")


def test_a_result_wait_outlasts_a_server_that_answers_late_or_restarts(monkeypatch):
    from temporalio.service import RPCError, RPCStatusCode

    from orchestration import client

    monkeypatch.setattr(client, "wait_exponential", lambda **_: lambda _: 0.0)
    late, down = rpc_error(RPCStatusCode.DEADLINE_EXCEEDED), rpc_error(RPCStatusCode.UNAVAILABLE)
    server = FlakyServer(result_errors=[late, down, late], describe_errors=[down])
    assert asyncio.run(client.wait_for_result(server)) == "done" and server.asked == 4
    # what does not pass is not waited out, and a server silent for longer than the patience ends the wait
    # a wait longer than the patience that then meets one late answer asks again: the server answered until then
    patient = FlakyServer(result_errors=[late], describe_errors=[])
    patient.waits = 0.2
    assert asyncio.run(client.wait_for_result(patient, patience_s=0.1)) == "done" and patient.asked == 2
    refused = FlakyServer(result_errors=[rpc_error(RPCStatusCode.PERMISSION_DENIED)], describe_errors=[])
    with pytest.raises(RPCError, match="PERMISSION_DENIED"):
        asyncio.run(client.wait_for_result(refused))
    assert refused.asked == 1
    silent = FlakyServer(result_errors=[], describe_errors=itertools.repeat(down))
    with pytest.raises(RPCError, match="UNAVAILABLE"):
        asyncio.run(client.wait_for_result(silent, patience_s=0.05))
    assert silent.asked == 0


class BusyWorkflow:
    """A workflow handle whose queries meet a busy workflow or a restarting server (seen in a suite run: a status
    query among eight runs polled at once answered RESOURCE_EXHAUSTED "Workflow is busy", and the test failed)."""

    def __init__(self, errors: Iterable) -> None:
        self.errors, self.asked = iter(errors), 0

    async def query(self, query: str, *args):
        self.asked += 1
        if (error := next(self.errors, None)) is not None:
            raise error
        return query, args


def test_a_query_outlasts_a_busy_workflow_and_a_restarting_server(monkeypatch):
    from temporalio.service import RPCError, RPCStatusCode

    from orchestration import client

    monkeypatch.setattr(client, "wait_exponential", lambda **_: lambda _: 0.0)
    busy, down = rpc_error(RPCStatusCode.RESOURCE_EXHAUSTED), rpc_error(RPCStatusCode.UNAVAILABLE)
    handle = BusyWorkflow([busy, down, busy])
    assert asyncio.run(client.patient_query(handle, "status", 7)) == ("status", (7,)) and handle.asked == 4
    # a query that timed out (no worker may be there to answer it) or names no workflow is not asked again
    for status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.NOT_FOUND):
        handle = BusyWorkflow([rpc_error(status)])
        with pytest.raises(RPCError, match=status.name):
            asyncio.run(client.patient_query(handle, "status"))
        assert handle.asked == 1
    # busy for longer than the patience: the last answer is what the caller gets
    handle = BusyWorkflow(itertools.repeat(busy))
    with pytest.raises(RPCError, match="RESOURCE_EXHAUSTED"):
        asyncio.run(client.patient_query(handle, "status", patience_s=0.05))
    assert handle.asked > 1
