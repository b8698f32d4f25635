"""Retry classes: what the runtime does when a handler raises (Temporal's non-retryable types)."""

from __future__ import annotations

import asyncio
import enum

import nats.errors
from visionmesh.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)


class RetryClass(enum.Enum):
    TRANSIENT = "transient"
    """The world was briefly unavailable (S3, NATS, a timeout): retry the job with backoff."""
    PERMANENT = "permanent"
    """Running it again gives the same answer (bad data, invalid spec): FAILED at once."""


class PermanentJobError(Exception):
    """Fail the job now with `reason`; a handler raises it for what no retry can fix."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TransientJobError(Exception):
    """Retry the job later; a handler raises it for trouble it knows will pass."""


class StaleAttemptError(Exception):
    """A newer attempt of the same job has started: this one must stop writing."""


# Errors whose retry gives the same result. Anything a handler raises that is not in
# either list is a bug in the handler or its inputs: retrying burns a GPU for the same
# traceback, so it is permanent too, reported with its type and message.
_TRANSIENT: tuple[type[BaseException], ...] = (
    TransientJobError,
    Unavailable,
    DeadlineExceeded,
    TimeoutError,
    asyncio.TimeoutError,
    ConnectionError,
    nats.errors.Error,
)
_PERMANENT_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidArgument, "INVALID_SPEC"),
    (FailedPrecondition, "FAILED_PRECONDITION"),
    (NotFound, "NOT_FOUND"),
    (PermissionDenied, "PERMISSION_DENIED"),
)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's (CUDA) OutOfMemoryError, recognised by name: this library never imports torch."""
    return any(
        cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch")
        for cls in type(exc).__mro__
    )


def classify(exc: BaseException) -> tuple[RetryClass, str, str]:
    """(retry class, reason, message) for an exception a handler raised."""
    message = f"{type(exc).__name__}: {exc}"[:2000]
    if isinstance(exc, PermanentJobError):
        return RetryClass.PERMANENT, exc.reason, exc.message[:2000]
    if is_out_of_memory(exc):
        # Handlers that know their batch and image size raise PermanentJobError saying
        # what to lower; this is the fallback for those that don't.
        return RetryClass.PERMANENT, "OUT_OF_MEMORY", message
    if isinstance(exc, _TRANSIENT):
        return RetryClass.TRANSIENT, "TRANSIENT_ERROR", message
    for cls, reason in _PERMANENT_REASONS:
        if isinstance(exc, cls):
            return RetryClass.PERMANENT, reason, str(exc)[:2000]
    return RetryClass.PERMANENT, "HANDLER_ERROR", message


def backoff_seconds(retry: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Delay before transient retry number `retry` (1-based): 1, 2, 4, ... capped."""
    return float(min(cap, base * 2 ** max(retry - 1, 0)))
