"""The one failure type that must never be retried: the input itself is wrong."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

INVALID_INPUT = "InvalidInput"


def invalid(message: str) -> ApplicationError:
    """Bad config or data: a retry would fail the same way, so Temporal must not retry it."""
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)
