"""A handler on the real job runtime, for worker tests: NATS, the job streams, a JobWorker,
and every job event gathered in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobMetrics, JobWorker, JobWorkerSpec
from visionmesh.common.subjects import JOB_EVENTS_STREAM, ensure_job_streams

TERMINAL = (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_CANCELLED)

M = TypeVar("M", bound=Message)


class Events:
    """Every job event from the start of the stream, gathered in the background."""

    def __init__(self) -> None:
        self.by_job: dict[str, list[events_pb2.JobEvent]] = {}
        self._changed = asyncio.Event()

    async def collect(self, bus: EventBus) -> None:
        subscription = await bus.subscribe_ordered("vm.jobs.events.>", stream=JOB_EVENTS_STREAM)
        try:
            async for delivery in subscription:
                event = delivery.decode(events_pb2.JobEvent)
                self.by_job.setdefault(event.job_id, []).append(event)
                self._changed.set()
        finally:
            await subscription.close()

    def end(self, job_id: str) -> events_pb2.JobStateChanged | None:
        return next(
            (
                e.state_changed
                for e in self.by_job.get(job_id, [])
                if e.state_changed.state in TERMINAL
            ),
            None,
        )

    def result(self, job_id: str, into: M) -> M:
        """The job's one typed result (JobResultReported), unpacked into `into`."""
        reported = [e.result for e in self.by_job[job_id] if e.HasField("result")]
        assert len(reported) == 1, reported
        assert reported[0].result.Unpack(into)
        return into

    async def ended(self, *job_ids: str, within: float = 120) -> None:
        async with asyncio.timeout(within):
            while any(self.end(job_id) is None for job_id in job_ids):
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def job_bus(tmp: Path, *, name: str) -> AsyncIterator[tuple[EventBus, Events]]:
    """A NATS server with the job streams, a bus on it, and its events being gathered."""
    async with (
        NatsServer(store_dir=tmp / "nats", log_dir=tmp) as nats,
        EventBus(servers=nats.url, name=name) as bus,
    ):
        await ensure_job_streams(bus)
        events = Events()
        collecting = asyncio.create_task(events.collect(bus))
        try:
            yield bus, events
        finally:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting


def job_worker(bus: EventBus, handler: Any, *, kind: int) -> JobWorker:
    """A worker with short heartbeats, so a killed attempt is redelivered within a test."""
    return JobWorker(
        bus=bus,
        handler=handler,
        spec=JobWorkerSpec(kind=kind, heartbeat_seconds=1.0, ack_wait_seconds=3.0),
        metrics=JobMetrics.create(CollectorRegistry()),
    )


@contextlib.asynccontextmanager
async def running(worker: JobWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
