"""The training service process: gRPC server plus training workers."""

from __future__ import annotations

import asyncio
import os
import sys

from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.training.v1 import training_pb2_grpc
from visionmesh.common.auth import Authenticator, ServiceTokenVerifier
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobMetrics, JobWorker, JobWorkerSpec, serve_workers
from visionmesh.common.logging import configure_logging, get_logger
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import load_settings
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.common.subjects import ensure_job_streams
from visionmesh.training.api.servicer import TrainingServicer
from visionmesh.training.config import TrainingSettings
from visionmesh.training.core import capabilities
from visionmesh.training.worker.handler import TrainingHandler

SERVICE_NAME = "visionmesh.training.v1.TrainingService"


def _authenticator(settings: TrainingSettings) -> Authenticator | None:
    if settings.service_token_public_key_file is None:
        return None
    pem = settings.service_token_public_key_file.read_bytes()
    return ServiceTokenVerifier.from_pem([pem], audience="training")


def object_store(settings: TrainingSettings) -> ObjectStore:
    return ObjectStore(
        ObjectStoreConfig(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    )


def _warm_up() -> None:
    from ultralytics import YOLO  # noqa: F401

    capabilities()  # torch, torchvision and Ultralytics' model configs


def worker_spec(settings: TrainingSettings) -> JobWorkerSpec:
    return JobWorkerSpec(
        kind=job_pb2.JOB_KIND_TRAINING,
        ack_wait_seconds=settings.ack_wait_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        max_deliveries=settings.max_deliveries,
        transient_retry_limit=getattr(settings, "transient_retry_limit", 10),
        graceful_stop_seconds=getattr(settings, "graceful_stop_seconds", 30.0),
    )


async def serve(settings: TrainingSettings) -> int:
    """Serves until SIGTERM (0) or until a job loop dies (1, for the supervisor to restart)."""
    log = get_logger("visionmesh.training")
    # Ultralytics must never reach for the network here (no hub, no downloads).
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((settings.data_dir / "ultralytics").resolve()))
    server = GrpcServer(settings=settings, authenticator=_authenticator(settings))
    server.add_service(
        training_pb2_grpc.add_TrainingServiceServicer_to_server,
        TrainingServicer(),
        service_name=SERVICE_NAME,
    )
    # Import the training stack now, not in the first job: it takes seconds.
    await asyncio.to_thread(_warm_up)
    store = object_store(settings)
    await store.ensure_bucket()
    try:
        async with EventBus(servers=settings.nats_url, name=f"training-{os.getpid()}") as bus:
            await ensure_job_streams(bus)
            handler = TrainingHandler(
                store=store,
                cache=DatasetCache(root=settings.resolved_cache_dir(), store=store),
                work_root=settings.data_dir / "training-work",
                progress_every=settings.progress_every_batches,
                default_device=settings.device,
            )
            metrics = JobMetrics.create(server.registry)
            spec = worker_spec(settings)
            workers = [
                JobWorker(bus=bus, handler=handler, spec=spec, metrics=metrics)
                for _ in range(settings.workers)
            ]
            log.info("training workers starting", workers=len(workers))
            return await serve_workers(server, workers)
    finally:
        store.close()


def main() -> None:
    settings = load_settings(TrainingSettings)
    configure_logging(service="training", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
