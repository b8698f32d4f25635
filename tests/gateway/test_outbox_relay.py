"""The outbox relay under NATS trouble and with rows that can never be published."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import ensure_job_streams, job_control_subject, job_request_subject
from visionmesh.gateway.app import MIGRATIONS
from visionmesh.gateway.core.jobs import now
from visionmesh.gateway.core.outbox import DEAD_LETTER_REASON, OutboxRelay
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayFactory, GatewayHarness
from tests.gateway.helpers import detect_zip, upload_dataset, wait_for
from tests.gateway.test_gateway_jobs import SPEC


async def _timed(what: str, call: Awaitable[httpx.Response], took: dict[str, float]) -> Any:
    started = time.monotonic()
    response = await call
    took[what] = max(took.get(what, 0.0), time.monotonic() - started)
    assert response.status_code == 200, (what, response.text)
    return response.json()


async def test_writes_stay_prompt_while_nats_publishes_hang(
    make_gateway: GatewayFactory, tmp_path: Path, database_url: str
) -> None:
    nats = NatsServer(store_dir=tmp_path / "nats-store", log_dir=tmp_path)
    await nats.start()
    await nats.wait_ready()
    try:
        harness = await make_gateway(nats_url=nats.url, database_url=database_url)
        token = await harness.signup_and_login("owner")
        async with harness.http(token) as client, harness.http() as anon:
            result = await upload_dataset(client, detect_zip(harness.tmp))
            dataset_id = result["dataset"]["id"]
            # NATS goes away: every publish now waits for its full timeout, made long here
            # so that a relay holding a transaction across it would stall these writes.
            harness.gateway.relay.publish_timeout = 8.0
            await nats.stop()
            took: dict[str, float] = {}
            for _ in range(2):
                created = await _timed(
                    "create job",
                    client.post("/v1/training/jobs", json={"datasetId": dataset_id, "spec": SPEC}),
                    took,
                )
                await asyncio.sleep(0.3)  # the woken relay is publishing it by now
                await _timed(
                    "login",
                    anon.post(
                        "/v1/auth/login", json={"username": "owner", "password": "correct-horse-1"}
                    ),
                    took,
                )
                await _timed(
                    "create dataset", client.post("/v1/datasets", json={"name": "x"}), took
                )
                cancelled = await _timed(
                    "cancel job",
                    client.post(f"/v1/jobs/{created['job']['id']}:cancel", json={}),
                    took,
                )
                assert cancelled["job"]["state"] == "JOB_STATE_CANCELLED"
            assert max(took.values()) < 3.0, took
            # The relay was trying (and failing) to publish meanwhile.

            async def relay_tried() -> bool:
                async with harness.gateway.db.session() as session:
                    tried = await session.scalar(
                        select(db.OutboxMessage.id).where(db.OutboxMessage.attempts > 0)
                    )
                return tried is not None

            await wait_for(relay_tried, within=20, what="a failed publish attempt")
    finally:
        if nats.running:
            await nats.stop()


async def _pending_job(
    harness: GatewayHarness,
    template_id: str,
    *,
    subject: str | None = None,
    payload_type: str | None = None,
    payload: bytes | None = None,
) -> str:
    """A copy of job `template_id`, PENDING, with its outbox row as given (the default is a
    valid request), written straight to the database without waking the relay."""
    async with harness.gateway.db.session() as session:
        template = await session.get(db.Job, template_id)
        assert template is not None
        job_id = db.new_id()
        columns = {c.key: getattr(template, c.key) for c in db.Job.__table__.columns}
        created = now()
        columns.update(
            id=job_id,
            state=job_pb2.JOB_STATE_PENDING,
            last_event_sequence=0,
            created_at=created,
            updated_at=created,
        )
        session.add(db.Job(**columns))
        request = events_pb2.JobRequest(
            job_id=job_id, tenant_id=template.tenant_id, kind=job_pb2.JOB_KIND_TRAINING
        )
        session.add(
            db.OutboxMessage(
                subject=subject or job_request_subject(job_pb2.JOB_KIND_TRAINING),
                job_id=job_id,
                msg_id=job_id,
                payload_type=payload_type or request.DESCRIPTOR.full_name,
                payload=request.SerializeToString() if payload is None else payload,
            )
        )
    return job_id


async def test_unpublishable_rows_are_dead_lettered_and_the_rest_flows_at_normal_pace(
    harness: GatewayHarness,
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        result = await upload_dataset(client, detect_zip(harness.tmp))
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": result["dataset"]["id"], "spec": SPEC}
        )
        template = created.json()["job"]["id"]

        async def state(job_id: str) -> dict[str, Any]:
            job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
            return job

        poison = {
            "unknown type": await _pending_job(
                harness, template, payload_type="visionmesh.nowhere.v1.Missing"
            ),
            "undecodable": await _pending_job(harness, template, payload=b"\x0a\xff"),
            "no stream": await _pending_job(harness, template, subject="vm.nowhere.request"),
        }
        harness.gateway.relay.wakeup()

        async def all_failed() -> bool:
            jobs = [await state(job_id) for job_id in poison.values()]
            return all(job["state"] == "JOB_STATE_FAILED" for job in jobs)

        await wait_for(all_failed, within=30, what="the poison jobs FAILED")
        for what, job_id in poison.items():
            job = await state(job_id)
            assert job["error"]["reason"] == DEAD_LETTER_REASON, what
            assert job["error"]["message"], what
        async with harness.gateway.db.session() as session:
            rows = (
                await session.scalars(
                    select(db.OutboxMessage).where(db.OutboxMessage.job_id.in_(poison.values()))
                )
            ).all()
        assert len(rows) == 3
        for row in rows:
            assert row.dead_lettered_at is not None and row.published_at is None
            assert row.last_error
        by_job = {row.job_id: row for row in rows}
        assert "visionmesh.nowhere.v1.Missing" in by_job[poison["unknown type"]].last_error
        # Refused by the server: retried a few times first, in case it was passing.
        assert by_job[poison["no stream"]].attempts > 1

        # Nothing is left backing off: a row written by another replica (no wake-up here)
        # goes out within a few poll intervals.
        started = time.monotonic()
        good = await _pending_job(harness, template)

        async def queued() -> bool:
            return (await state(good))["state"] == "JOB_STATE_QUEUED"

        await wait_for(queued, within=5, interval=0.05, what="the next job QUEUED")
        assert time.monotonic() - started < 2.0
        # Dead letters stay put: another round sends nothing and fails nothing.
        assert await harness.gateway.relay.relay_once() == (0, 0)


async def test_a_row_being_published_is_not_taken_by_another_relay(
    make_gateway: GatewayFactory, tmp_path: Path, database_url: str
) -> None:
    nats = NatsServer(store_dir=tmp_path / "nats-store", log_dir=tmp_path)
    await nats.start()
    await nats.wait_ready()
    try:
        harness = await make_gateway(nats_url=nats.url, database_url=database_url)
        token = await harness.signup_and_login()
        async with harness.http(token) as client:
            result = await upload_dataset(client, detect_zip(harness.tmp))
            created = await client.post(
                "/v1/training/jobs", json={"datasetId": result["dataset"]["id"], "spec": SPEC}
            )
            template = created.json()["job"]["id"]

            async def queued() -> bool:
                job = (await client.get(f"/v1/jobs/{template}")).json()["job"]
                return bool(job["state"] == "JOB_STATE_QUEUED")

            await wait_for(queued, what="QUEUED")
        await nats.stop()
        # Two replicas' relays on one database (the gateway's own one keeps running too).
        first = OutboxRelay(
            db=harness.gateway.db,
            bus=harness.gateway.bus,
            watchers=harness.gateway.watchers,
            publish_timeout=3.0,
        )
        second = OutboxRelay(
            db=harness.gateway.db, bus=harness.gateway.bus, watchers=harness.gateway.watchers
        )
        await _pending_job(harness, template)
        # Whichever relay claims the row first hangs in its publish; no other one takes it.
        rounds = [asyncio.create_task(relay.relay_once()) for relay in (first, second)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        assert await second.relay_once() == (0, 0)
        assert await first.relay_once() == (0, 0)
        assert time.monotonic() - started < 1.0
        for task in rounds:
            task.cancel()
        await asyncio.gather(*rounds, return_exceptions=True)
    finally:
        if nats.running:
            await nats.stop()


class _NoWatchers:
    def notify(self, job_id: str) -> None:
        pass


async def test_a_row_failing_for_hours_keeps_its_backoff_bounded(
    tmp_path: Path, database_url: str
) -> None:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    nats = NatsServer(store_dir=tmp_path / "nats-store", log_dir=tmp_path)
    await nats.start()
    await nats.wait_ready()
    database = Database(database_url)
    try:
        async with EventBus(servers=nats.url, name="relay") as bus:
            await nats.stop()
            relay = OutboxRelay(
                db=database,
                bus=bus,
                watchers=_NoWatchers(),  # type: ignore[arg-type]
                publish_timeout=0.5,
            )
            control = events_pb2.JobControl(job_id="j", action=events_pb2.JOB_CONTROL_ACTION_CANCEL)
            async with database.session() as session:
                # An outage of hours: thousands of failed attempts already.
                row = db.OutboxMessage(
                    subject=job_control_subject("j"),
                    msg_id="j/cancel",
                    payload_type=control.DESCRIPTOR.full_name,
                    payload=control.SerializeToString(),
                    attempts=5000,
                )
                session.add(row)
            tried = now()
            assert await relay.relay_once() == (0, 1)
            async with database.session() as session:
                stored = await session.get(db.OutboxMessage, row.id)
                assert stored is not None
                assert stored.attempts == 5001 and stored.dead_lettered_at is None
                assert stored.claimed_until is not None
                assert stored.claimed_until <= tried + timedelta(seconds=15)
    finally:
        await database.dispose()
        if nats.running:
            await nats.stop()


async def test_a_claim_left_by_a_dead_relay_is_taken_over_once_its_lease_ends(
    nats_server: NatsServer, database_url: str
) -> None:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    database = Database(database_url)
    try:
        async with EventBus(servers=nats_server.url, name="relay") as bus:
            await ensure_job_streams(bus)
            relay = OutboxRelay(db=database, bus=bus, watchers=_NoWatchers())  # type: ignore[arg-type]
            rows = {}
            async with database.session() as session:
                # Claimed by a replica that died mid-publish: one lease still runs, one ended.
                for name, claimed_until in (
                    ("running", now() + timedelta(seconds=30)),
                    ("ended", now() - timedelta(seconds=1)),
                ):
                    job_id = db.new_id()
                    control = events_pb2.JobControl(
                        job_id=job_id, action=events_pb2.JOB_CONTROL_ACTION_CANCEL
                    )
                    rows[name] = db.OutboxMessage(
                        subject=job_control_subject(job_id),
                        msg_id=f"{job_id}/cancel",
                        payload_type=control.DESCRIPTOR.full_name,
                        payload=control.SerializeToString(),
                        claimed_until=claimed_until,
                    )
                    session.add(rows[name])
            assert await relay.relay_once() == (1, 0)
            async with database.session() as session:
                running = await session.get(db.OutboxMessage, rows["running"].id)
                ended = await session.get(db.OutboxMessage, rows["ended"].id)
                assert running is not None and running.published_at is None
                assert ended is not None and ended.published_at is not None
                assert ended.claimed_until is None
    finally:
        await database.dispose()
