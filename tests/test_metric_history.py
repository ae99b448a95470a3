"""A run's metric history (`ray_jobs.history`) and `ttrain metrics`, on files: no servers."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from ray_jobs import storage
from ray_jobs.history import HistoryWriter, read_history
from tests.helpers import assert_one_line_error, tensorboard_scalars


def write(job_uri: str, rows: list[tuple[int, dict]], at: float, monkeypatch, resumed: int = 0) -> None:
    writer = HistoryWriter(job_uri, resumed)
    for i, (step, values) in enumerate(rows):
        monkeypatch.setattr("time.time", lambda t=at + i: t)
        writer.add(step, values)
    writer.flush()


def test_a_resumed_runs_history_follows_its_lineage_each_step_once(tmp_path, monkeypatch):
    """Job A trained to step 30 and died after its checkpoint at 20; job B resumed from 20 and trained 21..40: the
    steps A trained after 20 were trained again, and B's values are the run's."""
    run = str(tmp_path / "runs" / "r")
    write(
        storage.join(run, "job-a"), [(10, {"loss": 1.0}), (20, {"loss": 0.8, "eval_accuracy": 0.6})], 100, monkeypatch
    )
    write(storage.join(run, "job-a"), [(30, {"loss": 0.7, "step": 30}), (35, {"loss": 0.69})], 110, monkeypatch)
    write(
        storage.join(run, "job-b"),
        [(30, {"loss": 0.65}), (40, {"loss": 0.5, "eval_accuracy": 0.7})],
        200,
        monkeypatch,
        20,
    )
    (written,) = storage.list_names(storage.join(run, "job-b", "metrics"))
    with open(os.path.join(run, "job-b", "metrics", written), "a") as f:
        f.write('{"step": 50, "time": 300, "val')  # a write cut short by a crash
    rows = read_history(run)
    assert [r.step for r in rows] == [10, 20, 30, 40]  # A's 35 is gone: B trained on from 20, not from A's 35
    assert [r.values for r in rows] == [
        {"loss": 1.0},
        {"loss": 0.8, "eval_accuracy": 0.6},
        {"loss": 0.65},  # job B's; `step` is the row's key, not a metric
        {"loss": 0.5, "eval_accuracy": 0.7},
    ]
    # the run id started over (`--replace`): a job from step 0 leaves none of the old curve
    write(storage.join(run, "job-c"), [(10, {"loss": 2.0})], 300, monkeypatch)
    assert [(r.step, r.values) for r in read_history(run)] == [(10, {"loss": 2.0})]


def test_a_flush_without_rows_writes_nothing_and_non_numbers_are_left_out(tmp_path):
    writer = HistoryWriter(str(tmp_path / "job"))
    writer.flush()
    writer.add(1, {"note": "text", "ok": True, "loss": 2})
    writer.flush()
    assert len(storage.list_names(str(tmp_path / "job" / "metrics"))) == 1
    assert [r.values for r in read_history(str(tmp_path))] == [{"loss": 2.0}]


def ttrain_metrics(storage_dir, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TTRAIN_STORAGE": str(storage_dir)}
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "metrics", *args], capture_output=True, text=True, env=env
    )


KILLED_AFTER_A_FLUSH = """
import os, sys
from ray_jobs.history import HistoryWriter
writer = HistoryWriter(sys.argv[1])
for step in (10, 20, 30):
    writer.add(step, {"loss": 1.0 / step})
    writer.flush()  # what the job does at each checkpoint
os._exit(0)  # killed right after: nothing closes the writer
"""


def test_tensorboard_keeps_every_flushed_step_of_a_job_killed_right_after(tmp_path):
    """A Train worker SIGKILLed just after a checkpoint: the steps flushed with it are in TensorBoard, as in the
    history (tensorboardX's own flush() leaves events its writer thread has not taken yet)."""
    job = str(tmp_path / "runs" / "r" / "job-a")
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER_A_FLUSH, job], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [r.step for r in read_history(str(tmp_path / "runs" / "r"))] == [10, 20, 30]
    board = tensorboard_scalars(tmp_path / "runs" / "r" / "tensorboard")
    assert [step for step, _ in board["loss"]] == [10, 20, 30]


def test_a_resumed_jobs_later_event_files_keep_its_own_steps(tmp_path):
    """Job A logged 10..30; job B resumed from 20 and flushed twice: TensorBoard shows 10, 20 from A and B's 30, 40 —
    B's second file does not purge B's first."""
    run_dir = tmp_path / "runs" / "r"
    a = HistoryWriter(str(run_dir / "job-a"))
    for step in (10, 20, 30):
        a.add(step, {"loss": 1.0})
    a.flush()
    b = HistoryWriter(str(run_dir / "job-b"), resume_step=20)
    for step in (30, 40):
        b.add(step, {"loss": 2.0})
        b.flush()
    board = tensorboard_scalars(run_dir / "tensorboard")
    assert board["loss"] == [(10, 1.0), (20, 1.0), (30, 2.0), (40, 2.0)]


def test_ttrain_metrics_prints_a_table_csv_json_and_draws_the_curves(tmp_path, monkeypatch):
    run = str(tmp_path / "runs" / "r1")
    write(
        storage.join(run, "job"),
        [(s, {"loss": 1 / s, **({"eval_accuracy": 0.5} if s == 4 else {})}) for s in (1, 2, 4)],
        0,
        monkeypatch,
    )
    table = ttrain_metrics(tmp_path, "r1")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split("\n")[0].split() == ["step", "eval_accuracy", "loss"]
    assert len(table.stdout.strip().split("\n")) == 4
    rows = list(csv.DictReader(io.StringIO(ttrain_metrics(tmp_path, "r1", "--csv").stdout)))
    assert [(r["step"], r["eval_accuracy"], float(r["loss"])) for r in rows] == [
        ("1", "", 1.0),
        ("2", "", 0.5),
        ("4", "0.5", 0.25),
    ]
    data = json.loads(ttrain_metrics(tmp_path, "r1", "--json", "--plot", str(tmp_path / "c.png")).stdout)
    assert [d["step"] for d in data] == [1, 2, 4] and data[2]["eval_accuracy"] == 0.5
    assert (tmp_path / "c.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("run_id", "code", "needle"), [("nope", 1, "run 'nope' has no metric history"), ("../x", 2, "not allowed")]
)
def test_ttrain_metrics_errors_are_one_line(tmp_path, run_id, code, needle):
    assert_one_line_error(ttrain_metrics(tmp_path, run_id), code, needle)
