"""JobWorker: the supervised pull loop that runs one kind of job through a handler."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import nats.js.errors
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.events import Delivery, EventBus, PullConsumer
from visionmesh.common.jobs._failures import (
    RetryClass,
    StaleAttemptError,
    backoff_seconds,
    classify,
)
from visionmesh.common.jobs._ledger import AttemptLedger, AttemptState, ClaimVerdict
from visionmesh.common.jobs._metrics import JobMetrics
from visionmesh.common.jobs._reporter import EventsUndeliverable, JobReporter
from visionmesh.common.logging import bind_job_id, get_logger
from visionmesh.common.subjects import (
    JOB_CONTROL_STREAM,
    JOBS_STREAM,
    job_control_subject,
    job_kind_token,
    job_request_subject,
)

_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JobWorkerSpec:
    """What a worker service declares: its job kind and how patient the runtime is."""

    kind: int
    ack_wait_seconds: float = 60.0
    heartbeat_seconds: float = 10.0
    max_deliveries: int = 3
    """Attempts that may crash (never report an end) before the job is FAILED."""
    transient_retry_limit: int = 10
    graceful_stop_seconds: float = 30.0
    event_delivery_timeout: float = 120.0

    @property
    def kind_name(self) -> str:
        return job_kind_token(self.kind)

    @property
    def consumer(self) -> str:
        return f"{self.kind_name.replace('_', '-')}-workers"


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How an attempt ended: `stopped` means it checkpointed on request and hands back."""

    status: Literal["succeeded", "cancelled", "stopped"]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class JobContext:
    """What a handler gets for one attempt. `cancel` and `stop` are threading events so a
    handler's worker thread can poll them between batches."""

    request: events_pb2.JobRequest
    reporter: JobReporter
    attempt: int
    worker_id: str
    cancel: threading.Event = field(default_factory=threading.Event)
    """The user cancelled the job: stop, keep what is useful, end CANCELLED."""
    stop: threading.Event = field(default_factory=threading.Event)
    """The worker is shutting down (or this attempt was superseded): checkpoint and stop."""

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.stop.is_set()

    @property
    def job_id(self) -> str:
        return self.request.job_id


class JobHandler(Protocol):
    """A worker service's one piece of domain code: run an attempt, return its outcome.

    Raise `PermanentJobError` for what no retry fixes, `TransientJobError` (or let S3/NATS
    errors through) for what a retry may fix; return `JobOutcome("stopped")` after
    checkpointing when `job.stop` is set.
    """

    async def run(self, job: JobContext) -> JobOutcome: ...


class JobWorker:
    """Pulls one kind from the JOBS work queue, one job at a time, and never dies silently.

    Every error around a handler is classified (transient -> retry with backoff,
    permanent -> FAILED now, crash -> redelivery counted against the budget) and the
    loop goes on; only a closed NATS connection ends `run()` with an exception, which the
    service turns into NOT_SERVING and a non-zero exit so its supervisor restarts it.
    """

    def __init__(
        self,
        *,
        bus: EventBus,
        handler: JobHandler,
        spec: JobWorkerSpec,
        metrics: JobMetrics,
        worker_id: str | None = None,
    ) -> None:
        self._bus = bus
        self._handler = handler
        self.spec = spec
        self._metrics = metrics
        self.worker_id = worker_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._stopping = asyncio.Event()
        self._running: JobContext | None = None
        self._ledger: AttemptLedger | None = None

    # --- the loop ---------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop: pull nothing more; the running job checkpoints and hands back."""
        self._stopping.set()
        if self._running is not None:
            self._running.stop.set()

    async def run(self) -> None:
        consumer = await self._consumer()
        async with consumer:
            failures = 0
            while not self._stopping.is_set():
                try:
                    deliveries = await self._fetch(consumer)
                    failures = 0
                except Exception as exc:
                    if self._bus.nc.is_closed:
                        raise RuntimeError("NATS connection closed for good") from exc
                    failures += 1
                    self._metrics.loop_errors.labels(self.spec.kind_name).inc()
                    _log.warning("fetching jobs failed; retrying", error=repr(exc))
                    await asyncio.sleep(backoff_seconds(failures, base=0.5, cap=10.0))
                    continue
                for delivery in deliveries:
                    await self._handle_guarded(delivery)

    async def _consumer(self) -> PullConsumer:
        failures = 0
        while True:
            try:
                self._ledger = await AttemptLedger.open(self._bus)
                return await self._bus.pull_consumer(
                    JOBS_STREAM,
                    self.spec.consumer,
                    filter_subject=job_request_subject(self.spec.kind),
                    ack_wait=self.spec.ack_wait_seconds,
                    # The attempt ledger counts crashes; graceful hand-backs and transient
                    # retries are redeliveries too, so JetStream itself never gives up.
                    max_deliver=-1,
                    max_ack_pending=64,
                )
            except Exception as exc:
                if self._bus.nc.is_closed:
                    raise
                failures += 1
                self._metrics.loop_errors.labels(self.spec.kind_name).inc()
                _log.warning("job consumer not ready; retrying", error=repr(exc))
                await asyncio.sleep(backoff_seconds(failures, base=0.5, cap=10.0))

    async def _fetch(self, consumer: PullConsumer) -> list[Delivery]:
        fetch = asyncio.create_task(consumer.fetch(1, timeout=5.0))
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetch
            return []
        deliveries = fetch.result()
        if self._stopping.is_set():
            # Stopped while the fetch landed: give it straight back for another worker.
            for delivery in deliveries:
                with contextlib.suppress(Exception):
                    await delivery.nak()
            return []
        return deliveries

    async def _handle_guarded(self, delivery: Delivery) -> None:
        try:
            await self.handle(delivery)
        except Exception:
            # The runtime's own bookkeeping failed (NATS gone mid-report, a bug): the job is
            # not lost, JetStream redelivers it; the loop lives on.
            self._metrics.loop_errors.labels(self.spec.kind_name).inc()
            _log.exception("job handling failed outside the handler; redelivering")
            with contextlib.suppress(Exception):
                await delivery.nak(delay=backoff_seconds(3))

    # --- one delivery -------------------------------------------------------------------

    @property
    def ledger(self) -> AttemptLedger:
        if self._ledger is None:
            raise RuntimeError("JobWorker.run() opens the ledger first")
        return self._ledger

    async def handle(self, delivery: Delivery) -> None:
        if self._ledger is None:
            self._ledger = await AttemptLedger.open(self._bus)
        try:
            request = delivery.decode(events_pb2.JobRequest)
        except Exception:
            _log.exception("undecodable job request terminated")
            await delivery.term()
            return
        with bind_job_id(request.job_id):
            claim = await self.ledger.claim(
                request.job_id,
                request_seq=delivery.stream_sequence,
                worker_id=self.worker_id,
                max_crashes=self.spec.max_deliveries,
            )
            if claim.verdict in (ClaimVerdict.DUPLICATE, ClaimVerdict.ALREADY_ENDED):
                # A second copy of the request (the relay re-published it after the
                # duplicate window), or a lost ack: the job has an owner; never run twice.
                _log.info("job request not run", verdict=claim.verdict.value)
                await delivery.ack()
                return
            attempt = claim.record.attempt
            async with self._reporter(request, attempt) as reporter:
                if claim.verdict is ClaimVerdict.BUDGET_SPENT:
                    await reporter.state(
                        job_pb2.JOB_STATE_FAILED,
                        reason="MAX_DELIVERIES_EXCEEDED",
                        message=f"the job was started {claim.record.crashes} times and never "
                        "finished (workers crashed or stopped heart-beating)",
                    )
                    self._count("budget_spent")
                    await delivery.term()
                    return
                if await self._cancelled_before_start(request.job_id):
                    # Ends a job cancelled while a crashed attempt ran it (CANCELLING); for
                    # one cancelled while queued the gateway has ended it already.
                    await reporter.state(job_pb2.JOB_STATE_CANCELLED)
                    await self._close(request.job_id, attempt, AttemptState.ENDED)
                    self._count("cancelled")
                    await delivery.ack()
                    return
                job = JobContext(
                    request=request, reporter=reporter, attempt=attempt, worker_id=self.worker_id
                )
                await self._run(job, delivery, claim.record.transient_retries)

    async def _run(self, job: JobContext, delivery: Delivery, transient_retries: int) -> None:
        reporter = job.reporter
        kind = self.spec.kind_name
        self._running = job
        if self._stopping.is_set():
            job.stop.set()
        started = time.monotonic()
        self._metrics.running.labels(kind).inc()
        try:
            await reporter.state(job_pb2.JOB_STATE_RUNNING)
            async with self._heartbeats(job, delivery), self._watch_cancel(job):
                outcome = await self._run_handler(job)
        except StaleAttemptError:
            # A newer attempt owns the job (and its message); write nothing more.
            _log.warning("attempt superseded by a newer one; stopped", attempt=job.attempt)
            self._count("superseded")
            return
        except Exception as exc:
            await self._failed(job, delivery, exc, transient_retries)
            return
        finally:
            self._running = None
            self._metrics.running.labels(kind).dec()
            self._metrics.attempt_seconds.labels(kind).observe(time.monotonic() - started)
        if outcome.status == "stopped":
            # Graceful hand-back: the handler checkpointed; another worker resumes at once
            # and the retry budget is untouched.
            await reporter.flush()
            await self._close(job.job_id, job.attempt, AttemptState.HANDED_BACK)
            self._count("handed_back")
            await delivery.nak()
            _log.info("job handed back for another worker", attempt=job.attempt)
            return
        if outcome.status == "cancelled":
            await reporter.state(job_pb2.JOB_STATE_CANCELLED)
        else:
            await reporter.state(job_pb2.JOB_STATE_SUCCEEDED, metrics=outcome.metrics)
        await self._close(job.job_id, job.attempt, AttemptState.ENDED)
        self._count(outcome.status)
        await delivery.ack()
        _log.info("job ended", outcome=outcome.status)

    async def _run_handler(self, job: JobContext) -> JobOutcome:
        """The handler, given `graceful_stop_seconds` to hand back once a stop is asked."""
        task = asyncio.create_task(self._handler.run(job))

        async def deadline() -> None:
            await self._stopping.wait()
            await asyncio.sleep(self.spec.graceful_stop_seconds)

        timer = asyncio.create_task(deadline())
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if task.done():
            return task.result()
        _log.warning(
            "handler did not stop in time; handing back anyway",
            graceful_stop_seconds=self.spec.graceful_stop_seconds,
        )
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return JobOutcome("stopped")

    async def _failed(
        self, job: JobContext, delivery: Delivery, exc: Exception, transient_retries: int
    ) -> None:
        retry_class, reason, message = classify(exc)
        if isinstance(exc, EventsUndeliverable):
            retry_class = RetryClass.TRANSIENT
        if retry_class is RetryClass.TRANSIENT:
            retry = transient_retries + 1
            if retry <= self.spec.transient_retry_limit:
                delay = backoff_seconds(retry)
                _log.warning(
                    "transient job error; retrying", retry=retry, delay=delay, error=message
                )
                # If NATS itself is what failed, this may not land either: the job is then
                # redelivered after ack_wait and counted as a crash, which is still safe.
                await self._close(job.job_id, job.attempt, AttemptState.RETRYING)
                self._count("retrying")
                await delivery.nak(delay=delay)
                return
            reason = "RETRIES_EXHAUSTED"
            message = f"gave up after {transient_retries} transient retries; last: {message}"
        _log.warning("job failed", reason=reason, error=message, exc_info=exc)
        await job.reporter.state(job_pb2.JOB_STATE_FAILED, reason=reason, message=message)
        await self._close(job.job_id, job.attempt, AttemptState.ENDED)
        self._count("failed")
        await delivery.term()

    async def _close(self, job_id: str, attempt: int, state: AttemptState) -> None:
        await self.ledger.close(job_id, attempt=attempt, state=state)

    def _count(self, outcome: str) -> None:
        self._metrics.attempts.labels(self.spec.kind_name, outcome).inc()

    def _reporter(self, request: events_pb2.JobRequest, attempt: int) -> JobReporter:
        return JobReporter(
            bus=self._bus,
            job_id=request.job_id,
            tenant_id=request.tenant_id,
            attempt=attempt,
            worker_id=self.worker_id,
            kind=self.spec.kind_name,
            metrics=self._metrics,
            delivery_timeout=self.spec.event_delivery_timeout,
        )

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
    async def _heartbeats(self, job: JobContext, delivery: Delivery) -> AsyncIterator[None]:
        """`in_progress` keeps the message ours; the ledger check fences a partitioned
        attempt: once a newer attempt has claimed the job, this one is told to stop."""

        async def beat(done: asyncio.Event) -> None:
            # Ends on `done`, not only on cancellation: nats-py can swallow a CancelledError
            # that lands in a request (asyncio.wait_for on 3.11), and a heartbeat that beats
            # on after its job ended would hold the message for ever.
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), self.spec.heartbeat_seconds)
                if done.is_set():
                    return
                try:
                    await delivery.in_progress()
                    if not await self.ledger.is_current(job.job_id, job.attempt):
                        _log.warning("a newer attempt claimed the job; stopping this one")
                        job.stop.set()
                        return
                except Exception as exc:
                    _log.warning("heartbeat failed", error=repr(exc))

        async with _background(beat, name="heartbeat"):
            yield
        if job.stop.is_set() and not self._stopping.is_set():
            raise StaleAttemptError(f"attempt {job.attempt} of {job.job_id} was superseded")

    @contextlib.asynccontextmanager
    async def _watch_cancel(self, job: JobContext) -> AsyncIterator[None]:
        subscription = await self._bus.subscribe_ordered(
            job_control_subject(job.job_id), stream=JOB_CONTROL_STREAM
        )

        async def watch(done: asyncio.Event) -> None:
            async for message in subscription:
                if done.is_set():
                    return
                try:
                    control = message.decode(events_pb2.JobControl)
                except Exception as exc:
                    _log.warning("undecodable job control message ignored", error=repr(exc))
                    continue
                if control.action == events_pb2.JOB_CONTROL_ACTION_CANCEL:
                    _log.info("cancel requested; stopping at the next batch")
                    job.cancel.set()

        try:
            async with _background(watch, name="cancel watch"):
                yield
        finally:
            with contextlib.suppress(Exception):
                await subscription.close()


@contextlib.asynccontextmanager
async def _background(
    work: Callable[[asyncio.Event], Coroutine[Any, Any, None]], *, name: str
) -> AsyncIterator[None]:
    """Runs `work(done)` beside the body; after it, sets `done` and cancels until it ends.

    Its death is logged, never silent; a cancellation that a library swallows is repeated,
    so the body's exit never waits on a task that will not stop.
    """

    def report(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.error(f"{name} task died", error=repr(task.exception()))

    done = asyncio.Event()
    task = asyncio.create_task(work(done), name=name)
    task.add_done_callback(report)
    try:
        yield
    finally:
        done.set()
        for _ in range(50):
            task.cancel()
            finished, _ = await asyncio.wait({task}, timeout=0.2)
            if finished:
                break
        else:
            _log.error(f"{name} task would not stop; left behind")
