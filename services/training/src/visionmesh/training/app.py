"""The training service process: gRPC server plus training workers."""

from __future__ import annotations

import asyncio
import contextlib
import os

from visionmesh.api.training.v1 import training_pb2_grpc
from visionmesh.common.auth import Authenticator, ServiceTokenVerifier
from visionmesh.common.events import EventBus
from visionmesh.common.logging import configure_logging, get_logger
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import load_settings
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.common.subjects import ensure_job_streams
from visionmesh.training.api.servicer import TrainingServicer
from visionmesh.training.config import TrainingSettings
from visionmesh.training.core import capabilities
from visionmesh.training.worker.cache import DatasetCache
from visionmesh.training.worker.runner import TrainingJobRunner
from visionmesh.training.worker.worker import TrainingWorker

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


async def serve(settings: TrainingSettings) -> None:
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
    async with EventBus(servers=settings.nats_url, name=f"training-{os.getpid()}") as bus:
        await ensure_job_streams(bus)
        runner = TrainingJobRunner(
            store=store,
            cache=DatasetCache(root=settings.resolved_cache_dir(), store=store),
            work_root=settings.data_dir / "training-work",
            progress_every=settings.progress_every_batches,
            default_device=settings.device,
        )
        workers = [
            TrainingWorker(
                bus=bus,
                runner=runner,
                ack_wait=settings.ack_wait_seconds,
                heartbeat=settings.heartbeat_seconds,
                max_deliveries=settings.max_deliveries,
            )
            for _ in range(settings.workers)
        ]
        tasks = [asyncio.create_task(worker.run(), name="training-worker") for worker in workers]
        log.info("training workers started", workers=len(workers))
        try:
            await server.serve_forever()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            store.close()


def main() -> None:
    settings = load_settings(TrainingSettings)
    configure_logging(service="training", level=settings.log_level, json=settings.log_json)
    asyncio.run(serve(settings))
