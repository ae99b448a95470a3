"""A run's metric history: every value its jobs reported, by step, kept in the run's storage.

Each Ray job writes its own rows (`<run>/<job>/metrics/<ns>-<pid>.jsonl`, one file per flush, never rewritten, so
it works on object stores that cannot append). A run resumed from a checkpoint trains some steps again in a new job;
reading keeps, for each step and metric, the value written last, so the history has each step once, and it is the
one the run's surviving weights came from.
"""

from __future__ import annotations

import json
import os
import time

from pydantic import BaseModel, ConfigDict

from ray_jobs import storage

HISTORY_DIR = "metrics"
BOARD_DIR = "tensorboard"


class MetricRow(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")

    step: int
    time: float
    values: dict[str, float]


class HistoryWriter:
    """Rows of one job, buffered and written as a new file at each `flush` (rank 0, or Ray Train's controller).
    On local or shared-filesystem storage the same values go to TensorBoard event files in the run's `tensorboard/`
    folder (`tensorboard --logdir <storage>/runs` shows every run and sweep trial). A job that resumed from step N
    starts its event file by purging steps after N, the way TensorBoard expects a restarted writer to."""

    def __init__(self, job_uri: str, resume_step: int = 0) -> None:
        self.dir = storage.join(job_uri, HISTORY_DIR)
        self.rows: list[MetricRow] = []
        self.board_dir = None if "://" in job_uri else os.path.join(os.path.dirname(job_uri.rstrip("/")), BOARD_DIR)
        self.resume_step = resume_step
        self._board = None

    def add(self, step: int, values: dict) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        numbers.pop("step", None)
        if numbers:
            self.rows.append(MetricRow(step=step, time=time.time(), values=numbers))
            self._to_board(step, numbers)

    def _to_board(self, step: int, numbers: dict[str, float]) -> None:
        if self.board_dir is None:
            return
        if self._board is None:
            from tensorboardX import SummaryWriter

            self._board = SummaryWriter(self.board_dir, purge_step=self.resume_step + 1, flush_secs=10)
        for name, value in numbers.items():
            self._board.add_scalar(name, value, step)

    def flush(self) -> None:
        """Best effort: a history write that fails never fails the training (the checkpoint is what matters)."""
        if self._board is not None:
            self._board.flush()
        if not self.rows:
            return
        text = "".join(row.model_dump_json() + "\n" for row in self.rows)
        name = f"{time.time_ns():020d}-{os.getpid()}.jsonl"  # a restarted process never overwrites an earlier file
        try:
            storage.write_bytes(storage.join(self.dir, name), text.encode())
        except OSError:
            return
        self.rows = []


def read_history(run_uri: str) -> list[MetricRow]:
    """The run's history in step order: one row per step, each metric's value the one written last."""
    latest: dict[tuple[int, str], tuple[float, float]] = {}  # (step, metric) → (time written, value)
    for job in storage.list_names(run_uri):
        directory = storage.join(run_uri, job, HISTORY_DIR)
        for name in sorted(storage.list_names(directory)):
            for line in storage.read_bytes(storage.join(directory, name)).decode().splitlines():
                try:
                    row = MetricRow.model_validate(json.loads(line))
                except ValueError:
                    continue  # a file cut short by a crash mid-write: its whole rows still count
                for metric, value in row.values.items():
                    key = (row.step, metric)
                    if key not in latest or latest[key][0] <= row.time:
                        latest[key] = (row.time, value)
    by_step: dict[int, MetricRow] = {}
    for (step, metric), (written, value) in sorted(latest.items()):
        row = by_step.setdefault(step, MetricRow(step=step, time=written, values={}))
        row.values[metric] = value
        row.time = max(row.time, written)
    return list(by_step.values())
