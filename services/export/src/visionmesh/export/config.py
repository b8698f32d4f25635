"""Export service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from visionmesh.common.jobs import WorkerServiceSettings


class ExportSettings(WorkerServiceSettings):
    """Ports, peers and worker tuning of the export service."""

    service_name: str = "export"
    grpc_port: int = Field(default=50071, ge=0, le=65535, description="gRPC listen port")
    workers: int = Field(default=1, ge=0, description="export jobs run at once")
    parity_images: int = Field(
        default=8, ge=1, le=256, description="images the parity check runs through both models"
    )
    cache_dir: Path | None = Field(
        default=None, description="dataset cache for parity images; default <data_dir>/export-cache"
    )

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "export-cache"
