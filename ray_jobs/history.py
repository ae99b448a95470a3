"""A run's metric history: every value its jobs reported, by step, kept in the run's storage.

Each Ray job writes its own rows (`<run>/<job>/metrics/<ns>-<pid>.jsonl`, one file per flush, never rewritten, so
it works on object stores that cannot append), each with the step the job resumed from. Reading follows the run's
lineage: jobs in the order they trained, each one replacing what earlier jobs wrote after its resume step. So a run
resumed from a checkpoint has each step once, with the values its surviving weights came from, and a run id started
over (`--replace`, from step 0) shows none of the old run's curve.
"""

from __future__ import annotations

import json
import logging
import os
import time

from pydantic import BaseModel, ConfigDict

from ray_jobs import storage

HISTORY_DIR = "metrics"
log = logging.getLogger("ttrain.history")
BOARD_DIR = "tensorboard"
BOARD_FLUSH_S = 10.0  # between checkpoints, what TensorBoard shows is at most this far behind


class MetricRow(BaseModel):
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")

    step: int
    time: float
    values: dict[str, float]
    from_step: int = 0  # where the job that wrote it resumed: what it wrote replaces earlier jobs' rows after this


def numeric(values: dict) -> dict[str, float]:
    """The numbers among reported values (what a history, a ledger entry or MLflow can hold; booleans are not)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class HistoryWriter:
    """Rows of one job, buffered and written as a new file at each `flush` (rank 0, or Ray Train's controller).
    On local or shared-filesystem storage the same values go to a TensorBoard event file in the run's `tensorboard/`
    folder (`tensorboard --logdir <storage>/runs` shows every run and sweep trial), one file per job process. It is
    written in this thread (tensorboardX's `EventsWriter`, not `SummaryWriter`, whose `flush()` leaves the events its
    writer thread has not dequeued yet): what a flush wrote is on disk even if the job is killed a moment later. A
    job that resumed from step N starts its file with TensorBoard's purge of steps after N (what `SummaryWriter`'s
    `purge_step` writes), so the curve has no doubled stretch."""

    def __init__(self, job_uri: str, resume_step: int = 0) -> None:
        self.dir = storage.join(job_uri, HISTORY_DIR)
        self.rows: list[MetricRow] = []
        self.board_dir = None if "://" in job_uri else os.path.join(os.path.dirname(job_uri.rstrip("/")), BOARD_DIR)
        self.resume_step = resume_step
        self._board = None
        self._board_flushed = time.time()

    def add(self, step: int, values: dict) -> None:
        numbers = numeric(values)
        numbers.pop("step", None)
        if numbers:
            self.rows.append(MetricRow(step=step, time=time.time(), values=numbers, from_step=self.resume_step))
            self._to_board(step, numbers)

    def _to_board(self, step: int, numbers: dict[str, float]) -> None:
        """Best effort, like the history: a full disk ends TensorBoard's copy, never the training."""
        if self.board_dir is None:
            return
        try:
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            from tensorboardX.summary import scalar

            if self._board is None:
                from tensorboardX.event_file_writer import EventsWriter

                os.makedirs(self.board_dir, exist_ok=True)
                # the suffix keeps two writers of one second apart, in order
                suffix = f".{time.time_ns():020d}-{os.getpid()}"
                self._board = EventsWriter(os.path.join(self.board_dir, "events"), suffix)
                start = SessionLog(status=SessionLog.START)
                self._board.write_event(Event(wall_time=time.time(), step=self.resume_step + 1, session_log=start))
            now = time.time()
            for name, value in numbers.items():
                self._board.write_event(Event(wall_time=now, step=step, summary=scalar(name, value)))
            if now - self._board_flushed > BOARD_FLUSH_S:  # TensorBoard's live view between checkpoints
                self._board.flush()
                self._board_flushed = now
        except Exception as exc:
            log.warning("TensorBoard events not written (%s); the history goes on without them", exc)
            self.board_dir = None

    def flush(self) -> None:
        """Best effort: a history write that fails never fails the training (the checkpoint is what matters)."""
        if self._board is not None and self.board_dir is not None:
            try:
                self._board.flush()
            except Exception as exc:
                log.warning("TensorBoard events not written (%s)", exc)
                self.board_dir = None
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
    """The run's history in step order: one row per step, along the run's lineage (see the module)."""
    jobs = [rows for job in storage.list_names(run_uri) if (rows := _job_rows(storage.join(run_uri, job, HISTORY_DIR)))]
    by_step: dict[int, MetricRow] = {}
    for rows in sorted(jobs, key=lambda rows: rows[0].time):  # the order the jobs trained in
        resumed = rows[0].from_step
        by_step = {step: row for step, row in by_step.items() if step <= resumed}
        mine: dict[int, MetricRow] = {}
        for row in rows:  # within a job, a later write of a step adds to (or replaces) its values
            merged = mine.setdefault(row.step, MetricRow(step=row.step, time=row.time, values={}, from_step=resumed))
            merged.values.update(row.values)
            merged.time = max(merged.time, row.time)
        by_step.update(mine)
    return [by_step[step] for step in sorted(by_step)]


def _job_rows(directory: str) -> list[MetricRow]:
    """One job's rows in the order written; a file cut short by a crash keeps its whole lines."""
    rows = []
    for name in storage.list_names(directory):  # named by write time
        for line in storage.read_bytes(storage.join(directory, name)).decode().splitlines():
            try:
                rows.append(MetricRow.model_validate(json.loads(line)))
            except ValueError:
                continue
    return sorted(rows, key=lambda r: r.time)
