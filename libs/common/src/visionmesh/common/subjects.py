"""JetStream streams and subjects shared by the gateway and the workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionmesh.api.common.v1 import job_pb2

if TYPE_CHECKING:
    from visionmesh.common.events import EventBus

JOBS_STREAM = "JOBS"
JOB_EVENTS_STREAM = "JOB_EVENTS"
JOB_CONTROL_STREAM = "JOB_CONTROL"

_KIND_TOKENS: dict[int, str] = {
    job_pb2.JOB_KIND_TRAINING: "training",
    job_pb2.JOB_KIND_EXPORT: "export",
    job_pb2.JOB_KIND_BATCH_INFERENCE: "batch_inference",
    job_pb2.JOB_KIND_EMBEDDING: "embedding",
}


def job_kind_token(kind: int) -> str:
    """`training`, `export`, ...: the kind's name in subjects, consumers and metrics."""
    return _KIND_TOKENS[kind]


def job_request_subject(kind: int) -> str:
    """Work-queue subject for jobs of `kind` (one durable consumer per kind)."""
    return f"vm.jobs.request.{_KIND_TOKENS[kind]}"


def job_events_subject(job_id: str) -> str:
    return f"vm.jobs.events.{job_id}"


def job_control_subject(job_id: str) -> str:
    return f"vm.jobs.control.{job_id}"


JOB_REQUEST_SUBJECTS = "vm.jobs.request.>"
JOB_EVENTS_SUBJECTS = "vm.jobs.events.>"
JOB_CONTROL_SUBJECTS = "vm.jobs.control.>"


async def ensure_job_streams(bus: EventBus) -> None:
    """Creates the job streams (idempotent); the gateway and every worker call it at start."""
    day = 24 * 3600.0
    await bus.ensure_stream(JOBS_STREAM, [JOB_REQUEST_SUBJECTS], retention="workqueue")
    await bus.ensure_stream(JOB_EVENTS_STREAM, [JOB_EVENTS_SUBJECTS], max_age=30 * day)
    await bus.ensure_stream(JOB_CONTROL_STREAM, [JOB_CONTROL_SUBJECTS], max_age=7 * day)
