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

# Events of one attempt can arrive in any order (a nak'd event comes back after later
# ones), so the machine must converge whatever the order: an outcome is accepted from every
# non-terminal state, a terminal state is final, and nothing moves a job backwards.
_ALLOWED: dict[int, frozenset[int]] = {
    # A worker may report RUNNING, or even its outcome, before the relay's QUEUED lands
    # (the publish ack and the worker race), and may fail a job before running it.
    PENDING: frozenset({QUEUED, RUNNING, CANCELLING}) | TERMINAL,
    # QUEUED -> SUCCEEDED: the outcome arrived before the attempt's RUNNING.
    QUEUED: frozenset({RUNNING, CANCELLING}) | TERMINAL,
    # RUNNING -> RUNNING is a redelivery to a new worker after a crash.
    RUNNING: frozenset({RUNNING, CANCELLING}) | TERMINAL,
    # A worker that finishes before it sees the cancel still reports its real outcome.
    CANCELLING: TERMINAL,
}


def can_transition(current: int, new: int) -> bool:
    return new in _ALLOWED.get(current, frozenset())


def name(state: int) -> str:
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")
