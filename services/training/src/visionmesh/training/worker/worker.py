"""The training worker: pulls jobs from the JetStream work queue, one at a time per worker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import uuid
from collections.abc import AsyncIterator

import nats.js.errors
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.events import Delivery, EventBus
from visionmesh.common.logging import bind_job_id, get_logger
from visionmesh.common.subjects import (
    JOB_CONTROL_STREAM,
    JOBS_STREAM,
    job_control_subject,
    job_request_subject,
)
from visionmesh.training.worker.cache import DataError
from visionmesh.training.worker.reporter import JobReporter
from visionmesh.training.worker.runner import TrainingJobRunner

_log = get_logger(__name__)

CONSUMER = "training-workers"


class TrainingWorker:
    """Shares the durable consumer with every other training worker, here or elsewhere.

    Explicit acks with heartbeats (`in_progress`) while training, so a long epoch is not
    redelivered; a worker that dies stops heart-beating and JetStream redelivers the job
    after `ack_wait`, to resume from its last uploaded checkpoint. After `max_deliveries`
    the job is FAILED instead of being tried again.
    """

    def __init__(
        self,
        *,
        bus: EventBus,
        runner: TrainingJobRunner,
        ack_wait: float,
        heartbeat: float,
        max_deliveries: int,
        worker_id: str | None = None,
    ) -> None:
        self._bus = bus
        self._runner = runner
        self._ack_wait = ack_wait
        self._heartbeat = heartbeat
        self._max_deliveries = max_deliveries
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

    async def run(self) -> None:
        consumer = await self._bus.pull_consumer(
            JOBS_STREAM,
            CONSUMER,
            filter_subject=job_request_subject(job_pb2.JOB_KIND_TRAINING),
            ack_wait=self._ack_wait,
            # One extra delivery lets a worker mark the job FAILED instead of it vanishing.
            max_deliver=self._max_deliveries + 1,
            max_ack_pending=64,
        )
        async with consumer:
            while True:
                try:
                    deliveries = await consumer.fetch(1, timeout=5.0)
                except Exception:
                    _log.exception("fetching training jobs failed")
                    await asyncio.sleep(1.0)
                    continue
                for delivery in deliveries:
                    await self.handle(delivery)

    async def handle(self, delivery: Delivery) -> None:
        try:
            request = delivery.decode(events_pb2.JobRequest)
        except Exception:
            _log.exception("undecodable job request terminated")
            await delivery.term()
            return
        attempt = delivery.num_delivered
        reporter = JobReporter(
            bus=self._bus,
            job_id=request.job_id,
            tenant_id=request.tenant_id,
            attempt=attempt,
            worker_id=self.worker_id,
        )
        with bind_job_id(request.job_id):
            if attempt > self._max_deliveries:
                await reporter.state(
                    job_pb2.JOB_STATE_FAILED,
                    reason="MAX_DELIVERIES_EXCEEDED",
                    message=f"the job was started {attempt - 1} times and never finished "
                    "(workers crashed or stopped heart-beating)",
                )
                await delivery.term()
                return
            if await self._cancelled_before_start(request.job_id):
                # Ends a job cancelled while a crashed attempt ran it (CANCELLING); for one
                # cancelled while queued the gateway has ended it already and ignores this.
                _log.info("job was cancelled before it started; skipped")
                await reporter.state(job_pb2.JOB_STATE_CANCELLED)
                await delivery.ack()
                return
            cancel = threading.Event()
            async with self._heartbeats(delivery), self._watch_cancel(request.job_id, cancel):
                await self._run(request, reporter, cancel)
            await delivery.ack()

    async def _run(
        self, request: events_pb2.JobRequest, reporter: JobReporter, cancel: threading.Event
    ) -> None:
        await reporter.state(job_pb2.JOB_STATE_RUNNING)
        try:
            outcome = await self._runner.run(request, reporter, cancel)
        except DataError as exc:
            _log.warning("dataset does not match its manifest", error=str(exc))
            await reporter.flush()
            await reporter.state(job_pb2.JOB_STATE_FAILED, reason="DATA_CORRUPT", message=str(exc))
            return
        except Exception as exc:
            _log.exception("training failed")
            await reporter.flush()
            await reporter.state(
                job_pb2.JOB_STATE_FAILED,
                reason="TRAINING_ERROR",
                message=f"{type(exc).__name__}: {exc}"[:2000],
            )
            return
        if outcome.status == "cancelled":
            await reporter.state(job_pb2.JOB_STATE_CANCELLED)
        else:
            await reporter.state(job_pb2.JOB_STATE_SUCCEEDED, metrics=outcome.metrics)
        _log.info("training job ended", outcome=outcome.status)

    async def _cancelled_before_start(self, job_id: str) -> bool:
        try:
            message = await self._bus.js.get_last_msg(
                JOB_CONTROL_STREAM, job_control_subject(job_id)
            )
        except nats.js.errors.NotFoundError:
            return False
        control = events_pb2.JobControl.FromString(message.data or b"")
        return bool(control.action == events_pb2.JOB_CONTROL_ACTION_CANCEL)

    @contextlib.asynccontextmanager
    async def _heartbeats(self, delivery: Delivery) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(self._heartbeat)
                try:
                    await delivery.in_progress()
                except Exception:
                    _log.warning("heartbeat failed", exc_info=True)

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def _watch_cancel(self, job_id: str, cancel: threading.Event) -> AsyncIterator[None]:
        subscription = await self._bus.subscribe_ordered(
            job_control_subject(job_id), stream=JOB_CONTROL_STREAM
        )

        async def watch() -> None:
            async for delivery in subscription:
                control = delivery.decode(events_pb2.JobControl)
                if control.action == events_pb2.JOB_CONTROL_ACTION_CANCEL:
                    _log.info("cancel requested; stopping at the next batch")
                    cancel.set()

        task = asyncio.create_task(watch())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await subscription.close()
