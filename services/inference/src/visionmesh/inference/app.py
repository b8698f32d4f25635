"""The inference service process: InferenceService, KServe v2 (gRPC and REST), the
deployments reconcile loop and batch inference workers, supervised as one."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Self

import onnxruntime
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.jobs import serve_with_job_workers
from visionmesh.common.logging import configure_logging, get_logger
from visionmesh.common.rpc import GrpcServer, connect
from visionmesh.common.settings import load_settings, service_token_authenticator
from visionmesh.common.storage import ObjectStore
from visionmesh.inference.api.credentials import GatewayCredentials
from visionmesh.inference.api.kserve import KSERVE_PUBLIC_METHODS, KServeDataplane
from visionmesh.inference.api.kserve_grpc import add_kserve_service
from visionmesh.inference.api.kserve_http import (
    KServeHttpServer,
    create_kserve_app,
    serve_kserve_http,
)
from visionmesh.inference.api.servicer import InferenceServicer
from visionmesh.inference.config import InferenceSettings
from visionmesh.inference.core.batcher import DynamicBatcher
from visionmesh.inference.core.deployments import DeploymentManager, DeploymentStore
from visionmesh.inference.core.model import InferenceStats, LoadedModel, Runtime
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.package import ONNX_PLATFORM, Package, PackageCache, check_export
from visionmesh.inference.core.service import Backends, InferenceCore, ServingLimits
from visionmesh.inference.core.serving_metrics import ServingMetrics
from visionmesh.inference.core.triton_runtime import load_into_triton, served_model_name
from visionmesh.inference.db.models import DeploymentRow
from visionmesh.inference.worker.batch import BatchInferenceHandler

_log = get_logger("visionmesh.inference")

MIGRATIONS = "visionmesh.inference.db:migrations"
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
AUDIENCE = "inference"
TRITON_LOAD_TIMEOUT_SECONDS = 300.0


class InferenceService:
    """Everything the inference service runs; `async with InferenceService(settings)` in tests."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.objects = ObjectStore(settings.object_store_config())
        self.gateway = connect(settings.gateway_addr) if settings.gateway_addr else None
        authenticator = GatewayCredentials(
            service_token_authenticator(
                settings, audience=AUDIENCE, public_methods=KSERVE_PUBLIC_METHODS
            ),
            self.gateway,
        )
        self.grpc = GrpcServer(settings=settings, authenticator=authenticator)
        self.metrics = ServingMetrics.create(self.grpc.registry)
        self.store = DeploymentStore(self.db)
        self.packages = PackageCache(root=settings.resolved_model_cache_dir(), store=self.objects)
        self.manager = DeploymentManager(
            store=self.store,
            packages=self.packages,
            build=self._build_model,
            reconcile_seconds=settings.reconcile_seconds,
        )
        self.core = InferenceCore(
            store=self.store,
            manager=self.manager,
            objects=self.objects,
            limits=ServingLimits(
                max_image_bytes=settings.max_image_bytes,
                max_image_pixels=settings.max_image_pixels,
            ),
            backends=Backends(
                default=settings.backend,
                triton=bool(settings.triton_url),
                cuda="CUDAExecutionProvider" in onnxruntime.get_available_providers(),
            ),
        )
        self.grpc.add_service(
            inference_pb2_grpc.add_InferenceServiceServicer_to_server,
            InferenceServicer(self.core),
            service_name=SERVICE_NAME,
        )
        # KServe v2 on its own ports, as Triton serves it: the same tokens, the same core.
        self.kserve = KServeDataplane(self.core)
        self.kserve_grpc = GrpcServer(
            settings=settings.model_copy(
                update={"grpc_port": settings.kserve_grpc_port, "metrics_port": 0}
            ),
            authenticator=authenticator,
            registry=self.grpc.registry,
        )
        add_kserve_service(self.kserve_grpc, self.kserve)
        self.kserve_app = create_kserve_app(self.kserve, pipeline=self.kserve_grpc.pipeline)
        self.kserve_http: KServeHttpServer | None = None
        self.batch_handler = BatchInferenceHandler(
            store=self.objects,
            open_model=self._open_batch_model,
            work_root=settings.data_dir / "batch-work",
            max_image_bytes=settings.max_image_bytes,
            max_image_pixels=settings.max_image_pixels,
        )

    @contextlib.asynccontextmanager
    async def _open_batch_model(
        self, tenant_id: str, spec: inference_pb2.BatchInferenceSpec
    ) -> AsyncIterator[LoadedModel]:
        """A batch job's model: its deployment's, or the export loaded for the job alone."""
        if spec.deployment:
            async with self.core.deployed_model(tenant_id, spec.deployment) as model:
                yield model
            return
        check_export(spec.export, field="spec.export")
        # Cached by content: an export result carries no job id, its files' hashes are unique.
        package = await self.packages.fetch(
            spec.export, export_job_id=f"sha256-{spec.export.onnx.sha256[:32]}"
        )
        row = DeploymentRow(
            tenant_id=tenant_id,
            name=f"batch-{spec.model_version_id}",
            model_version_id=spec.model_version_id,
            generation=0,
            backend="onnxruntime",
            device="auto",
        )
        model = await self._build_model(row, package)
        try:
            yield model
        finally:
            await model.runtime.close()

    async def _build_model(self, row: DeploymentRow, package: Package) -> LoadedModel:
        """A deployment's model on this replica: its backend behind a dynamic batcher."""
        backend: Runtime
        platform = ONNX_PLATFORM
        if row.backend == "triton":
            triton = await load_into_triton(
                self.settings.triton_url,
                repository_dir=package.repository_dir,
                model_name=package.model_name,
                served_name=served_model_name(row.tenant_id, row.name, row.generation),
                timeout_s=TRITON_LOAD_TIMEOUT_SECONDS,
                # An export with a TensorRT engine was built for a GPU: Triton runs the
                # engine there (and says why not where it cannot).
                tensorrt=package.has_tensorrt,
            )
            backend, platform = triton, triton.platform
        else:
            backend = await OnnxRuntimeModel.load(
                package.onnx_path,
                device=row.device or "auto",
                threads=self.settings.onnx_threads,
                providers=self.settings.onnx_providers,
                max_batch_size=self.settings.max_batch_size,
            )
        stats = InferenceStats()
        runtime = DynamicBatcher(
            backend,
            max_batch_size=self.settings.max_batch_size,
            queue_delay_s=self.settings.batch_queue_delay_ms / 1000,
            metrics=self.metrics,
            deployment=f"{row.tenant_id}/{row.name}",
            stats=stats,
        )
        return LoadedModel(
            tenant_id=row.tenant_id,
            name=row.name,
            version=str(row.generation),
            metadata=package.metadata,
            runtime=runtime,
            platform=platform,
            model_version_id=row.model_version_id,
            # Clients know the model by the deployment's name, not the export's.
            triton_config={**package.triton_config, "name": row.name},
            stats=stats,
        )

    async def start(self) -> None:
        """Everything but the InferenceService port and the loops, which `serve` runs."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await run_migrations(
            database_url=self.settings.resolved_database_url(), script_location=MIGRATIONS
        )
        await self.objects.ensure_bucket()
        await self.kserve_grpc.start()
        self.kserve_http = await serve_kserve_http(
            self.kserve_app, self.settings.kserve_host, self.settings.kserve_http_port
        )
        _log.info(
            "kserve v2 serving",
            grpc=self.kserve_grpc.address,
            http=f"http://{self.settings.kserve_host}:{self.kserve_http.port}",
        )

    async def stop(self) -> None:
        if self.kserve_http is not None:
            await self.kserve_http.stop()
        await self.kserve_grpc.stop()
        await self.manager.close()
        if self.gateway is not None:
            await self.gateway.close()
        self.objects.close()
        await self.db.dispose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: InferenceSettings) -> int:
    """Serves until SIGTERM (0) or until a loop dies (1, for the supervisor to restart)."""
    service = InferenceService(settings)
    await service.start()
    try:
        return await serve_with_job_workers(
            settings,
            kind=job_pb2.JOB_KIND_BATCH_INFERENCE,
            server=service.grpc,
            handler=service.batch_handler,
            loops=[("deployments-reconcile", service.manager.run())],
        )
    finally:
        await service.stop()


def main() -> None:
    settings = load_settings(InferenceSettings)
    configure_logging(service="inference", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
