"""The transactional outbox: a job accepted while NATS is down is published once it is back."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import JOBS_STREAM
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayFactory
from tests.gateway.helpers import detect_zip, upload_dataset, wait_for
from tests.gateway.test_gateway_jobs import SPEC


async def test_job_created_while_nats_is_down_is_published_exactly_once_later(
    make_gateway: GatewayFactory, tmp_path: Path, database_url: str
) -> None:
    store_dir = tmp_path / "nats-store"
    nats = NatsServer(store_dir=store_dir, log_dir=tmp_path)
    await nats.start()
    await nats.wait_ready()
    restarted: NatsServer | None = None
    try:
        harness = await make_gateway(nats_url=nats.url, database_url=database_url)
        token = await harness.signup_and_login()
        async with harness.http(token) as client:
            result = await upload_dataset(client, detect_zip(harness.tmp))
            dataset_id = result["dataset"]["id"]

            await nats.stop()
            created = await client.post(
                "/v1/training/jobs", json={"datasetId": dataset_id, "spec": SPEC}
            )
            assert created.status_code == 200, created.text
            job_id = created.json()["job"]["id"]

            async def relay_tried() -> bool:
                async with harness.gateway.db.session() as session:
                    row = await session.scalar(
                        select(db.OutboxMessage).where(db.OutboxMessage.job_id == job_id)
                    )
                    return row is not None and row.attempts > 0

            await wait_for(relay_tried, within=30, what="a failed publish attempt")
            job = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
            assert job["state"] == "JOB_STATE_PENDING"

            restarted = NatsServer(store_dir=store_dir, port=nats.port, log_dir=tmp_path)
            await restarted.start()
            await restarted.wait_ready()

            async def queued() -> bool:
                response = await client.get(f"/v1/jobs/{job_id}")
                return bool(response.json()["job"]["state"] == "JOB_STATE_QUEUED")

            await wait_for(queued, within=60, what="QUEUED after NATS came back")

        async with EventBus(servers=restarted.url, name="check") as bus:
            info = await bus.stream_info(JOBS_STREAM)
            assert info.state.messages == 1
        async with harness.gateway.db.session() as session:
            unpublished = await session.scalar(
                select(func.count())
                .select_from(db.OutboxMessage)
                .where(db.OutboxMessage.published_at.is_(None))
            )
            assert unpublished == 0
        # Another relay round (e.g. after a gateway restart) sends nothing twice.
        assert await harness.gateway.relay.relay_once() == (0, 0)
    finally:
        for server in (restarted, nats):
            if server is not None and server.running:
                await server.stop()
