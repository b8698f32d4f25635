"""The gateway process: gRPC and REST over the same servicers, outbox relay, event consumer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Self

from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.api.gateway.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.common.auth import Principal, ServiceTokenSigner
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.events import EventBus
from visionmesh.common.logging import configure_logging, get_logger
from visionmesh.common.rpc import GrpcClient, GrpcServer, RetryPolicy, connect
from visionmesh.common.settings import load_settings
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.common.subjects import ensure_job_streams
from visionmesh.common.supervision import mark_not_serving, until_signal_or_loop_exit
from visionmesh.gateway.api.auth_servicer import AuthServicer
from visionmesh.gateway.api.proxies import (
    EmbeddingProxy,
    ExportProxy,
    InferenceProxy,
    TrainingProxy,
)
from visionmesh.gateway.api.rest import (
    PREDICT_UPLOAD,
    RestConfig,
    RestServer,
    RestTranscoder,
    serve_rest,
)
from visionmesh.gateway.api.servicers import DatasetServicer, JobServicer, ModelServicer
from visionmesh.gateway.config import GatewaySettings
from visionmesh.gateway.core.auth import AuthCore, load_or_create_signing_key
from visionmesh.gateway.core.datasets import DatasetsCore
from visionmesh.gateway.core.delegation import DelegatedTokens
from visionmesh.gateway.core.job_events import JobEventApplier, JobEventConsumer
from visionmesh.gateway.core.jobs import JobsCore, JobWatchers
from visionmesh.gateway.core.outbox import OutboxRelay
from visionmesh.gateway.core.registry import RegistryCore

_log = get_logger("visionmesh.gateway")

MIGRATIONS = "visionmesh.gateway.db:migrations"
_GATEWAY = Principal(subject="gateway", tenant_id="", role="service", kind="service")


class ServiceTokens:
    """The gateway's own token for one peer, re-minted before it expires."""

    def __init__(self, signer: ServiceTokenSigner, *, audience: str, ttl: float = 300.0) -> None:
        self._signer = signer
        self._audience = audience
        self._ttl = ttl
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._token = self._signer.sign(
                audience=self._audience, principal=_GATEWAY, ttl_seconds=self._ttl
            )
            self._renew_at = now + self._ttl / 2
        return self._token


class Gateway:
    """Everything the gateway runs; `async with Gateway(settings)` in tests and main."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.db = Database(
            settings.resolved_database_url(),
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_pool_size,
        )
        self.store = ObjectStore(
            ObjectStoreConfig(
                endpoint=settings.s3_endpoint,
                public_endpoint=settings.s3_public_endpoint or None,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                bucket=settings.s3_bucket,
                secure=settings.s3_secure,
                region=settings.s3_region,
            )
        )
        self.bus = EventBus(servers=settings.nats_url, name=f"gateway-{os.getpid()}")
        signing_key = load_or_create_signing_key(settings)
        self.auth = AuthCore.from_settings(settings, db=self.db, signing_key=signing_key)
        self.watchers = JobWatchers(self.db)
        self.relay = OutboxRelay(
            db=self.db,
            bus=self.bus,
            watchers=self.watchers,
            poll_seconds=settings.outbox_poll_seconds,
        )
        self.training: GrpcClient = connect(
            settings.training_addr,
            token_provider=ServiceTokens(
                ServiceTokenSigner(private_key=signing_key), audience="training"
            ),
        )
        self._training_stub = training_pb2_grpc.TrainingServiceStub(self.training.channel)
        self.export: GrpcClient = connect(
            settings.export_addr,
            token_provider=ServiceTokens(
                ServiceTokenSigner(private_key=signing_key), audience="export"
            ),
            # Job intake asks it first and falls back to the shared rules when it is down:
            # one quick retry, not the default backoff (seconds per export job created).
            retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=0.05),
        )
        self.export_proxy = ExportProxy(export_pb2_grpc.ExportServiceStub(self.export.channel))
        presign_ttl = timedelta(seconds=settings.presign_ttl_seconds)
        self.registry = RegistryCore(db=self.db, store=self.store, presign_ttl=presign_ttl)
        self.inference_tokens = DelegatedTokens(
            ServiceTokenSigner(private_key=signing_key), audience="inference"
        )
        self.inference: GrpcClient = connect(
            settings.inference_addr,
            # Calls go on behalf of the caller: the inference service scopes by their tenant.
            token_provider=self.inference_tokens,
            max_message_bytes=settings.grpc_max_message_bytes,
            retry=RetryPolicy(max_attempts=3),
        )
        self.inference_proxy = InferenceProxy(
            inference_pb2_grpc.InferenceServiceStub(self.inference.channel),
            tokens=self.inference_tokens,
            resolve_export=self.registry.resolve_export,
        )
        # Valid at the inference service too: scene matching (Match with a
        # detector_deployment) goes on there with the token the embedding service got.
        self.embedding_tokens = DelegatedTokens(
            ServiceTokenSigner(private_key=signing_key), audience=("embedding", "inference")
        )
        self.embedding: GrpcClient = connect(
            settings.embedding_addr,
            token_provider=self.embedding_tokens,
            max_message_bytes=settings.grpc_max_message_bytes,
            retry=RetryPolicy(max_attempts=3),
        )
        self.embedding_proxy = EmbeddingProxy(
            embedding_pb2_grpc.EmbeddingServiceStub(self.embedding.channel),
            tokens=self.embedding_tokens,
            resolve_backbone=self.registry.resolve_backbone,
        )
        self.datasets = DatasetsCore(
            db=self.db,
            store=self.store,
            max_bytes=settings.dataset_max_bytes,
            presign_ttl=presign_ttl,
            work_dir=settings.data_dir,
        )
        self.jobs = JobsCore(
            db=self.db,
            store=self.store,
            datasets=self.datasets,
            watchers=self.watchers,
            validate_export_spec=self.export_proxy.validate,
            validate_batch_spec=self.inference_proxy.validate_batch_spec,
            validate_embedding_spec=self.embedding_proxy.validate_embedding_spec,
            outbox_wakeup=self.relay.wakeup,
            presign_ttl=presign_ttl,
        )
        authenticator = self.auth.authenticator()
        services: list[tuple[object, object, object]] = [
            (auth_pb2, auth_pb2_grpc.add_AuthServiceServicer_to_server, AuthServicer(self.auth)),
            (jobs_pb2, jobs_pb2_grpc.add_JobServiceServicer_to_server, JobServicer(self.jobs)),
            (
                datasets_pb2,
                datasets_pb2_grpc.add_DatasetServiceServicer_to_server,
                DatasetServicer(self.datasets),
            ),
            (
                models_pb2,
                models_pb2_grpc.add_ModelServiceServicer_to_server,
                ModelServicer(self.registry),
            ),
            (
                training_pb2,
                training_pb2_grpc.add_TrainingServiceServicer_to_server,
                TrainingProxy(self._training_stub),
            ),
            (
                export_pb2,
                export_pb2_grpc.add_ExportServiceServicer_to_server,
                self.export_proxy,
            ),
            (
                inference_pb2,
                inference_pb2_grpc.add_InferenceServiceServicer_to_server,
                self.inference_proxy,
            ),
            (
                embedding_pb2,
                embedding_pb2_grpc.add_EmbeddingServiceServicer_to_server,
                self.embedding_proxy,
            ),
        ]
        self.grpc = GrpcServer(settings=settings, authenticator=authenticator)
        pairs = []
        for module, register, servicer in services:
            (service,) = module.DESCRIPTOR.services_by_name.values()  # type: ignore[attr-defined]
            self.grpc.add_service(register, servicer, service_name=service.full_name)  # type: ignore[arg-type]
            pairs.append((service, servicer))
        self.rest_app = RestTranscoder(
            pairs,
            authenticator=authenticator,
            readiness=self.readiness,
            registry=self.grpc.registry,
            config=RestConfig(file_uploads=(PREDICT_UPLOAD,)),
        )
        self.rest: RestServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def readiness(self) -> Mapping[str, bool]:
        checks: dict[str, bool] = {"nats": self.bus.is_connected}
        try:
            await self.db.ping()
            checks["database"] = True
        except Exception:
            checks["database"] = False
        try:
            await self.store.exists("readyz-probe")
            checks["object_store"] = True
        except Exception:
            checks["object_store"] = False
        return checks

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await run_migrations(
            database_url=self.settings.resolved_database_url(), script_location=MIGRATIONS
        )
        await self.store.ensure_bucket()
        await self.bus.connect()
        await ensure_job_streams(self.bus)
        await self.watchers.start(self.bus)
        consumer = JobEventConsumer(
            bus=self.bus, applier=JobEventApplier(db=self.db, watchers=self.watchers)
        )
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="outbox-relay"),
            asyncio.create_task(consumer.run(), name="job-event-consumer"),
        ]
        await self.grpc.start()
        self.rest = await serve_rest(
            self.rest_app, self.settings.rest_host, self.settings.rest_port
        )
        _log.info(
            "gateway started",
            grpc=self.grpc.address,
            rest=f"http://{self.settings.rest_host}:{self.rest.port}",
        )

    @property
    def background_tasks(self) -> list[asyncio.Task[None]]:
        """The loops this process exists for: if one ends, the process must restart."""
        return list(self._tasks)

    async def stop(self) -> None:
        if self.rest is not None:
            await self.rest.stop()
        await self.grpc.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.watchers.stop()
        await self.training.close()
        await self.export.close()
        await self.inference.close()
        await self.embedding.close()
        await self.bus.close()
        self.store.close()
        self.auth.close()
        await self.db.dispose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: GatewaySettings) -> int:
    """Serves until SIGTERM (0) or until a background loop dies (1, for a restart)."""
    gateway = Gateway(settings)
    await gateway.start()
    exit_code = 0
    try:
        if await until_signal_or_loop_exit(gateway.background_tasks):
            exit_code = 1
            await mark_not_serving(gateway.grpc)
    finally:
        await gateway.stop()
    return exit_code


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging(service="gateway", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
