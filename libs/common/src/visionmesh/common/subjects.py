"""JetStream streams and subjects shared by the gateway and the workers."""

from __future__ import annotations

from visionmesh.api.common.v1 import job_pb2

JOBS_STREAM = "JOBS"
JOB_EVENTS_STREAM = "JOB_EVENTS"
JOB_CONTROL_STREAM = "JOB_CONTROL"

_KIND_TOKENS = {
    job_pb2.JOB_KIND_TRAINING: "training",
    job_pb2.JOB_KIND_EXPORT: "export",
    job_pb2.JOB_KIND_BATCH_INFERENCE: "batch_inference",
    job_pb2.JOB_KIND_EMBEDDING: "embedding",
}


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
