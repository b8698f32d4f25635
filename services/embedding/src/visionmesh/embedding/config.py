"""Embedding service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pydantic import Field
from visionmesh.common.settings import (
    NatsSettings,
    ObjectStoreSettings,
    ServiceSettings,
    ServiceTokenAuthSettings,
)


class EmbeddingSettings(
    NatsSettings, ObjectStoreSettings, ServiceTokenAuthSettings, ServiceSettings
):
    """Ports and peers of the embedding service: the job queue, the object store, Qdrant."""

    service_name: str = "embedding"
    grpc_port: int = Field(default=50091, ge=0, le=65535, description="gRPC listen port")
    qdrant_url: str = Field(
        default="",
        description="the Qdrant server URL (http://host:6333); "
        "empty means qdrant-client local mode in the data dir",
    )
