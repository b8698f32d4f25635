"""The real inference service behind an in-process gateway, for the gateway's and the CLI's
inference tests: the service runs in-process on the gateway's bucket and verifies the tokens
the gateway mints, model versions are registered as training workers register them, and
their exports are real packages of the export pipeline, published as the export worker
publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from google.protobuf import json_format
from PIL import Image, ImageDraw
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import image_pb2, job_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.auth import Principal, bind_principal
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobHandler, JobMetrics, JobWorker, worker_spec
from visionmesh.common.storage import ObjectStoreConfig
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.inference.app import SERVICE_NAME, InferenceService
from visionmesh.inference.config import InferenceSettings
from visionmesh.inference.worker.batch import BatchInferenceHandler

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import wait_for
from tests.gateway.test_export_jobs import (
    apply_exported,
    create_export,
    register_version,
    tenant_of,
)
from tests.inference.exports import publish_export

# Confident random-init models score random pictures anywhere from 0 to 1.
CONF = 0.3
READY = "DEPLOYMENT_STATE_READY"
TERMINAL = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


@dataclass
class InferenceHarness:
    gateway: GatewayHarness
    service: InferenceService
    detect: ExportPackage
    """The detect package every exported version of `exported_version` publishes."""

    def predict_calls(self) -> float:
        """Predict RPCs the inference service has started, whatever their outcome."""
        return self.rpcs_started("Predict")

    def rpcs_started(self, method: str) -> float:
        value = self.service.grpc.registry.get_sample_value(
            "grpc_server_started_total",
            {
                "grpc_service": SERVICE_NAME,
                "grpc_method": method,
                "grpc_type": "unary",
                "transport": "grpc",
            },
        )
        return value or 0.0

    async def direct(self, tenant_id: str, method: str, *args: Any) -> Any:
        """A call of the inference service's own core as a member of `tenant_id`: what the
        service answers without the gateway in between."""
        caller = Principal(subject="direct", tenant_id=tenant_id, role="member", kind="user")
        with bind_principal(caller):
            return await getattr(self.service.core, method)(*args)


def inference_settings(
    data_dir: Path,
    *,
    database_url: str,
    store: ObjectStoreConfig,
    public_key_file: Path,
    nats_url: str,
) -> InferenceSettings:
    return InferenceSettings(
        data_dir=data_dir,
        database_url=database_url,
        grpc_port=0,
        kserve_grpc_port=0,
        kserve_http_port=0,
        s3_endpoint=store.endpoint,
        s3_access_key=store.access_key,
        s3_secret_key=store.secret_key,
        s3_bucket=store.bucket,
        service_token_public_key_file=public_key_file,
        reconcile_seconds=0.2,
        batch_queue_delay_ms=1.0,
        nats_url=nats_url,
    )


@contextlib.asynccontextmanager
async def running_inference(settings: InferenceSettings) -> AsyncIterator[InferenceService]:
    """The service as `serve` runs it, minus batch workers (see `batch_worker`): its tables
    migrated, its reconcile loop running, its InferenceService port open."""
    service = InferenceService(settings)
    await service.start()
    loop = asyncio.create_task(service.manager.run())
    await service.grpc.start()
    try:
        yield service
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await service.grpc.stop(grace=0)
        await service.stop()


@contextlib.asynccontextmanager
async def batch_worker(
    bus: EventBus, service: InferenceService, handler: JobHandler | None = None
) -> AsyncIterator[None]:
    """A batch inference job worker of the service on the shared job runtime, as `serve`
    runs it; `handler` in place of the service's own (another chunk size)."""
    worker = JobWorker(
        bus=bus,
        handler=handler or service.batch_handler,
        spec=worker_spec(job_pb2.JOB_KIND_BATCH_INFERENCE, service.settings),
        metrics=JobMetrics.create(CollectorRegistry()),
    )
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


def deployment_handler(service: InferenceService, *, chunk_size: int) -> BatchInferenceHandler:
    """The service's batch handler for jobs over deployments, with another chunk size."""

    @contextlib.asynccontextmanager
    async def open_model(
        tenant_id: str, spec: inference_pb2.BatchInferenceSpec
    ) -> AsyncIterator[Any]:
        async with service.core.deployed_model(tenant_id, spec.deployment) as model:
            yield model

    return BatchInferenceHandler(
        store=service.objects,
        open_model=open_model,
        work_root=service.settings.data_dir / "paged-batch-work",
        max_image_bytes=service.settings.max_image_bytes,
        max_image_pixels=service.settings.max_image_pixels,
        chunk_size=chunk_size,
    )


async def exported_version(
    served: InferenceHarness,
    token: str,
    *,
    package: ExportPackage | None = None,
    exports: int = 1,
    framework: str = "ultralytics",
) -> tuple[str, list[str]]:
    """A model version with `exports` successful exports of `package` (the detect package
    by default), each published under its own export job; the version's id and the export
    job ids, oldest first."""
    harness = served.gateway
    package = package or served.detect
    task = package.metadata.task
    async with harness.http(token) as client:
        version_id = await register_version(
            harness, await tenant_of(client), framework=framework, task=task
        )
        jobs = []
        for _ in range(exports):
            job = await create_export(client, version_id)
            result = await publish_export(
                harness.gateway.store, package, job["id"], model_version_id=version_id
            )
            result.spec.model_version_id = version_id
            assert await apply_exported(harness, job, result)
            jobs.append(job["id"])
    return version_id, jobs


async def deployment_settled(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The deployment once it is no longer loading (READY or FAILED), read through the
    gateway."""

    async def settled() -> dict[str, Any] | None:
        response = await client.get(f"/v1/deployments/{name}")
        assert response.status_code == 200, response.text
        deployment: dict[str, Any] = response.json()["deployment"]
        return None if deployment["state"] == "DEPLOYMENT_STATE_LOADING" else deployment

    found: dict[str, Any] = await wait_for(settled, within=60, what=f"deployment {name} loaded")
    return found


async def deploy(client: httpx.AsyncClient, name: str, *, model_version_id: str) -> dict[str, Any]:
    """Deploys a version through the gateway and waits until it serves."""
    response = await client.post(
        "/v1/deployments", json={"name": name, "modelVersionId": model_version_id}
    )
    assert response.status_code == 200, response.text
    deployment = await deployment_settled(client, name)
    assert deployment["state"] == READY, deployment
    return deployment


async def job_finished(
    client: httpx.AsyncClient, job_id: str, *, within: float = 60
) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
        return job if job["state"] in TERMINAL else None

    found: dict[str, Any] = await wait_for(finished, within=within, what=f"job {job_id} ended")
    return found


def picture(seed: int, size: tuple[int, int] = (96, 80), *, kind: str = "JPEG") -> bytes:
    """A small picture (width, height) of coloured discs on a plain ground."""
    rng = np.random.default_rng(seed)
    width, height = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        extent = int(rng.integers(10, 20))
        draw.ellipse(
            (x, y, x + extent, y + extent), fill=tuple(int(v) for v in rng.integers(0, 255, 3))
        )
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def predict_request(
    deployment: str, *images: bytes, **options: Any
) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        deployment=deployment,
        images=[image_pb2.Image(data=data) for data in images],
        options=inference_pb2.PredictOptions(**options),
    )


def without_timing(
    response: dict[str, Any] | inference_pb2.PredictResponse,
) -> inference_pb2.PredictResponse:
    """A Predict answer (REST's JSON or the message) without its timing, which differs per
    call."""
    message = inference_pb2.PredictResponse()
    if isinstance(response, dict):
        json_format.ParseDict(response, message)
    else:
        message.CopyFrom(response)
    message.ClearField("timing")
    return message
