"""Publishes one attempt's events in order through a bounded queue, never losing one silently."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.events import EventBus
from visionmesh.common.jobs._metrics import JobMetrics
from visionmesh.common.logging import get_logger
from visionmesh.common.subjects import job_events_subject

_log = get_logger(__name__)


class EventsUndeliverable(Exception):
    """An event could not be published before the delivery deadline; the attempt must stop."""


class JobReporter:
    """Events of one attempt, keyed `(job, attempt, sequence)` so retries are deduplicated.

    `emit` puts an event on a bounded queue and returns; one task publishes the queue in
    order, retrying each event with its idempotency key (the JetStream msg id) until
    `delivery_timeout`. A full queue makes emitters wait (backpressure), never drops.
    An event still undelivered at the deadline fails the reporter: it is logged and
    counted, and every later `emit`/`flush` raises `EventsUndeliverable`, so the job stops
    instead of running on with a gap the gateway would never see filled.
    """

    def __init__(
        self,
        *,
        bus: EventBus,
        job_id: str,
        tenant_id: str,
        attempt: int,
        worker_id: str,
        kind: str = "job",
        metrics: JobMetrics | None = None,
        capacity: int = 1024,
        delivery_timeout: float = 120.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self._bus = bus
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.attempt = attempt
        self.worker_id = worker_id
        self._kind = kind
        self._metrics = metrics
        self._delivery_timeout = delivery_timeout
        self._publish_timeout = publish_timeout
        self._queue: asyncio.Queue[tuple[int, events_pb2.JobEvent]] = asyncio.Queue(capacity)
        self._sequence = 0
        self._failure: EventsUndeliverable | None = None
        self._drain: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobReporter:
        self._drain = asyncio.create_task(self._publish_all(), name=f"reporter-{self.job_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(EventsUndeliverable):
            await self.flush()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._drain is not None and self._drain.done() and not self._drain.cancelled():
            exc = self._drain.exception()
            raise EventsUndeliverable(f"event publisher died: {exc!r}") from exc

    async def emit(self, **payload: Any) -> None:
        self._check()
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
            **payload,
        )
        await self._queue.put((self._sequence, event))

    def emit_threadsafe(self, loop: asyncio.AbstractEventLoop, **payload: Any) -> None:
        """From a handler's thread: blocks only while the queue is full; raises if failed."""
        asyncio.run_coroutine_threadsafe(self.emit(**payload), loop).result()

    async def flush(self) -> None:
        """Waits until every queued event is published; raises if one never will be."""
        self._check()
        if self._drain is None:
            raise RuntimeError("JobReporter used outside `async with`")
        join = asyncio.create_task(self._queue.join())
        try:
            await asyncio.wait({join, self._drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            join.cancel()
        self._check()

    async def _publish_all(self) -> None:
        while True:
            sequence, event = await self._queue.get()
            try:
                if self._failure is None:
                    await self._publish(sequence, event)
            except EventsUndeliverable as exc:
                self._failure = exc
            finally:
                self._queue.task_done()

    async def _publish(self, sequence: int, event: events_pb2.JobEvent) -> None:
        msg_id = f"{self.job_id}/{self.attempt}/{sequence}"
        deadline = time.monotonic() + self._delivery_timeout
        delay = 0.2
        while True:
            try:
                await self._bus.publish(
                    job_events_subject(self.job_id),
                    event,
                    msg_id=msg_id,
                    timeout=self._publish_timeout,
                )
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    if self._metrics is not None:
                        self._metrics.events_undelivered.labels(self._kind).inc()
                    _log.error(
                        "job event undeliverable; the attempt stops",
                        job_id=self.job_id,
                        attempt=self.attempt,
                        sequence=sequence,
                        error=repr(exc),
                    )
                    raise EventsUndeliverable(
                        f"job event {msg_id} not delivered within "
                        f"{self._delivery_timeout:.0f}s: {exc!r}"
                    ) from exc
                if self._metrics is not None:
                    self._metrics.event_publish_retries.labels(self._kind).inc()
                _log.warning("job event publish failed; retrying", msg_id=msg_id, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._metrics is not None:
                self._metrics.events_published.labels(self._kind).inc()
            return

    # --- typed helpers for the generic payloads -----------------------------------------

    async def state(
        self,
        state: int,
        *,
        reason: str = "",
        message: str = "",
        metrics: dict[str, float] | None = None,
    ) -> None:
        """A state change, flushed: when this returns, the gateway has it (or it raised)."""
        error = job_pb2.JobError(reason=reason, message=message) if reason else None
        await self.emit(
            state_changed=events_pb2.JobStateChanged(
                state=state,  # type: ignore[arg-type]
                error=error,
                metrics=metrics or {},
            )
        )
        await self.flush()

    async def progress(self, progress: job_pb2.JobProgress) -> None:
        await self.emit(progress=progress)

    async def metrics(self, points: list[metric_pb2.MetricPoint]) -> None:
        await self.emit(metrics=events_pb2.JobMetricsReported(points=points))

    async def artifact(self, ref: artifact_pb2.ArtifactRef) -> None:
        await self.emit(artifact=events_pb2.JobArtifactUploaded(artifact=ref))
