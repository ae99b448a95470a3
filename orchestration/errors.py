"""The two kinds of failure ttrain names: input that must never be retried, and what a user is told in one line."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

INVALID_INPUT = "InvalidInput"


def invalid(message: str) -> ApplicationError:
    """Bad config or data: a retry would fail the same way, so Temporal must not retry it."""
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)


class CliError(RuntimeError):
    """A refusal or failure the CLI prints as one line (`ttrain: error: ...`) with a non-zero exit: no traceback."""
