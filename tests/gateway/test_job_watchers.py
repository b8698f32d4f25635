"""WatchJob streams fed by notifications, one database read per batch shared by all watchers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import event
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.gateway.app import Gateway
from visionmesh.gateway.core import jobs

from tests.gateway.conftest import GatewayFactory, GatewayHarness
from tests.gateway.helpers import ScriptedWorker, detect_zip, upload_dataset, wait_for

SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 3,
    "imgsz": 64,
}
NO_POLLING = 3600.0  # a fallback poll that never fires within a test


@contextmanager
def count_event_reads(gateway: Gateway) -> Iterator[list[str]]:
    """Collects the gateway's reads of stored events (not the applier's dedupe lookups)."""
    seen: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("SELECT") and "job_events.payload" in statement:
            seen.append(statement)

    engine = gateway.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


async def _queued_job(harness: GatewayHarness, token: str) -> dict[str, Any]:
    async with harness.http(token) as client:
        dataset = (await upload_dataset(client, detect_zip(harness.tmp)))["dataset"]
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC}
        )
        assert created.status_code == 200, created.text
        job: dict[str, Any] = created.json()["job"]

        async def queued() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_QUEUED")

        await wait_for(queued, what="job QUEUED")
    return job


class Watchers:
    """N gRPC WatchJob streams on one job, recording (sequence, arrival time)."""

    def __init__(self, target: str, token: str, job_id: str, n: int) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)
        self.received: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.tasks = [asyncio.create_task(self._watch(i, token, job_id)) for i in range(n)]

    async def _watch(self, i: int, token: str, job_id: str) -> None:
        async for response in self.stub.WatchJob(
            jobs_pb2.WatchJobRequest(id=job_id),
            metadata=(("authorization", f"Bearer {token}"),),
        ):
            self.received[i].append((response.sequence, time.monotonic()))

    def all_have(self, sequence: int) -> bool:
        return all(got and got[-1][0] >= sequence for got in self.received)

    async def wait_all_have(self, sequence: int, within: float) -> None:
        async def done() -> bool:
            return self.all_have(sequence)

        await wait_for(done, within=within, interval=0.02, what=f"every watcher at {sequence}")

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.channel.close()


async def test_watchers_are_woken_by_events_and_share_one_read_per_batch(
    harness: GatewayHarness, bus: EventBus
) -> None:
    """Before: every watcher polled job_events each second (and read on every wake-up)."""
    harness.gateway.watchers.fallback_poll_seconds = NO_POLLING
    token = await harness.signup_and_login()
    job = await _queued_job(harness, token)
    n = 25
    watchers = Watchers(harness.grpc_target, token, job["id"], n)
    try:
        await watchers.wait_all_have(2, within=20)  # PENDING, QUEUED replayed
        with count_event_reads(harness.gateway) as reads:
            await asyncio.sleep(2.5)  # quiet: nobody polls
            assert reads == []
            worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
            await worker.state(job_pb2.JOB_STATE_RUNNING)
            epochs = 6
            for epoch in range(1, epochs + 1):
                await worker.progress(epoch, epochs)
            # Pushed, not polled: the fallback poll is an hour away.
            await watchers.wait_all_have(2 + 1 + epochs, within=10)
            # One read per batch of notifications for all 25 watchers, not one per watcher
            # per event (25 * 7 = 175).
            assert 1 <= len(reads) <= 1 + epochs, len(reads)
            await worker.state(job_pb2.JOB_STATE_SUCCEEDED)
            await asyncio.wait_for(asyncio.gather(*watchers.tasks), 10)  # streams end
        for got in watchers.received:
            assert [s for s, _ in got] == list(range(1, 2 + 1 + epochs + 2))
    finally:
        await watchers.close()
    assert harness.gateway.watchers._feeds == {}  # the job's feed went with its watchers


async def test_late_watcher_replays_history_then_follows_live(
    harness: GatewayHarness, bus: EventBus
) -> None:
    harness.gateway.watchers.fallback_poll_seconds = NO_POLLING
    token = await harness.signup_and_login()
    job = await _queued_job(harness, token)
    early = Watchers(harness.grpc_target, token, job["id"], 1)
    try:
        await early.wait_all_have(2, within=20)
        worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        await worker.progress(1, 3)
        await early.wait_all_have(4, within=10)
        late = Watchers(harness.grpc_target, token, job["id"], 1)  # joins an existing feed
        try:
            await late.wait_all_have(4, within=10)
            await worker.progress(2, 3)
            await worker.state(job_pb2.JOB_STATE_SUCCEEDED)
            await asyncio.wait_for(asyncio.gather(*early.tasks, *late.tasks), 10)
            for got in (early.received[0], late.received[0]):
                assert [s for s, _ in got] == [1, 2, 3, 4, 5, 6]
        finally:
            await late.close()
    finally:
        await early.close()


async def test_every_replica_wakes_its_watchers(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str, bus: EventBus
) -> None:
    """Replicas share the durable event consumer, so most events are applied elsewhere."""
    first = await make_gateway(nats_url=nats_server.url, database_url=database_url)
    second = await make_gateway(
        nats_url=nats_server.url,
        database_url=database_url,
        signing_key_file=first.settings.signing_key_file,
    )
    for replica in (first, second):
        replica.gateway.watchers.fallback_poll_seconds = NO_POLLING
    token = await first.signup_and_login()
    job = await _queued_job(first, token)
    on_first = Watchers(first.grpc_target, token, job["id"], 3)
    on_second = Watchers(second.grpc_target, token, job["id"], 3)
    try:
        await on_first.wait_all_have(2, within=20)
        await on_second.wait_all_have(2, within=20)
        with count_event_reads(first.gateway) as reads, count_event_reads(second.gateway) as more:
            await asyncio.sleep(2.5)
        assert reads == more == []  # neither replica polls: each is woken by notifications
        worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        for epoch in range(1, 9):
            await worker.progress(epoch, 8)
            await on_first.wait_all_have(3 + epoch, within=5)
            await on_second.wait_all_have(3 + epoch, within=5)
        # A cancel on one replica reaches the other's watchers too.
        async with httpx.AsyncClient(
            base_url=second.rest_url, headers={"authorization": f"Bearer {token}"}
        ) as client:
            response = await client.post(f"/v1/jobs/{job['id']}:cancel", json={})
            assert response.json()["job"]["state"] == "JOB_STATE_CANCELLING"
        await on_first.wait_all_have(12, within=5)
        await worker.state(job_pb2.JOB_STATE_CANCELLED)
        await asyncio.wait_for(asyncio.gather(*on_first.tasks, *on_second.tasks), 10)
        for got in [*on_first.received, *on_second.received]:
            assert [s for s, _ in got] == list(range(1, 14))
    finally:
        await on_first.close()
        await on_second.close()


async def test_feed_buffer_keeps_the_newest_events_and_sends_older_readers_to_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jobs, "_FEED_BUFFER", 3)
    feed = jobs._JobFeed("job")
    feed.base = feed.newest = 2  # the job had 2 events when its first watcher came
    changed = feed.changed
    feed.publish([jobs_pb2.WatchJobResponse(sequence=s) for s in (3, 4)], 4, False)
    assert changed.is_set() and not feed.changed.is_set()
    assert [e.sequence for e in feed.since(2) or []] == [3, 4]
    assert [e.sequence for e in feed.since(3) or []] == [4]
    assert feed.since(4) == [] and feed.since(9) == []
    assert feed.since(1) is None  # before the feed: read from the database
    feed.publish([jobs_pb2.WatchJobResponse(sequence=s) for s in (5, 6)], 7, True)
    assert (feed.base, feed.newest, feed.terminal) == (3, 6, False)  # 7 not read yet
    assert feed.since(2) is None
    assert [e.sequence for e in feed.since(3) or []] == [4, 5, 6]
    feed.publish([jobs_pb2.WatchJobResponse(sequence=7)], 7, True)
    assert (feed.base, feed.newest, feed.terminal) == (4, 7, True)
