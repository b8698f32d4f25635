"""Workers' job events through real NATS and the gateway's consumer: order, fencing, keys.

Events are published on JOB_EVENTS like a worker would; the gateway's JobEventConsumer
applies them one by one in stream order, so publishing a sentinel last and waiting for it
proves every earlier event was handled (applied or dropped).
"""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.common.events import EventBus
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import ScriptedWorker, detect_zip, upload_dataset, wait_for
from tests.gateway.test_gateway_jobs import SPEC


async def _queued_job(harness: GatewayHarness, client: httpx.AsyncClient) -> dict[str, Any]:
    """A job of the caller's tenant, published by the relay (QUEUED)."""
    result = await upload_dataset(client, detect_zip(harness.tmp))
    assert result["http_status"] == 200, result
    created = await client.post(
        "/v1/training/jobs", json={"datasetId": result["dataset"]["id"], "spec": SPEC}
    )
    assert created.status_code == 200, created.text
    job_id = created.json()["job"]["id"]

    async def queued() -> dict[str, Any] | None:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
        return job if job["state"] == "JOB_STATE_QUEUED" else None

    job: dict[str, Any] = await wait_for(queued, what="job QUEUED by the outbox relay")
    return job


async def _sentinel(client: httpx.AsyncClient, worker: ScriptedWorker, job_id: str) -> None:
    """Emits a last event and waits until the consumer has applied it (and all before it)."""
    await worker.metrics(99, sentinel=1.0)

    async def applied() -> bool:
        response = await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "sentinel"})
        return bool(response.json().get("points"))

    await wait_for(applied, what="the sentinel event applied")


def _model_trained(checkpoint: artifact_pb2.ArtifactRef) -> events_pb2.ModelTrained:
    return events_pb2.ModelTrained(
        framework="ultralytics",
        task="detect",
        architecture="yolo11n.yaml",
        class_names=["circle", "square", "triangle"],
        imgsz=64,
        metrics={"map50": 0.3},
        checkpoint=checkpoint,
    )


def _ref(key: str, name: str = "best.pt") -> artifact_pb2.ArtifactRef:
    return artifact_pb2.ArtifactRef(name=name, kind="checkpoint", key=key, size_bytes=7)


async def _watch_states(harness: GatewayHarness, token: str, job_id: str) -> list[int]:
    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        events = [
            e
            async for e in stub.WatchJob(
                jobs_pb2.WatchJobRequest(id=job_id),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        ]
    return [e.state_change.state for e in events if e.HasField("state_change")]


async def test_out_of_order_and_redelivered_events_of_one_attempt_converge(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        job = await _queued_job(harness, client)
        job_id = job["id"]
        worker = ScriptedWorker(bus, job_id=job_id, tenant_id=job["tenantId"])
        best_key = f"jobs/{job_id}/best.pt"
        await harness.gateway.store.put_bytes(best_key, b"weights")
        progress = job_pb2.JobProgress(epoch=1, total_epochs=1, fraction=1.0, phase="train")
        metrics = events_pb2.JobMetricsReported(
            points=[metric_pb2.MetricPoint(name="map50", value=0.3, epoch=1)]
        )
        running = events_pb2.JobStateChanged(state=job_pb2.JOB_STATE_RUNNING)
        succeeded = events_pb2.JobStateChanged(
            state=job_pb2.JOB_STATE_SUCCEEDED, metrics={"map50": 0.3}
        )
        artifact = events_pb2.JobArtifactUploaded(artifact=_ref(best_key))
        # The attempt's own order is 1..6; the stream delivers the outcome first (the
        # earlier events were nak'd and come back later), then redelivers some again. The
        # outcome itself is delivered once: acked, it never comes back.
        deliveries: list[tuple[int, dict[str, Any]]] = [
            (6, {"state_changed": succeeded}),
            (4, {"artifact": artifact}),
            (5, {"model_trained": _model_trained(_ref(best_key))}),
            (1, {"state_changed": running}),
            (3, {"metrics": metrics}),
            (2, {"progress": progress}),
            (4, {"artifact": artifact}),
            (5, {"model_trained": _model_trained(_ref(best_key))}),
            (3, {"metrics": metrics}),
            (1, {"state_changed": running}),
        ]
        for sequence, payload in deliveries:
            await worker.emit(sequence=sequence, **payload)
        worker.sequence = 6
        await _sentinel(client, worker, job_id)

        done = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
        assert done["state"] == "JOB_STATE_SUCCEEDED"
        assert done["metrics"] == {"map50": 0.3}
        assert done["modelVersionId"]
        assert int(done["attempts"]) == 1
        # Progress that arrived after the outcome is not shown on the finished job.
        assert done["progress"]["epoch"] == 0
        points = (await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "map50"})).json()
        assert [p["value"] for p in points["points"]] == [0.3]
        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        assert [a["key"] for a in artifacts] == [best_key]
        models = (await client.get("/v1/models")).json()["models"]
        assert len(models) == 1
        model = (await client.get(f"/v1/models/{models[0]['id']}")).json()["model"]
        assert [v["id"] for v in model["versions"]] == [done["modelVersionId"]]
        # Nothing went backwards: the late RUNNING was ignored, the job never left its end.
        assert await _watch_states(harness, token, job_id) == [
            job_pb2.JOB_STATE_PENDING,
            job_pb2.JOB_STATE_QUEUED,
            job_pb2.JOB_STATE_SUCCEEDED,
        ]


async def test_events_of_a_superseded_attempt_are_fenced_off(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        job = await _queued_job(harness, client)
        job_id = job["id"]
        old = ScriptedWorker(bus, job_id=job_id, tenant_id=job["tenantId"], attempt=1)
        new = ScriptedWorker(bus, job_id=job_id, tenant_id=job["tenantId"], attempt=2)
        old_key = f"jobs/{job_id}/attempt-1/best.pt"
        new_key = f"jobs/{job_id}/attempt-2/best.pt"
        await old.state(job_pb2.JOB_STATE_RUNNING)
        # The redelivered attempt reports progress first (its RUNNING is delayed): from now
        # on the first attempt is superseded, whatever it still sends.
        await new.emit(
            sequence=2,
            progress=job_pb2.JobProgress(epoch=1, total_epochs=1, fraction=0.5, phase="train"),
        )
        await old.metrics(1, map50=0.9)
        old_ref = await old.artifact("best.pt", old_key, 7)
        await old.emit(model_trained=_model_trained(old_ref))
        await old.state(job_pb2.JOB_STATE_SUCCEEDED, metrics={"map50": 0.9})
        await new.emit(
            sequence=1, state_changed=events_pb2.JobStateChanged(state=job_pb2.JOB_STATE_RUNNING)
        )
        new.sequence = 2
        await new.metrics(1, map50=0.5)
        new_ref = await new.artifact("best.pt", new_key, 7)
        await new.emit(model_trained=_model_trained(new_ref))
        await old.metrics(2, map50=0.95)  # still talking after being superseded
        await new.state(job_pb2.JOB_STATE_SUCCEEDED, metrics={"map50": 0.5})
        await old.artifact("late.pt", f"jobs/{job_id}/attempt-1/late.pt", 7)
        await _sentinel(client, new, job_id)

        done = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
        assert done["state"] == "JOB_STATE_SUCCEEDED"
        assert done["metrics"] == {"map50": 0.5}
        assert int(done["attempts"]) == 2
        points = (await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "map50"})).json()
        assert [p["value"] for p in points["points"]] == [0.5]
        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        assert [a["key"] for a in artifacts] == [new_key]
        models = (await client.get("/v1/models")).json()["models"]
        model = (await client.get(f"/v1/models/{models[0]['id']}")).json()["model"]
        assert len(model["versions"]) == 1
        assert model["versions"][0]["checkpoint"]["key"] == new_key


async def test_forged_artifact_keys_outside_the_jobs_prefix_are_refused(
    harness: GatewayHarness, bus: EventBus
) -> None:
    admin = await harness.signup_and_login("owner-a")
    async with harness.http(admin) as client:
        # Tenant A owns a dataset archive and a job's outputs.
        victim = await _queued_job(harness, client)
        await harness.gateway.store.put_bytes(f"jobs/{victim['id']}/best.pt", b"secret")
        signup = await client.post(
            "/v1/auth/signup", json={"username": "mallory-b", "password": "correct-horse-2"}
        )
        assert signup.status_code == 200, signup.text
    async with harness.gateway.db.session() as session:
        victim_archive = await session.scalar(
            select(db.Dataset.archive_key).where(db.Dataset.tenant_id == victim["tenantId"])
        )
    assert victim_archive
    async with harness.http() as anon:
        login = await anon.post(
            "/v1/auth/login", json={"username": "mallory-b", "password": "correct-horse-2"}
        )
        token = login.json()["accessToken"]
    async with harness.http(token) as client:
        job = await _queued_job(harness, client)
        job_id = job["id"]
        assert job["tenantId"] != victim["tenantId"]
        # A compromised (or buggy) worker of tenant B's job reports other tenants' keys.
        worker = ScriptedWorker(bus, job_id=job_id, tenant_id=job["tenantId"])
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        forged = [
            victim_archive,
            f"jobs/{victim['id']}/best.pt",
            f"jobs/{job_id}/../{victim['id']}/best.pt",
            f"jobs/{job_id}/./../../jobs/{victim['id']}/best.pt",
            f"/jobs/{job_id}/best.pt",
            f"jobs/{job_id}//best.pt",
            f"jobs/{job_id}",
            f"jobs/{job_id}/",
            f"jobs/{job_id}x/best.pt",
            f"jobs/{job_id}/a\\..\\b",
            f"jobs/{job_id}/{'x' * 600}",
        ]
        for key in forged:
            await worker.artifact("best.pt", key, 7)
        await worker.emit(model_trained=_model_trained(_ref(f"jobs/{victim['id']}/best.pt")))
        own_key = f"jobs/{job_id}/sub/results.csv"
        await harness.gateway.store.put_bytes(own_key, b"epoch,map50\n")
        await worker.artifact("results.csv", own_key, 12)
        await _sentinel(client, worker, job_id)

        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        assert [a["key"] for a in artifacts] == [own_key]
        download = (await client.get(f"/v1/artifacts/{artifacts[0]['id']}:download")).json()
        async with httpx.AsyncClient() as s3:
            assert (await s3.get(download["url"])).content == b"epoch,map50\n"
        assert (await client.get("/v1/models")).json()["models"] == []
        assert (await client.get(f"/v1/jobs/{job_id}")).json()["job"]["modelVersionId"] == ""
    async with harness.gateway.db.session() as session:
        keys = (
            await session.scalars(select(db.Artifact.key).where(db.Artifact.job_id == job_id))
        ).all()
        assert list(keys) == [own_key]
        versions = (
            await session.scalars(select(db.ModelVersion).where(db.ModelVersion.job_id == job_id))
        ).all()
        assert list(versions) == []
