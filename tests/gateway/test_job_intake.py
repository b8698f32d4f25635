"""Job intake needs no training service: specs are validated in the gateway (shared rules)."""

from __future__ import annotations

import socket

import grpc
import pytest
from google.protobuf import json_format
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import JOBS_STREAM, job_request_subject

from tests.gateway.conftest import GatewayFactory
from tests.gateway.helpers import classify_zip, detect_zip, upload_dataset, wait_for

SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 3,
    "imgsz": 64,
}


def _dead_address() -> str:
    """A local port nobody listens on: a training service that is down (or still starting)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _fields(body: dict) -> list[str]:
    return [v["field"] for d in body.get("details", []) for v in d.get("fieldViolations", [])]


async def test_jobs_are_accepted_and_queued_while_the_training_service_is_down(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str, bus: EventBus
) -> None:
    """Before: CreateTrainingJob called training's ValidateSpec and answered 503 here."""
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, training_addr=_dead_address()
    )
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        dataset = (await upload_dataset(client, detect_zip(harness.tmp)))["dataset"]
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": SPEC}
        )
        assert created.status_code == 200, created.text
        job = created.json()["job"]
        # Defaults filled in by the gateway, as the training service did.
        assert job["spec"]["batch"] == 16 and job["spec"]["lr0"] == pytest.approx(0.01)
        assert job["spec"]["device"] == "auto" and job["spec"]["optimizer"] == "auto"

        async def queued() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_QUEUED")

        await wait_for(queued, what="job QUEUED with no training service")

    # What a worker that starts later finds on the work queue.
    message = await bus.js.get_last_msg(JOBS_STREAM, job_request_subject(job_pb2.JOB_KIND_TRAINING))
    request = events_pb2.JobRequest.FromString(message.data or b"")
    assert request.job_id == job["id"]
    assert request.training.spec.model == "yolo11n.yaml"
    assert request.training.spec.batch == 16 and request.training.spec.patience == 100


async def test_bad_specs_are_still_invalid_argument_with_the_field_named(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> None:
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, training_addr=_dead_address()
    )
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        detect = (await upload_dataset(client, detect_zip(harness.tmp), name="det"))["dataset"]
        classify = (await upload_dataset(client, classify_zip(harness.tmp), name="cls"))["dataset"]
        cases = [
            (detect, {**SPEC, "imgsz": 100}, "spec.imgsz"),
            (detect, {**SPEC, "epochs": 0}, "spec.epochs"),
            (detect, {**SPEC, "model": "yolo99x.yaml"}, "spec.model"),
            (detect, {**SPEC, "model": "yolo11n-cls.yaml"}, "spec.model"),
            (detect, {**SPEC, "task": "classify", "model": "yolo11n-cls.yaml"}, "spec.task"),
            (detect, {**SPEC, "framework": "keras"}, "spec.framework"),
            (detect, {**SPEC, "augment": {"fliplr": 1.5}}, "spec.augment.fliplr"),
            (
                detect,
                {**SPEC, "dataLoading": {"numWorkers": 0, "prefetchFactor": 2}},
                "spec.data_loading.prefetch_factor",
            ),
            (
                classify,
                {
                    "framework": "torchvision",
                    "task": "classify",
                    "model": "resnet7",
                    "epochs": 1,
                    "imgsz": 64,
                },
                "spec.model",
            ),
            # Architecture-specific image sizes, known without torch.
            (
                classify,
                {
                    "framework": "torchvision",
                    "task": "classify",
                    "model": "inception_v3",
                    "epochs": 1,
                    "imgsz": 64,
                },
                "spec.imgsz",
            ),
        ]
        for dataset, spec, field in cases:
            response = await client.post(
                "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": spec}
            )
            assert response.status_code == 400, (field, response.text)
            assert field in _fields(response.json()), (field, response.text)
        good = await client.post(
            "/v1/training/jobs",
            json={
                "datasetId": classify["id"],
                "spec": {
                    "framework": "torchvision",
                    "task": "classify",
                    "model": "resnet18",
                    "epochs": 1,
                    "imgsz": 64,
                },
            },
        )
        assert good.status_code == 200, good.text
        assert len((await client.get("/v1/jobs")).json()["jobs"]) == 1  # only the good one

    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.CreateTrainingJobRequest(dataset_id=detect["id"])
        json_format.ParseDict({**SPEC, "imgsz": 100}, request.spec)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.CreateTrainingJob(request, metadata=(("authorization", f"Bearer {token}"),))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.imgsz" in (failure.value.details() or "")


async def test_public_validate_spec_answers_while_the_training_service_is_down(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> None:
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, training_addr=_dead_address()
    )
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        ok = await client.post(
            "/v1/training/spec:validate", json={"spec": SPEC, "datasetTask": "detect"}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["spec"]["batch"] == 16
        bad = await client.post("/v1/training/spec:validate", json={"spec": {**SPEC, "imgsz": 100}})
        assert bad.status_code == 400, bad.text
        assert _fields(bad.json()) == ["spec.imgsz"]
    async with harness.channel() as channel:
        stub = training_pb2_grpc.TrainingServiceStub(channel)
        request = training_pb2.ValidateSpecRequest(dataset_task="classify")
        json_format.ParseDict(SPEC, request.spec)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.ValidateSpec(request, metadata=(("authorization", f"Bearer {token}"),))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.task" in (failure.value.details() or "")
