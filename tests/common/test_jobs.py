"""The shared job runtime against a real nats-server: retry classes, crashes, graceful stop,
duplicates, fencing, the reporter, and supervision."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.embedded import NatsServer
from visionmesh.common.errors import Unavailable
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import (
    AttemptLedger,
    AttemptState,
    EventsUndeliverable,
    JobContext,
    JobMetrics,
    JobOutcome,
    JobReporter,
    JobWorker,
    JobWorkerSpec,
    PermanentJobError,
    RetryClass,
    classify,
    serve_workers,
)
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import ServiceSettings
from visionmesh.common.subjects import (
    JOB_EVENTS_STREAM,
    ensure_job_streams,
    job_request_subject,
)

KIND = job_pb2.JOB_KIND_EXPORT  # any kind: the runtime knows none of them
Handler = Callable[[JobContext], Awaitable[JobOutcome]]


class FnHandler:
    def __init__(self, fn: Handler) -> None:
        self.fn = fn
        self.calls: list[int] = []

    async def run(self, job: JobContext) -> JobOutcome:
        self.calls.append(job.attempt)
        return await self.fn(job)


@pytest_asyncio.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EventBus]:
    async with (
        NatsServer(store_dir=tmp_path / "nats", log_dir=tmp_path) as nats,
        EventBus(servers=nats.url, name="jobs-test") as bus,
    ):
        await ensure_job_streams(bus)
        yield bus


def _spec(**overrides: float) -> JobWorkerSpec:
    options: dict[str, float] = {
        "ack_wait_seconds": 2.0,
        "heartbeat_seconds": 0.3,
        "max_deliveries": 2,
        "transient_retry_limit": 2,
        "graceful_stop_seconds": 5.0,
    }
    options.update(overrides)
    return JobWorkerSpec(kind=KIND, **options)  # type: ignore[arg-type]


def _worker(bus: EventBus, handler: FnHandler, **spec: float) -> tuple[JobWorker, JobMetrics]:
    metrics = JobMetrics.create(CollectorRegistry())
    return JobWorker(bus=bus, handler=handler, spec=_spec(**spec), metrics=metrics), metrics


async def _publish(bus: EventBus, job_id: str, *, msg_id: str | None = None) -> None:
    request = events_pb2.JobRequest(job_id=job_id, tenant_id="t", kind=KIND)
    await bus.publish(job_request_subject(KIND), request, msg_id=msg_id or job_id)


async def _events_until_end(
    bus: EventBus, job_id: str, within: float = 20
) -> list[events_pb2.JobEvent]:
    """Every event of the job, in order, until a terminal state arrives."""
    terminal = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
    events: list[events_pb2.JobEvent] = []
    subscription = await bus.subscribe_ordered(f"vm.jobs.events.{job_id}", stream=JOB_EVENTS_STREAM)
    try:
        async with asyncio.timeout(within):
            async for delivery in subscription:
                event = delivery.decode(events_pb2.JobEvent)
                events.append(event)
                if event.WhichOneof("payload") == "state_changed" and (
                    event.state_changed.state in terminal
                ):
                    return events
    finally:
        await subscription.close()
    return events


@contextlib.asynccontextmanager
async def _running(*workers: JobWorker) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        yield tasks
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait(tasks, timeout=15)
        for task in tasks:
            task.cancel()


def _states(events: list[events_pb2.JobEvent]) -> list[int]:
    return [e.state_changed.state for e in events if e.WhichOneof("payload") == "state_changed"]


async def test_a_handler_error_fails_that_job_and_the_loop_runs_the_next(bus: EventBus) -> None:
    async def fn(job: JobContext) -> JobOutcome:
        if job.job_id == "bad":
            raise ValueError("labels/x.txt: class 7 out of range")
        return JobOutcome("succeeded", {"score": 1.0})

    handler = FnHandler(fn)
    worker, _ = _worker(bus, handler)
    async with _running(worker):
        await _publish(bus, "bad")
        await _publish(bus, "good")
        bad = await _events_until_end(bus, "bad")
        good = await _events_until_end(bus, "good")
    failed = bad[-1].state_changed
    assert failed.state == job_pb2.JOB_STATE_FAILED and failed.error.reason == "HANDLER_ERROR"
    assert "class 7 out of range" in failed.error.message
    assert _states(good)[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert handler.calls == [1, 1]  # a permanent error is not retried


async def test_permanent_errors_fail_at_once_with_their_reason(bus: EventBus) -> None:
    async def fn(job: JobContext) -> JobOutcome:
        raise PermanentJobError("DATA_CORRUPT", "images/a.jpg does not match its sha256")

    handler = FnHandler(fn)
    worker, _ = _worker(bus, handler)
    async with _running(worker):
        await _publish(bus, "job")
        events = await _events_until_end(bus, "job")
    assert events[-1].state_changed.error.reason == "DATA_CORRUPT"
    assert handler.calls == [1]


async def test_transient_errors_retry_with_backoff_without_spending_the_crash_budget(
    bus: EventBus,
) -> None:
    async def fn(job: JobContext) -> JobOutcome:
        if len(handler.calls) < 3:
            raise Unavailable("object store 127.0.0.1:9 unreachable")
        return JobOutcome("succeeded")

    handler = FnHandler(fn)
    # max_deliveries=1: a single crash would fail the job, two transient retries must not.
    worker, metrics = _worker(bus, handler, max_deliveries=1, transient_retry_limit=5)
    async with _running(worker):
        await _publish(bus, "job")
        events = await _events_until_end(bus, "job", within=30)
    assert _states(events)[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert handler.calls == [1, 2, 3]
    record = await (await AttemptLedger.open(bus)).get("job")
    assert record is not None and record.crashes == 0 and record.transient_retries == 2
    assert metrics.attempts.labels("export", "retrying")._value.get() == 2


async def test_transient_errors_beyond_the_limit_fail_the_job(bus: EventBus) -> None:
    async def fn(job: JobContext) -> JobOutcome:
        raise TimeoutError("S3 read timed out")

    handler = FnHandler(fn)
    worker, _ = _worker(bus, handler, transient_retry_limit=1)
    async with _running(worker):
        await _publish(bus, "job")
        events = await _events_until_end(bus, "job", within=30)
    assert events[-1].state_changed.error.reason == "RETRIES_EXHAUSTED"
    assert handler.calls == [1, 2]


def test_torch_out_of_memory_is_permanent_and_named() -> None:
    import torch

    retry, reason, _ = classify(torch.OutOfMemoryError("CUDA out of memory"))
    assert retry is RetryClass.PERMANENT and reason == "OUT_OF_MEMORY"
    assert classify(Unavailable("x"))[0] is RetryClass.TRANSIENT


async def test_a_crashed_attempt_is_redelivered_and_counted_until_the_budget_is_spent(
    bus: EventBus,
) -> None:
    crashed = asyncio.Event()

    async def fn(job: JobContext) -> JobOutcome:
        # A worker that dies mid-job: it never acks, never reports an end.
        crashed.set()
        await asyncio.Event().wait()
        raise AssertionError

    handler = FnHandler(fn)
    dying, _ = _worker(bus, handler, max_deliveries=2)
    task = asyncio.create_task(dying.run())
    await _publish(bus, "job")
    await asyncio.wait_for(crashed.wait(), 10)
    task.cancel()  # the process is gone: no hand-back, no ack
    with contextlib.suppress(asyncio.CancelledError):
        await task

    async def succeed(job: JobContext) -> JobOutcome:
        return JobOutcome("succeeded")

    survivor = FnHandler(succeed)
    worker, _ = _worker(bus, survivor, max_deliveries=2)
    async with _running(worker):
        events = await _events_until_end(bus, "job", within=30)
    assert _states(events)[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert survivor.calls == [2]  # the redelivery is attempt 2
    record = await (await AttemptLedger.open(bus)).get("job")
    assert record is not None and record.crashes == 1

    # With a budget of one crash, the redelivery fails the job instead of running it.
    crashed.clear()
    dying2, _ = _worker(bus, FnHandler(fn), max_deliveries=1)
    task = asyncio.create_task(dying2.run())
    await _publish(bus, "job-2")
    await asyncio.wait_for(crashed.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    never = FnHandler(succeed)
    worker, _ = _worker(bus, never, max_deliveries=1)
    async with _running(worker):
        events = await _events_until_end(bus, "job-2", within=30)
    assert events[-1].state_changed.error.reason == "MAX_DELIVERIES_EXCEEDED"
    assert never.calls == []


async def test_graceful_stop_hands_back_at_once_and_spends_no_budget(bus: EventBus) -> None:
    started = asyncio.Event()

    async def long_job(job: JobContext) -> JobOutcome:
        if job.attempt == 1:
            started.set()
            while not job.stop.is_set():  # noqa: ASYNC110 - a threading.Event, as handlers poll
                await asyncio.sleep(0.05)
            return JobOutcome("stopped")  # checkpointed; hand back
        return JobOutcome("succeeded", {"resumed_at_attempt": float(job.attempt)})

    handler = FnHandler(long_job)
    # ack_wait is long: the second worker may only get the job because it was handed back.
    first, _ = _worker(bus, handler, max_deliveries=1, ack_wait_seconds=60)
    second, _ = _worker(bus, handler, max_deliveries=1, ack_wait_seconds=60)
    first_task = asyncio.create_task(first.run())
    await _publish(bus, "job")
    await asyncio.wait_for(started.wait(), 10)
    loop = asyncio.get_running_loop()
    stop_at = loop.time()
    first.stop()  # what SIGTERM does
    await asyncio.wait_for(first_task, 10)
    async with _running(second):
        events = await _events_until_end(bus, "job", within=20)
    assert loop.time() - stop_at < 10  # not after ack_wait (60 s)
    assert _states(events)[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert handler.calls == [1, 2]
    record = await (await AttemptLedger.open(bus)).get("job")
    assert record is not None
    assert (record.crashes, record.hand_backs, record.state) == (0, 1, AttemptState.ENDED)


async def test_a_second_copy_of_a_request_never_runs_the_job_twice(bus: EventBus) -> None:
    """The relay crashed between publish and mark, and re-published after JetStream's
    duplicate window: the second copy is a new message (another msg id here, which is what
    an expired window amounts to). Once while the job runs, once after it ended."""
    release = asyncio.Event()

    async def fn(job: JobContext) -> JobOutcome:
        await release.wait()
        return JobOutcome("succeeded")

    handler = FnHandler(fn)
    one, _ = _worker(bus, handler)
    two, _ = _worker(bus, handler)
    async with _running(one, two):
        await _publish(bus, "job")
        while not handler.calls:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await _publish(bus, "job", msg_id="job-republished-while-running")
        await asyncio.sleep(1.0)
        release.set()
        await _events_until_end(bus, "job")
        await _publish(bus, "job", msg_id="job-republished-after-end")
        await asyncio.sleep(1.5)
    assert handler.calls == [1]


async def test_a_superseded_attempt_is_stopped_and_writes_nothing_more(bus: EventBus) -> None:
    """After a partition, the ledger has moved on to attempt 2: attempt 1 learns it at its
    next heartbeat, stops, and reports no end of its own."""
    started = asyncio.Event()

    async def fn(job: JobContext) -> JobOutcome:
        started.set()
        while not job.stop.is_set():  # noqa: ASYNC110 - a threading.Event, as handlers poll
            await asyncio.sleep(0.05)
        return JobOutcome("succeeded")  # would be a lie: attempt 2 owns the job

    handler = FnHandler(fn)
    worker, metrics = _worker(bus, handler)
    async with _running(worker):
        await _publish(bus, "job")
        await asyncio.wait_for(started.wait(), 10)
        ledger = await AttemptLedger.open(bus)
        record = await ledger.get("job")
        assert record is not None
        # Another worker claims attempt 2 (as after ack_wait expired during a partition).
        claim = await ledger.claim(
            "job", request_seq=record.request_seq, worker_id="other", max_crashes=5
        )
        assert claim.record.attempt == 2
        for _ in range(100):
            if metrics.attempts.labels("export", "superseded")._value.get() == 1:
                break
            await asyncio.sleep(0.1)
    assert metrics.attempts.labels("export", "superseded")._value.get() == 1
    subscription = await bus.subscribe_ordered("vm.jobs.events.job", stream=JOB_EVENTS_STREAM)
    events = []
    while (delivery := await subscription.next(timeout=1)) is not None:
        events.append(delivery.decode(events_pb2.JobEvent))
    await subscription.close()
    assert _states(events) == [job_pb2.JOB_STATE_RUNNING]  # no SUCCEEDED from attempt 1


async def test_reporter_keeps_order_and_fails_loudly_when_events_cannot_be_delivered(
    bus: EventBus, tmp_path: Path
) -> None:
    metrics = JobMetrics.create(CollectorRegistry())
    async with JobReporter(
        bus=bus, job_id="job", tenant_id="t", attempt=1, worker_id="w", capacity=4, metrics=metrics
    ) as reporter:
        for step in range(20):  # more than the queue holds: emitters wait, nothing drops
            await reporter.progress(job_pb2.JobProgress(step=step))
        await reporter.flush()
    subscription = await bus.subscribe_ordered("vm.jobs.events.job", stream=JOB_EVENTS_STREAM)
    steps = []
    while (delivery := await subscription.next(timeout=1)) is not None:
        steps.append(delivery.decode(events_pb2.JobEvent).progress.step)
    await subscription.close()
    assert steps == list(range(20))

    # NATS gone: after the delivery deadline the reporter fails, counted and raised.
    async with (
        NatsServer(store_dir=tmp_path / "gone", log_dir=tmp_path) as nats,
        EventBus(servers=nats.url, name="doomed") as doomed,
    ):
        await ensure_job_streams(doomed)
        await nats.stop()
        async with JobReporter(
            bus=doomed,
            job_id="job",
            tenant_id="t",
            attempt=1,
            worker_id="w",
            metrics=metrics,
            delivery_timeout=1.5,
            publish_timeout=0.3,
        ) as reporter:
            await reporter.progress(job_pb2.JobProgress(step=1))
            with pytest.raises(EventsUndeliverable):
                await reporter.flush()
            with pytest.raises(EventsUndeliverable):
                await reporter.progress(job_pb2.JobProgress(step=2))
    assert metrics.events_undelivered.labels("job")._value.get() == 1


async def test_a_dead_loop_turns_health_not_serving_and_exits_non_zero(tmp_path: Path) -> None:
    async with NatsServer(store_dir=tmp_path / "nats", log_dir=tmp_path) as nats:
        bus = EventBus(servers=nats.url, name="dies")
        await bus.connect()
        await ensure_job_streams(bus)

        async def fn(job: JobContext) -> JobOutcome:
            return JobOutcome("succeeded")

        worker, _ = _worker(bus, FnHandler(fn))
        server = GrpcServer(settings=ServiceSettings(service_name="t", grpc_port=0))
        serving = asyncio.create_task(serve_workers(server, [worker]))
        for _ in range(50):
            if server._server is not None:  # started
                break
            await asyncio.sleep(0.1)
        port = server.port
        statuses: list[int] = []

        async def watch_health() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for response in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                        statuses.append(response.status)

        watcher = asyncio.create_task(watch_health())
        await asyncio.sleep(0.5)
        await bus.close()  # NATS connection closed for good: the loop cannot go on
        exit_code = await asyncio.wait_for(serving, 30)
        watcher.cancel()
    assert exit_code == 1
    assert statuses[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses


async def test_a_heartbeat_whose_cancellation_is_swallowed_still_lets_the_job_end(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in a fault-injection run: nats-py swallowed the CancelledError of a heartbeat's
    ledger read, the heartbeat beat on, and the finished job held its message for ever."""

    async def swallowing_is_current(self: AttemptLedger, job_id: str, attempt: int) -> bool:
        # What asyncio.wait_for in nats-py's request does when the reply races the cancel.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(2.0)
        return True

    monkeypatch.setattr(AttemptLedger, "is_current", swallowing_is_current)

    async def fn(job: JobContext) -> JobOutcome:
        await asyncio.sleep(0.5)  # ends while a heartbeat's ledger read is in flight
        return JobOutcome("succeeded")

    handler = FnHandler(fn)
    worker, _ = _worker(bus, handler, heartbeat_seconds=0.05)
    async with _running(worker):
        await _publish(bus, "job")
        await _publish(bus, "next")
        first = await _events_until_end(bus, "job", within=10)
        second = await _events_until_end(bus, "next", within=10)
    assert _states(first)[-1] == _states(second)[-1] == job_pb2.JOB_STATE_SUCCEEDED


async def test_sigterm_turns_health_not_serving_hands_the_job_back_and_exits_zero(
    bus: EventBus,
) -> None:
    started = asyncio.Event()

    async def fn(job: JobContext) -> JobOutcome:
        started.set()
        while not job.stop.is_set():  # noqa: ASYNC110 - a threading.Event, as handlers poll
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # checkpointing
        return JobOutcome("stopped")

    worker, metrics = _worker(bus, FnHandler(fn))
    server = GrpcServer(settings=ServiceSettings(service_name="t", grpc_port=0))
    serving = asyncio.create_task(serve_workers(server, [worker]))
    await _publish(bus, "job")
    await asyncio.wait_for(started.wait(), 10)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        statuses = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await statuses.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        os.kill(os.getpid(), signal.SIGTERM)  # serve_workers handles it while it runs
        second = await statuses.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        # Before the hand-back, not after it: nothing is routed here while it checkpoints.
        assert metrics.attempts.labels("export", "handed_back")._value.get() == 0
    assert await asyncio.wait_for(serving, 30) == 0
    assert metrics.attempts.labels("export", "handed_back")._value.get() == 1
    record = await (await AttemptLedger.open(bus)).get("job")
    assert record is not None and record.state == AttemptState.HANDED_BACK
