"""Prometheus metrics of model serving, per deployment, on the service's registry.

Queue and compute time are separate histograms: a slow Predict is either waiting for a
batch slot (raise replicas or max_batch_size) or computing (a bigger device), and the two
call for different fixes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Self

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["DeploymentMetrics", "ServingMetrics"]

# 0.5 ms to 1 min: a tiny CPU model's batch and a large image batch on a slow device both land.
_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True, slots=True)
class ServingMetrics:
    requests: Counter
    """Inference requests (one caller's infer call), by deployment."""
    failures: Counter
    """Requests that ended in an error, by deployment."""
    queue_seconds: Histogram
    """Time a request waited in the dynamic batching queue before its model call started."""
    compute_seconds: Histogram
    """Time of the model call that served a request."""
    batch_size: Histogram
    """Rows (images) per model execution, after dynamic batching."""

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        labels = ("deployment",)
        return cls(
            requests=Counter(
                "visionmesh_inference_requests",
                "Inference requests, by deployment.",
                labels,
                registry=registry,
            ),
            failures=Counter(
                "visionmesh_inference_failures",
                "Inference requests that failed, by deployment.",
                labels,
                registry=registry,
            ),
            queue_seconds=Histogram(
                "visionmesh_inference_queue_seconds",
                "Time a request waited in the dynamic batching queue.",
                labels,
                registry=registry,
                buckets=_SECONDS_BUCKETS,
            ),
            compute_seconds=Histogram(
                "visionmesh_inference_compute_seconds",
                "Time of the model execution that served a request.",
                labels,
                registry=registry,
                buckets=_SECONDS_BUCKETS,
            ),
            batch_size=Histogram(
                "visionmesh_inference_batch_size",
                "Rows per model execution after dynamic batching.",
                labels,
                registry=registry,
                buckets=_BATCH_BUCKETS,
            ),
        )

    def for_deployment(self, deployment: str) -> DeploymentMetrics:
        """The label children of one deployment, resolved once."""
        return DeploymentMetrics(
            requests=self.requests.labels(deployment),
            failures=self.failures.labels(deployment),
            queue_seconds=self.queue_seconds.labels(deployment),
            compute_seconds=self.compute_seconds.labels(deployment),
            batch_size=self.batch_size.labels(deployment),
        )

    def remove(self, deployment: str) -> None:
        """Drop a deployment's series (it was unloaded), so /metrics does not grow forever."""
        for family in (
            self.requests,
            self.failures,
            self.queue_seconds,
            self.compute_seconds,
            self.batch_size,
        ):
            with contextlib.suppress(KeyError):
                family.remove(deployment)


@dataclass(frozen=True, slots=True)
class DeploymentMetrics:
    requests: Counter
    failures: Counter
    queue_seconds: Histogram
    compute_seconds: Histogram
    batch_size: Histogram
