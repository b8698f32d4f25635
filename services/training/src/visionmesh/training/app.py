"""The training service process: gRPC server plus training workers."""

from __future__ import annotations

import asyncio
import os
import sys

from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.training.v1 import training_pb2_grpc
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.jobs import serve_worker_service
from visionmesh.common.logging import configure_logging
from visionmesh.common.settings import load_settings
from visionmesh.common.storage import ObjectStore
from visionmesh.training.api.servicer import TrainingServicer
from visionmesh.training.config import TrainingSettings
from visionmesh.training.core import capabilities
from visionmesh.training.worker.handler import TrainingHandler

SERVICE_NAME = "visionmesh.training.v1.TrainingService"


def _warm_up() -> None:
    from ultralytics import YOLO  # noqa: F401

    capabilities()  # torch, torchvision and Ultralytics' model configs


async def serve(settings: TrainingSettings) -> int:
    """Serves until SIGTERM (0) or until a job loop dies (1, for the supervisor to restart)."""
    # Ultralytics must never reach for the network here (no hub, no downloads).
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((settings.data_dir / "ultralytics").resolve()))

    def handler(store: ObjectStore) -> TrainingHandler:
        return TrainingHandler(
            store=store,
            cache=DatasetCache(root=settings.resolved_cache_dir(), store=store),
            work_root=settings.data_dir / "training-work",
            progress_every=settings.progress_every_batches,
            default_device=settings.device,
        )

    return await serve_worker_service(
        settings,
        kind=job_pb2.JOB_KIND_TRAINING,
        handler=handler,
        services=[
            (
                training_pb2_grpc.add_TrainingServiceServicer_to_server,
                TrainingServicer(),
                SERVICE_NAME,
            )
        ],
        warm_up=_warm_up,
    )


def main() -> None:
    settings = load_settings(TrainingSettings)
    configure_logging(service="training", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
