"""The export service process: gRPC server plus export workers."""

from __future__ import annotations

import asyncio
import os
import sys

from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.export.v1 import export_pb2_grpc
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.jobs import serve_worker_service
from visionmesh.common.logging import configure_logging
from visionmesh.common.settings import load_settings
from visionmesh.common.storage import ObjectStore
from visionmesh.export.api.servicer import ExportServicer
from visionmesh.export.config import ExportSettings
from visionmesh.export.worker.handler import ExportHandler

SERVICE_NAME = "visionmesh.export.v1.ExportService"


def _warm_up() -> None:
    import onnxruntime  # noqa: F401
    from ultralytics import YOLO  # noqa: F401
    from visionmesh.export.core.capabilities import export_capabilities

    export_capabilities()


async def serve(settings: ExportSettings) -> int:
    """Serves until SIGTERM (0) or until a job loop dies (1, for the supervisor to restart)."""
    # Ultralytics must never reach for the network here (no hub, no downloads).
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((settings.data_dir / "ultralytics").resolve()))

    def handler(store: ObjectStore) -> ExportHandler:
        return ExportHandler(
            store=store,
            cache=DatasetCache(root=settings.resolved_cache_dir(), store=store),
            work_root=settings.data_dir / "export-work",
            parity_images=settings.parity_images,
        )

    return await serve_worker_service(
        settings,
        kind=job_pb2.JOB_KIND_EXPORT,
        handler=handler,
        services=[
            (export_pb2_grpc.add_ExportServiceServicer_to_server, ExportServicer(), SERVICE_NAME)
        ],
        warm_up=_warm_up,
    )


def main() -> None:
    settings = load_settings(ExportSettings)
    configure_logging(service="export", level=settings.log_level, json=settings.log_json)
    sys.exit(asyncio.run(serve(settings)))
