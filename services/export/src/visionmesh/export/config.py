"""Export service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pydantic import Field
from visionmesh.common.settings import (
    NatsSettings,
    ObjectStoreSettings,
    ServiceSettings,
    ServiceTokenAuthSettings,
)


class ExportSettings(NatsSettings, ObjectStoreSettings, ServiceTokenAuthSettings, ServiceSettings):
    """Ports and peers of the export service: the job queue and the object store."""

    service_name: str = "export"
    grpc_port: int = Field(default=50071, ge=0, le=65535, description="gRPC listen port")
