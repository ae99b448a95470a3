"""What a failed training attempt means for its run: try again now, back off, or give up.

A run on spot nodes may lose its job every few hours for weeks: a lifetime cap on attempts would kill it. So an
attempt that committed a new checkpoint costs nothing; only failures in a row without progress count, and after
`max_failures_without_progress` of them the run fails with the last error. Errors raised inside the training loop
are judged by what they say: the same error from the same checkpoint on two consecutive attempts will not go away
(a tensor-size bug at step N, an input the model cannot take), so the run fails with it at once.

Pure and deterministic: the training workflow calls it on each failure and carries `RetryState` across
continue-as-new.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.types import AttemptFailure, RetryState

MAX_BACKOFF_S = 60.0


@dataclass(frozen=True)
class Verdict:
    give_up: str | None  # the run's one-line failure, or None to retry
    backoff_s: float


def after_failure(state: RetryState, failure: AttemptFailure, start_step: int, limit: int) -> Verdict:
    """Update `state` with `failure` (the run started at `start_step`) and decide."""
    baseline = state.step_at_last_failure if state.step_at_last_failure is not None else start_step
    progressed = failure.checkpoint_step > baseline
    previous = state.last
    repeated = (
        failure.from_training_code
        and previous is not None
        and previous.from_training_code
        and (previous.kind, previous.message, previous.checkpoint_step)
        == (failure.kind, failure.message, failure.checkpoint_step)
    )
    state.failures_without_progress = 0 if progressed else state.failures_without_progress + 1
    state.step_at_last_failure = failure.checkpoint_step
    state.last = failure
    if repeated:
        return Verdict(
            f"{failure.message} (the same error twice from the checkpoint at step {failure.checkpoint_step}: "
            "it would fail again)",
            0.0,
        )
    if state.failures_without_progress >= limit:
        return Verdict(
            f"{state.failures_without_progress} attempts in a row made no progress past step "
            f"{failure.checkpoint_step}; the last: {failure.message}",
            0.0,
        )
    if progressed:
        return Verdict(None, 1.0)
    return Verdict(None, min(MAX_BACKOFF_S, 2.0**state.failures_without_progress))
