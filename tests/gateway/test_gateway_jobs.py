"""Datasets, training jobs, job events, registry, watch and SSE through the real gateway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import httpx
import nats.js.errors
import pytest
from google.protobuf import json_format
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import JOBS_STREAM, job_control_subject

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import ScriptedWorker, detect_zip, upload_dataset, wait_for

SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 3,
    "imgsz": 64,
    "batch": 4,
    "seed": 0,
}


async def _ready_dataset(harness: GatewayHarness, client: httpx.AsyncClient) -> dict:
    result = await upload_dataset(client, detect_zip(harness.tmp))
    assert result["http_status"] == 200, result
    dataset = result["dataset"]
    assert dataset["state"] == "DATASET_STATE_READY"
    return dataset


async def _job_state(client: httpx.AsyncClient, job_id: str) -> str:
    return str((await client.get(f"/v1/jobs/{job_id}")).json()["job"]["state"])


async def test_dataset_finalize_counts_and_manifest(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        assert dataset["format"] == "DATASET_FORMAT_YOLO_DETECT"
        assert dataset["classNames"] == ["circle", "square", "triangle"]
        assert int(dataset["imageCount"]) == 9
        splits = {s["name"]: s for s in dataset["splits"]}
        assert set(splits) == {"train", "val"}
        assert int(splits["train"]["imageCount"]) == 6
        manifest = await harness.gateway.store.get_bytes(dataset["manifestKey"])
        files = json.loads(manifest)["files"]
        assert any(f["path"] == "data.yaml" for f in files)
        snapshot = (await client.post(f"/v1/datasets/{dataset['id']}/snapshots", json={})).json()
        assert snapshot["snapshot"]["manifestSha256"] == dataset["manifestSha256"]
        # Finalizing twice is refused, and the dataset stays READY.
        again = await client.post(f"/v1/datasets/{dataset['id']}:finalize", json={})
        assert again.status_code == 400 and again.json()["status"] == "FAILED_PRECONDITION"
        assert (await client.get(f"/v1/datasets/{dataset['id']}")).json()["dataset"]["state"] == (
            "DATASET_STATE_READY"
        )


async def test_bad_archive_fails_dataset_naming_the_file(
    harness: GatewayHarness, tmp_path: Path
) -> None:
    import zipfile

    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data.yaml", "names: [a]\ntrain: images/train\nval: images/val\n")
        zf.writestr("images/train/x.jpg", b"not an image")
        zf.writestr("images/val/y.jpg", b"not an image either")
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        result = await upload_dataset(client, archive)
        assert result["http_status"] == 400
        fields = [v["field"] for d in result["details"] for v in d.get("fieldViolations", [])]
        assert "images/train/x.jpg" in fields
        listed = (await client.get("/v1/datasets")).json()["datasets"]
        assert listed[0]["state"] == "DATASET_STATE_FAILED"
        assert "images/" in listed[0]["failureReason"]


async def test_training_job_lifecycle_registry_watch_and_sse(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC}
        )
        assert created.status_code == 200, created.text
        job = created.json()["job"]
        job_id = job["id"]
        assert job["snapshotId"] and job["spec"]["batch"] == 4
        assert job["spec"]["@type"].endswith("visionmesh.training.v1.TrainingSpec")

        async def queued() -> bool:
            return await _job_state(client, job_id) == "JOB_STATE_QUEUED"

        await wait_for(queued, what="job QUEUED by the outbox relay")
        # The relay published exactly one request, with the job id as message id.
        message = await bus.js.get_last_msg(JOBS_STREAM, "vm.jobs.request.training")
        request = events_pb2.JobRequest.FromString(message.data or b"")
        assert request.job_id == job_id and message.headers["Nats-Msg-Id"] == job_id
        assert request.training.snapshot.manifest_sha256 == dataset["manifestSha256"]
        assert request.training.spec.lr0 > 0  # defaults filled by ValidateSpec

        tenant = request.tenant_id
        worker = ScriptedWorker(bus, job_id=job_id, tenant_id=tenant)
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        for epoch in (1, 2, 3):
            await worker.progress(epoch, 3)
            await worker.metrics(epoch, map50=0.1 * epoch, map50_95=0.05 * epoch)
        best_key = f"jobs/{job_id}/best.pt"
        await harness.gateway.store.put_bytes(best_key, b"weights")
        best = await worker.artifact("best.pt", best_key, 7)
        await worker.emit(
            model_trained=events_pb2.ModelTrained(
                framework="ultralytics",
                task="detect",
                architecture="yolo11n.yaml",
                class_names=dataset["classNames"],
                imgsz=64,
                metrics={"map50": 0.3},
                checkpoint=best,
            )
        )
        # A redelivered duplicate (same attempt and sequence) changes nothing.
        await worker.emit(
            sequence=worker.sequence,
            model_trained=events_pb2.ModelTrained(framework="ultralytics", checkpoint=best),
        )
        await worker.state(job_pb2.JOB_STATE_SUCCEEDED, metrics={"map50": 0.3})

        async def succeeded() -> bool:
            return await _job_state(client, job_id) == "JOB_STATE_SUCCEEDED"

        await wait_for(succeeded, what="job SUCCEEDED")
        done = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
        assert done["metrics"] == {"map50": 0.3}
        assert done["modelVersionId"]

        # A late event from the finished job cannot move it back.
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        metrics = (await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "map50"})).json()
        assert [p["value"] for p in metrics["points"]] == pytest.approx([0.1, 0.2, 0.3])

        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        assert [a["name"] for a in artifacts] == ["best.pt"]
        download = (await client.get(f"/v1/artifacts/{artifacts[0]['id']}:download")).json()
        async with httpx.AsyncClient() as s3:
            assert (await s3.get(download["url"])).content == b"weights"

        models = (await client.get("/v1/models")).json()["models"]
        assert len(models) == 1 and models[0]["name"] == "shapes-detect"
        model = (await client.get(f"/v1/models/{models[0]['id']}")).json()["model"]
        assert len(model["versions"]) == 1
        version = model["versions"][0]
        assert version["id"] == done["modelVersionId"] and version["version"] == 1
        assert version["classNames"] == ["circle", "square", "triangle"]
        assert version["checkpoint"]["key"] == best_key
        assert (await _job_state(client, job_id)) == "JOB_STATE_SUCCEEDED"

        # gRPC WatchJob replays every event in order and ends at the terminal state.
        async with harness.channel() as channel:
            stub = jobs_pb2_grpc.JobServiceStub(channel)
            events = [
                e
                async for e in stub.WatchJob(
                    jobs_pb2.WatchJobRequest(id=job_id),
                    metadata=(("authorization", f"Bearer {token}"),),
                )
            ]
        sequences = [e.sequence for e in events]
        assert sequences == list(range(1, len(events) + 1))
        states = [e.state_change.state for e in events if e.HasField("state_change")]
        assert states == [
            job_pb2.JOB_STATE_PENDING,
            job_pb2.JOB_STATE_QUEUED,
            job_pb2.JOB_STATE_RUNNING,
            job_pb2.JOB_STATE_SUCCEEDED,
        ]
        assert sum(1 for e in events if e.HasField("model_version_id")) == 1
        assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED

        # SSE: resume after the 5th event with Last-Event-ID.
        async with client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"last-event-id": "5"}
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            ids = [
                int(line.removeprefix("id:").strip())
                async for line in stream.aiter_lines()
                if line.startswith("id:")
            ]
        assert ids == sequences[5:]


async def test_cancel_queued_job_ends_it_and_signals_workers(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        job = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC})
        ).json()["job"]
        cancelled = (await client.post(f"/v1/jobs/{job['id']}:cancel", json={})).json()["job"]
        assert cancelled["state"] == "JOB_STATE_CANCELLED"
        again = (await client.post(f"/v1/jobs/{job['id']}:cancel", json={})).json()["job"]
        assert again["state"] == "JOB_STATE_CANCELLED"

        async def control_published() -> bool:
            try:
                await bus.js.get_last_msg("JOB_CONTROL", job_control_subject(job["id"]))
            except nats.js.errors.NotFoundError:
                return False
            return True

        await wait_for(control_published, what="cancel control message")
        listed = (await client.get("/v1/jobs", params={"state": "JOB_STATE_CANCELLED"})).json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]


async def test_running_job_cancel_goes_through_cancelling(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        job = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC})
        ).json()["job"]
        worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
        await worker.state(job_pb2.JOB_STATE_RUNNING)

        async def running() -> bool:
            return await _job_state(client, job["id"]) == "JOB_STATE_RUNNING"

        await wait_for(running, what="RUNNING")
        cancelling = (await client.post(f"/v1/jobs/{job['id']}:cancel", json={})).json()["job"]
        assert cancelling["state"] == "JOB_STATE_CANCELLING"
        await worker.state(job_pb2.JOB_STATE_CANCELLED)

        async def cancelled() -> bool:
            return await _job_state(client, job["id"]) == "JOB_STATE_CANCELLED"

        await wait_for(cancelled, what="CANCELLED")


async def test_other_tenants_resources_are_not_found(harness: GatewayHarness) -> None:
    admin = await harness.signup_and_login("admin-a")
    async with harness.http(admin) as client:
        dataset = await _ready_dataset(harness, client)
        job = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC})
        ).json()["job"]
        # The admin signs up a second user, who gets a tenant of their own.
        response = await client.post(
            "/v1/auth/signup", json={"username": "other-b", "password": "correct-horse-2"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["user"]["tenantId"] != job["tenantId"]
    async with harness.http() as anon:
        login = await anon.post(
            "/v1/auth/login", json={"username": "other-b", "password": "correct-horse-2"}
        )
        other = login.json()["accessToken"]
    async with harness.http(other) as client:
        for path in (
            f"/v1/jobs/{job['id']}",
            f"/v1/datasets/{dataset['id']}",
            f"/v1/jobs/{job['id']}/metrics",
            f"/v1/jobs/{job['id']}/artifacts",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["status"] == "NOT_FOUND"
        assert (await client.get("/v1/jobs")).json()["jobs"] == []
        cancel = await client.post(f"/v1/jobs/{job['id']}:cancel", json={})
        assert cancel.status_code == 404
        create = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC}
        )
        assert create.status_code == 404


async def test_invalid_spec_is_refused_with_the_field_named_over_rest_and_grpc(
    harness: GatewayHarness,
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        cases = {
            "spec.imgsz": {**SPEC, "imgsz": 100},
            "spec.epochs": {**SPEC, "epochs": 0},
            "spec.model": {**SPEC, "model": "yolo99x.yaml"},
            "spec.task": {**SPEC, "task": "classify", "model": "yolo11n-cls.yaml"},
            "spec.framework": {**SPEC, "framework": "keras"},
        }
        for field, spec in cases.items():
            response = await client.post(
                "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": spec}
            )
            assert response.status_code == 400, (field, response.text)
            fields = [
                v["field"] for d in response.json()["details"] for v in d.get("fieldViolations", [])
            ]
            assert field in fields, (field, fields)
        unknown = await client.post(
            "/v1/training/jobs",
            json={"datasetId": dataset["id"], "spec": {**SPEC, "epochz": 3}},
        )
        assert unknown.status_code == 400
        assert (await client.get("/v1/jobs")).json()["jobs"] == []  # nothing stored
    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.CreateTrainingJobRequest(dataset_id=dataset["id"])
        json_format.ParseDict({**SPEC, "imgsz": 100}, request.spec)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.CreateTrainingJob(request, metadata=(("authorization", f"Bearer {token}"),))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.imgsz" in (failure.value.details() or "")


async def test_rest_and_grpc_return_the_same_job(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = await _ready_dataset(harness, client)
        job = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC})
        ).json()["job"]
        await asyncio.sleep(0.5)  # let the relay settle the state
        rest = (await client.get(f"/v1/jobs/{job['id']}")).json()
    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        grpc_response = await stub.GetJob(
            jobs_pb2.GetJobRequest(id=job["id"]), metadata=(("authorization", f"Bearer {token}"),)
        )
    from_grpc = json_format.MessageToDict(grpc_response, always_print_fields_with_no_presence=True)
    assert rest == from_grpc
