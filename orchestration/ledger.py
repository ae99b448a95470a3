"""The checkpoint ledger's rules, shared by workflow and activity: one entry per step, newest wins."""

from __future__ import annotations

from orchestration.types import CheckpointInfo


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
