"""Publishes one job attempt's events in order, with idempotent message ids."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import job_events_subject


class JobReporter:
    """Events of one attempt: (attempt, worker_sequence) orders and dedupes them.

    Events from the training thread go through a queue drained by one task, so they are
    published in the order they happened without blocking training on the network.
    """

    def __init__(
        self, *, bus: EventBus, job_id: str, tenant_id: str, attempt: int, worker_id: str
    ) -> None:
        self._bus = bus
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.attempt = attempt
        self.worker_id = worker_id
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Future[None]] = set()

    def emit_threadsafe(self, loop: asyncio.AbstractEventLoop, **payload: Any) -> None:
        """Queues an event from another thread; `flush()` waits for everything queued."""
        future = asyncio.run_coroutine_threadsafe(self.emit(**payload), loop)
        wrapped = asyncio.wrap_future(future, loop=loop)
        loop.call_soon_threadsafe(self._track, wrapped)

    def _track(self, future: asyncio.Future[None]) -> None:
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def flush(self) -> None:
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def emit(self, **payload: Any) -> None:
        # The lock keeps publishes in sequence order even when callers overlap.
        async with self._lock:
            await self._publish(**payload)

    async def _publish(self, **payload: Any) -> None:
        self._sequence += 1
        now = Timestamp()
        now.GetCurrentTime()
        event = events_pb2.JobEvent(
            job_id=self.job_id,
            tenant_id=self.tenant_id,
            attempt=self.attempt,
            worker_sequence=self._sequence,
            worker_id=self.worker_id,
            time=now,
            **payload,  # type: ignore[arg-type]
        )
        await self._bus.publish(
            job_events_subject(self.job_id),
            event,
            msg_id=f"{self.job_id}/{self.attempt}/{self._sequence}",
        )

    async def state(
        self,
        state: int,
        *,
        reason: str = "",
        message: str = "",
        metrics: dict[str, float] | None = None,
    ) -> None:
        error = job_pb2.JobError(reason=reason, message=message) if reason else None
        await self.emit(
            state_changed=events_pb2.JobStateChanged(
                state=state,  # type: ignore[arg-type]
                error=error,
                metrics=metrics or {},
            )
        )

    async def progress(self, progress: job_pb2.JobProgress) -> None:
        await self.emit(progress=progress)

    async def metrics(self, points: list[metric_pb2.MetricPoint]) -> None:
        await self.emit(metrics=events_pb2.JobMetricsReported(points=points))

    async def artifact(self, ref: artifact_pb2.ArtifactRef) -> None:
        await self.emit(artifact=events_pb2.JobArtifactUploaded(artifact=ref))

    async def model_trained(self, trained: events_pb2.ModelTrained) -> None:
        await self.emit(model_trained=trained)
