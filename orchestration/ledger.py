"""The checkpoint ledger's rules, shared by workflow and activity: one entry per step, newest wins."""

from __future__ import annotations

from collections.abc import Callable

from orchestration.types import CheckpointInfo, RunStatus
from ray_jobs import retention


def newest(*candidates: CheckpointInfo | None) -> CheckpointInfo | None:
    present = [c for c in candidates if c is not None]
    return max(present, key=lambda c: c.step) if present else None


def record(ledger: list[CheckpointInfo], info: CheckpointInfo) -> bool:
    """Insert in step order; a signal delivered twice (activity retry, replay) changes nothing. True if new."""
    if any(c.step == info.step for c in ledger):
        return False
    ledger.append(info)
    ledger.sort(key=lambda c: c.step)
    return True


def mark_deleted(ledger: list[CheckpointInfo], steps: list[int]) -> None:
    """keep_last removed these from storage: the ledger keeps the entries (their metrics are history) but says so."""
    gone = set(steps)
    for i, c in enumerate(ledger):
        if c.step in gone and not c.deleted:
            ledger[i] = c.model_copy(update={"deleted": True})


def present(status: RunStatus, exists: Callable[[str], bool]) -> list[CheckpointInfo]:
    """The ledger's entries still in storage (`exists`: `ray_jobs.storage.exists`; it does I/O, so call this off
    the event loop)."""
    return [c for c in status.checkpoints if not c.deleted and exists(c.uri)]


def choose(status: RunStatus, present: list[CheckpointInfo], step: int | None, best: bool) -> CheckpointInfo:
    """The checkpoint at `step`, else the run's best (`best_metric`; the newest if the run names none), else its
    newest, among those still in storage (`present`). ValueError: one line that says why, and what is there."""
    run = status.run_id
    if not present:
        raise ValueError(f"run {run!r} has no checkpoint left in storage (all were deleted)")
    if step is None and best:
        # of those still there: a job prunes a best it has just beaten a poll before the ledger hears of it
        top = retention.best(present, status.best_metric, status.best_mode)
        if top is None and status.best_metric is not None:
            raise ValueError(f"run {run!r} has no checkpoint that reported {status.best_metric!r} yet")
        step = (top or present[-1]).step
    if step is None:
        return present[-1]
    chosen = next((c for c in present if c.step == step), None)
    if chosen is not None:
        return chosen
    if any(c.step == step for c in status.checkpoints):
        why = "was deleted (keep_last, or a sweep's clean-up)"
    elif status.earlier_deleted_checkpoints:  # continue-as-new dropped deleted entries: both are possible
        why = "is not in the ledger (deleted earlier by keep_last, or never committed)"
    else:
        why = "was never committed"
    raise ValueError(f"run {run!r}: the checkpoint at step {step} {why}; available steps: {[c.step for c in present]}")
