"""The embedding service process: EmbeddingService plus embedding job workers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, Self

from visionmesh.api.common.v1 import image_pb2, job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.auth import AUTHORIZATION_METADATA_KEY, Principal, bearer_token
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.errors import FailedPrecondition, InvalidArgument
from visionmesh.common.jobs import serve_with_job_workers
from visionmesh.common.logging import configure_logging, get_logger
from visionmesh.common.rpc import GrpcClient, GrpcServer, connect
from visionmesh.common.settings import load_settings, service_token_authenticator
from visionmesh.common.storage import ObjectStore
from visionmesh.embedding.api.servicer import EmbeddingServicer
from visionmesh.embedding.config import EmbeddingSettings
from visionmesh.embedding.core.backbone_files import BackboneFiles
from visionmesh.embedding.core.collections import CollectionStore
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.embedders import Embedder
from visionmesh.embedding.core.provider import EmbedderProvider
from visionmesh.embedding.core.qdrant_store import QdrantStore
from visionmesh.embedding.core.service import EmbeddingCore, ImageLimits
from visionmesh.embedding.core.vector_store import VectorStore
from visionmesh.embedding.db import MIGRATIONS
from visionmesh.embedding.worker.handler import EmbeddingHandler
from visionmesh.embedding.worker.routing import JobCollections

_log = get_logger("visionmesh.embedding")

SERVICE_NAME = embedding_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
AUDIENCE = "embedding"

# The caller's own bearer token, for the calls this service makes on the caller's behalf
# (scene matching asks the inference service for detections, in the caller's tenant).
_incoming_token: ContextVar[str | None] = ContextVar("visionmesh_incoming_token", default=None)


class _ForwardableTokens:
    """The service-token authenticator, remembering the caller's token for onward calls.

    The gateway mints the token it forwards here for both audiences, "embedding" and
    "inference", so the same token scopes the inference service's answer to the caller.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def is_public(self, method: str) -> bool:
        return bool(self._inner.is_public(method))

    async def authenticate(self, *, method: str, metadata: Any) -> Principal | None:
        principal: Principal | None = await self._inner.authenticate(
            method=method, metadata=metadata
        )
        _incoming_token.set(bearer_token(metadata))
        return principal


class EmbeddingService:
    """Everything the embedding service runs; `async with EmbeddingService(settings)` in tests."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.objects = ObjectStore(settings.object_store_config())
        self.vectors: VectorStore = (
            QdrantStore.connect(settings.qdrant_url, api_key=settings.qdrant_api_key or None)
            if settings.qdrant_url
            else EdgeStore(
                settings.data_dir / "vectors", index_threshold=settings.vector_index_threshold
            )
        )
        self.collections = CollectionStore(self.db)
        self.backbones = BackboneFiles(
            db=self.db, objects=self.objects, cache_dir=settings.data_dir / "backbones"
        )
        self.embedders = EmbedderProvider(
            dinov2_root=settings.resolved_dinov2_dir(),
            resolve_backbone=self.backbones,
            device=settings.device,
            batch_size=settings.embed_batch_size,
        )
        self.inference: GrpcClient | None = (
            connect(settings.inference_addr) if settings.inference_addr else None
        )
        self.core = EmbeddingCore(
            collections=self.collections,
            vectors=self.vectors,
            embedders=self.embedders,
            objects=self.objects,
            detect=self._detect if self.inference is not None else None,
            default_model=settings.default_model,
            limits=ImageLimits(
                max_image_bytes=settings.max_image_bytes,
                max_image_pixels=settings.max_image_pixels,
            ),
            backbones=self.backbones,
        )
        authenticator = _ForwardableTokens(service_token_authenticator(settings, audience=AUDIENCE))
        self.grpc = GrpcServer(settings=settings, authenticator=authenticator)
        self.grpc.add_service(
            embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
            EmbeddingServicer(self.core),
            service_name=SERVICE_NAME,
        )

    async def _detect(
        self,
        caller: Principal,
        deployment: str,
        images: Sequence[bytes],
        options: inference_pb2.PredictOptions,
    ) -> list[list[inference_pb2.Detection]]:
        """Each image's detections by the caller's detector deployment, asked of the
        inference service with the caller's own token (so their tenant decides)."""
        assert self.inference is not None
        token = _incoming_token.get()
        if not token:
            raise FailedPrecondition.for_field(
                "detector_deployment", "scene matching needs the caller's token to forward"
            )
        stub = inference_pb2_grpc.InferenceServiceStub(self.inference.channel)
        response: inference_pb2.PredictResponse = await stub.Predict(
            inference_pb2.PredictRequest(
                deployment=deployment,
                images=[image_pb2.Image(data=data) for data in images],
                options=options,
            ),
            metadata=((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),),
        )
        found: list[list[inference_pb2.Detection]] = []
        for index, result in enumerate(response.results):
            if result.HasField("error"):
                raise InvalidArgument.for_field(f"images[{index}]", result.error.message)
            found.append(list(result.detections))
        return found

    def job_handler(self, store: ObjectStore) -> EmbeddingHandler:
        async def open_embedder(tenant_id: str, model: str, device: str) -> Embedder:
            # The replica's device (VISIONMESH_DEVICE) serves every job.
            return await self.embedders.get(model, tenant_id=tenant_id, field="spec.model")

        return EmbeddingHandler(
            store=store,
            cache=DatasetCache(root=self.settings.data_dir / "embedding-cache", store=store),
            vectors=self.vectors,
            collections=JobCollections(self.collections, self.vectors),
            open_embedder=open_embedder,
            max_image_bytes=self.settings.max_image_bytes,
        )

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await run_migrations(
            database_url=self.settings.resolved_database_url(), script_location=MIGRATIONS
        )
        await self.objects.ensure_bucket()

    async def stop(self) -> None:
        await self.vectors.close()
        if self.inference is not None:
            await self.inference.close()
        self.objects.close()
        await self.db.dispose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: EmbeddingSettings) -> int:
    """Serves until SIGTERM (0) or until a job loop dies (1, for the supervisor to restart)."""
    service = EmbeddingService(settings)
    await service.start()
    try:
        return await serve_with_job_workers(
            settings,
            kind=job_pb2.JOB_KIND_EMBEDDING,
            server=service.grpc,
            handler=service.job_handler(service.objects),
            loops=[
                (
                    "vector-index",
                    service.vectors.maintain_forever(settings.vector_index_check_seconds),
                )
            ],
        )
    finally:
        await service.stop()


def main() -> None:
    settings = load_settings(EmbeddingSettings)
    configure_logging(service="embedding", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
