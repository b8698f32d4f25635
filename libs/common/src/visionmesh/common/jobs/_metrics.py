"""Prometheus metrics of the job runtime, on the service's registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class JobMetrics:
    attempts: Counter
    """Attempts by how they ended: succeeded, failed, cancelled, handed_back, retrying, ..."""
    attempt_seconds: Histogram
    events_published: Counter
    event_publish_retries: Counter
    events_undelivered: Counter
    """Events given up on after the delivery deadline: each one is a job that failed loudly."""
    loop_errors: Counter
    """Errors the pull loop survived (fetch failures, runtime bugs around a handler)."""
    running: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Self:
        kind = ("kind",)
        return cls(
            attempts=Counter(
                "visionmesh_job_attempts",
                "Job attempts by outcome.",
                (*kind, "outcome"),
                registry=registry,
            ),
            attempt_seconds=Histogram(
                "visionmesh_job_attempt_seconds",
                "Wall time of one job attempt.",
                kind,
                registry=registry,
                buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
            ),
            events_published=Counter(
                "visionmesh_job_events_published", "Job events published.", kind, registry=registry
            ),
            event_publish_retries=Counter(
                "visionmesh_job_event_publish_retries",
                "Job event publishes retried after a failure.",
                kind,
                registry=registry,
            ),
            events_undelivered=Counter(
                "visionmesh_job_events_undelivered",
                "Job events that could not be delivered before the deadline.",
                kind,
                registry=registry,
            ),
            loop_errors=Counter(
                "visionmesh_job_loop_errors",
                "Errors the job pull loop caught and survived.",
                kind,
                registry=registry,
            ),
            running=Gauge(
                "visionmesh_jobs_running", "Job attempts running now.", kind, registry=registry
            ),
        )
