"""Training service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from visionmesh.common.jobs import WorkerServiceSettings


class TrainingSettings(WorkerServiceSettings):
    """Ports, peers and worker tuning of the training service."""

    service_name: str = "training"
    grpc_port: int = Field(default=50061, ge=0, le=65535, description="gRPC listen port")
    workers: int = Field(
        default=1, ge=0, description="training jobs run at once (one per GPU; 1 on a CPU)"
    )
    device: str = Field(default="auto", description="device for jobs whose spec says 'auto'")
    progress_every_batches: int = Field(
        default=10, ge=1, description="report progress every N training batches"
    )
    cache_dir: Path | None = Field(
        default=None, description="dataset cache; default <data_dir>/training-cache"
    )

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "training-cache"
