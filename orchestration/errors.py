"""The two kinds of failure ttrain names: input that must never be retried, and what a user is told in one line."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

INVALID_INPUT = "InvalidInput"


def invalid(message: str) -> ApplicationError:
    """Bad config or data: a retry would fail the same way, so Temporal must not retry it."""
    return ApplicationError(message, type=INVALID_INPUT, non_retryable=True)


def root_message(exc: BaseException) -> str:
    """The innermost failure's own words (`loss became NaN at step 6`): what a person needs, not the chain of
    wrappers (child workflow, activity) around it, nor the error type Temporal prefixes to it."""
    while (inner := getattr(exc, "cause", None) or exc.__cause__) is not None:
        exc = inner
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


class CliError(RuntimeError):
    """A refusal or failure the CLI prints as one line (`ttrain: error: ...`) with a non-zero exit: no traceback."""
