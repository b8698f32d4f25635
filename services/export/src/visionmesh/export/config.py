"""Export service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pydantic import Field
from visionmesh.common.settings import ServiceSettings


class ExportSettings(ServiceSettings):
    """Ports and peers of the export service: the job queue and the object store."""

    service_name: str = "export"
    grpc_port: int = Field(default=50071, ge=0, le=65535, description="gRPC listen port")
    nats_url: str = Field(description="the NATS JetStream server address (nats://host:4222)")
    s3_endpoint: str = Field(description="the S3 API endpoint host:port (MinIO, SeaweedFS)")
    s3_access_key: str = Field(description="S3 access key")
    s3_secret_key: str = Field(description="S3 secret key")
    s3_bucket: str = Field(default="visionmesh", description="bucket for datasets and artifacts")
    s3_secure: bool = Field(default=False, description="use HTTPS for S3")
    s3_region: str = Field(default="us-east-1", description="S3 region")
