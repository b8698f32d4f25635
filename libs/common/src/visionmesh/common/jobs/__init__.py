"""The job runtime every worker service runs on: a worker service is a handler plus a spec."""

from visionmesh.common.jobs._failures import (
    PermanentJobError,
    RetryClass,
    StaleAttemptError,
    TransientJobError,
    backoff_seconds,
    classify,
    is_out_of_memory,
)
from visionmesh.common.jobs._ledger import (
    AttemptLedger,
    AttemptRecord,
    AttemptState,
    Claim,
    ClaimVerdict,
)
from visionmesh.common.jobs._metrics import JobMetrics
from visionmesh.common.jobs._reporter import EventsUndeliverable, JobReporter
from visionmesh.common.jobs._service import (
    WorkerServiceSettings,
    serve_with_job_workers,
    serve_worker_service,
    serve_workers,
    worker_spec,
)
from visionmesh.common.jobs._worker import (
    JobContext,
    JobHandler,
    JobOutcome,
    JobWorker,
    JobWorkerSpec,
)

__all__ = [
    "AttemptLedger",
    "AttemptRecord",
    "AttemptState",
    "Claim",
    "ClaimVerdict",
    "EventsUndeliverable",
    "JobContext",
    "JobHandler",
    "JobMetrics",
    "JobOutcome",
    "JobReporter",
    "JobWorker",
    "JobWorkerSpec",
    "PermanentJobError",
    "RetryClass",
    "StaleAttemptError",
    "TransientJobError",
    "WorkerServiceSettings",
    "backoff_seconds",
    "classify",
    "is_out_of_memory",
    "serve_with_job_workers",
    "serve_worker_service",
    "serve_workers",
    "worker_spec",
]
