"""The embedding service as it runs: its gRPC server with service tokens, the collections
table and Qdrant Edge, gateway-resolved backbones from the object store, and a job on the
real runtime writing points the online API then finds."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import artifact_pb2, image_pb2, job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    generate_signing_key,
    public_key_pem,
)
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobMetrics, JobWorker, JobWorkerSpec
from visionmesh.common.specs.embedding import RESOLVED_BACKBONE_SCOPE
from visionmesh.common.storage import ObjectStoreConfig
from visionmesh.common.subjects import JOB_EVENTS_STREAM, ensure_job_streams, job_request_subject
from visionmesh.embedding.app import EmbeddingService
from visionmesh.embedding.config import EmbeddingSettings

from tests.embedding.env import DINOV2, save_dinov2
from tests.models import classifier_checkpoint

pytestmark = pytest.mark.timeout(180)

KIND = job_pb2.JOB_KIND_EMBEDDING


def _caller(tenant: str, *scopes: str) -> Principal:
    return Principal(
        subject=f"user-{tenant}", tenant_id=tenant, role="member", kind="user", scopes=scopes
    )


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest_asyncio.fixture
async def service(
    tmp_path: Path, object_store_config: ObjectStoreConfig, nats_server: NatsServer
) -> AsyncIterator[tuple[EmbeddingService, ServiceTokenSigner]]:
    signer = ServiceTokenSigner(private_key=generate_signing_key())
    key = tmp_path / "gateway.pub"
    key.write_bytes(public_key_pem(signer.public_key))
    save_dinov2(tmp_path / "models")
    settings = EmbeddingSettings(
        data_dir=tmp_path / "data",
        dinov2_dir=tmp_path / "models",
        grpc_port=0,
        device="cpu",
        embed_batch_size=4,
        s3_endpoint=object_store_config.endpoint,
        s3_access_key=object_store_config.access_key,
        s3_secret_key=object_store_config.secret_key,
        s3_bucket=object_store_config.bucket,
        service_token_public_key_file=key,
        nats_url=nats_server.url,
    )
    running = EmbeddingService(settings)
    await running.start()
    await running.grpc.start()
    try:
        yield running, signer
    finally:
        await running.grpc.stop(grace=0)
        await running.stop()
        with contextlib.suppress(Exception):
            await running.objects.remove_bucket()


def _metadata(signer: ServiceTokenSigner, principal: Principal) -> tuple[tuple[str, str], ...]:
    token = signer.sign(audience="embedding", principal=principal)
    return (("authorization", f"Bearer {token}"),)


async def test_collections_upsert_and_search_over_grpc_per_tenant(
    service: tuple[EmbeddingService, ServiceTokenSigner],
) -> None:
    running, signer = service
    alice = _metadata(signer, _caller("tenant-a"))
    bob = _metadata(signer, _caller("tenant-b"))
    async with grpc.aio.insecure_channel(running.grpc.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        capabilities = await stub.GetCapabilities(
            embedding_pb2.GetCapabilitiesRequest(), metadata=alice
        )
        assert [m.name for m in capabilities.models] == [DINOV2]
        assert capabilities.default_model == DINOV2
        created = await stub.CreateCollection(
            embedding_pb2.CreateCollectionRequest(name="products", model=DINOV2), metadata=alice
        )
        assert created.collection.dim == 32
        upserted = await stub.UpsertImages(
            embedding_pb2.UpsertImagesRequest(
                collection="products",
                points=[
                    embedding_pb2.ImagePoint(
                        id=f"img-{i}", image=image_pb2.Image(data=_png(i)), product_id=f"p{i}"
                    )
                    for i in range(3)
                ],
            ),
            metadata=alice,
        )
        assert upserted.points_count == 3
        found = await stub.Search(
            embedding_pb2.SearchRequest(
                collection="products", image=image_pb2.Image(data=_png(1)), top_k=1
            ),
            metadata=alice,
        )
        assert [(p.id, p.product_id) for p in found.points] == [("img-1", "p1")]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetCollection(
                embedding_pb2.GetCollectionRequest(name="products"), metadata=bob
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetCapabilities(embedding_pb2.GetCapabilitiesRequest())
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_backbone_resolved_by_the_gateway_is_loaded_from_the_object_store(
    service: tuple[EmbeddingService, ServiceTokenSigner], tmp_path: Path
) -> None:
    running, signer = service
    checkpoint = classifier_checkpoint(tmp_path / "resnet.pt").read_bytes()
    await running.objects.put_bytes("jobs/train-1/best.pt", checkpoint)
    backbone = embedding_pb2.ResolvedBackbone(
        model_version_id="mv-1",
        checkpoint=artifact_pb2.ArtifactRef(
            key="jobs/train-1/best.pt", sha256=hashlib.sha256(checkpoint).hexdigest()
        ),
        framework="torchvision",
        imgsz=64,
    )
    request = embedding_pb2.CreateCollectionRequest(
        name="cutouts", model="mv-mv-1", backbone=backbone
    )
    async with grpc.aio.insecure_channel(running.grpc.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        # Only the gateway may hand a checkpoint over.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.CreateCollection(request, metadata=_metadata(signer, _caller("tenant-a")))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        gateway = _metadata(signer, _caller("tenant-a", RESOLVED_BACKBONE_SCOPE))
        created = await stub.CreateCollection(request, metadata=gateway)
        assert created.collection.dim == 512  # resnet18's pooled features
        # Later calls name the model alone: the reference was kept.
        embedded = await stub.Embed(
            embedding_pb2.EmbedRequest(model="mv-mv-1", images=[image_pb2.Image(data=_png(7))]),
            metadata=_metadata(signer, _caller("tenant-a")),
        )
        assert embedded.dim == 512
        # The tenant's backbones are among its capabilities; another tenant's are not.
        listed = await stub.GetCapabilities(
            embedding_pb2.GetCapabilitiesRequest(), metadata=_metadata(signer, _caller("tenant-a"))
        )
        assert [(m.name, m.dim, m.family) for m in listed.models][1:] == [
            ("mv-mv-1", 512, "backbone")
        ]
        other = await stub.GetCapabilities(
            embedding_pb2.GetCapabilitiesRequest(), metadata=_metadata(signer, _caller("tenant-b"))
        )
        assert [m.name for m in other.models] == [DINOV2]
        assert abs(float(np.linalg.norm(embedded.embeddings[0].vector)) - 1.0) < 1e-4
        # Another tenant never resolved it.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Embed(
                embedding_pb2.EmbedRequest(model="mv-mv-1", images=[image_pb2.Image(data=_png(7))]),
                metadata=_metadata(signer, _caller("tenant-b")),
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_job_writes_points_the_online_api_finds(
    service: tuple[EmbeddingService, ServiceTokenSigner], nats_server: NatsServer
) -> None:
    running, signer = service
    for i in range(4):
        await running.objects.put_bytes(f"tenants/tenant-a/shelf/{i}.png", _png(10 + i))
    spec = embedding_pb2.EmbeddingJobSpec(
        model=DINOV2,
        images=embedding_pb2.ImageListSource(
            images=[
                embedding_pb2.SourceImage(key=f"shelf/{i}.png", product_id=f"p{i % 2}")
                for i in range(4)
            ]
        ),
        routing=embedding_pb2.CollectionRouting(default_collection="shelf", create_missing=True),
    )
    request = events_pb2.JobRequest(
        job_id="job-1",
        tenant_id="tenant-a",
        kind=KIND,
        embedding=events_pb2.EmbeddingJobRequest(spec=spec, artifact_prefix="jobs/job-1/"),
    )
    async with EventBus(servers=nats_server.url, name="embedding-app-test") as bus:
        await ensure_job_streams(bus)
        worker = JobWorker(
            bus=bus,
            handler=running.job_handler(running.objects),
            spec=JobWorkerSpec(kind=KIND, heartbeat_seconds=1.0, ack_wait_seconds=3.0),
            metrics=JobMetrics.create(CollectorRegistry()),
        )
        task = asyncio.create_task(worker.run())
        try:
            await bus.publish(job_request_subject(KIND), request, msg_id="job-1")
            ended = await _job_end(bus, "job-1")
        finally:
            worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
    assert ended == job_pb2.JOB_STATE_SUCCEEDED
    async with grpc.aio.insecure_channel(running.grpc.address) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)
        alice = _metadata(signer, _caller("tenant-a"))
        collection = await stub.GetCollection(
            embedding_pb2.GetCollectionRequest(name="shelf"), metadata=alice
        )
        assert collection.collection.points_count == 4 and collection.collection.model == DINOV2
        found = await stub.Search(
            embedding_pb2.SearchRequest(
                collection="shelf", image=image_pb2.Image(data=_png(12)), top_k=1
            ),
            metadata=alice,
        )
        assert [(p.id, p.product_id) for p in found.points] == [("shelf/2.png", "p0")]


async def _job_end(bus: EventBus, job_id: str, within: float = 120) -> Any:
    subscription = await bus.subscribe_ordered("vm.jobs.events.>", stream=JOB_EVENTS_STREAM)
    try:
        async with asyncio.timeout(within):
            async for delivery in subscription:
                event = delivery.decode(events_pb2.JobEvent)
                state = event.state_changed.state
                if event.job_id == job_id and state in (
                    job_pb2.JOB_STATE_SUCCEEDED,
                    job_pb2.JOB_STATE_FAILED,
                    job_pb2.JOB_STATE_CANCELLED,
                ):
                    return state
    finally:
        await subscription.close()
    raise AssertionError(f"job {job_id} did not end")
