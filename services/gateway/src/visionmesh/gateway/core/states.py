"""The job state machine: which transitions are legal."""

from __future__ import annotations

from visionmesh.api.common.v1 import job_pb2

PENDING = job_pb2.JOB_STATE_PENDING
QUEUED = job_pb2.JOB_STATE_QUEUED
RUNNING = job_pb2.JOB_STATE_RUNNING
SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
FAILED = job_pb2.JOB_STATE_FAILED
CANCELLING = job_pb2.JOB_STATE_CANCELLING
CANCELLED = job_pb2.JOB_STATE_CANCELLED

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

_ALLOWED: dict[int, frozenset[int]] = {
    PENDING: frozenset({QUEUED, RUNNING, CANCELLED, CANCELLING, FAILED}),
    # A worker may report RUNNING before the relay's QUEUED lands (the publish ack and
    # the worker race), and may fail a job before running it (too many deliveries).
    QUEUED: frozenset({RUNNING, CANCELLED, CANCELLING, FAILED}),
    # RUNNING -> RUNNING is a redelivery to a new worker after a crash.
    RUNNING: frozenset({RUNNING, SUCCEEDED, FAILED, CANCELLING}),
    # A worker that finishes before it sees the cancel still reports its real outcome.
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
}


def can_transition(current: int, new: int) -> bool:
    return new in _ALLOWED.get(current, frozenset())


def name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")
