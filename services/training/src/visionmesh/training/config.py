"""Training service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from visionmesh.common.settings import ServiceSettings


class TrainingSettings(ServiceSettings):
    """Ports, peers and worker tuning of the training service."""

    service_name: str = "training"
    grpc_port: int = Field(default=50061, ge=0, le=65535, description="gRPC listen port")
    nats_url: str = Field(description="the NATS JetStream server address (nats://host:4222)")
    s3_endpoint: str = Field(description="the S3 API endpoint host:port (MinIO, SeaweedFS)")
    s3_access_key: str = Field(description="S3 access key")
    s3_secret_key: str = Field(description="S3 secret key")
    s3_bucket: str = Field(default="visionmesh", description="bucket for datasets and artifacts")
    s3_secure: bool = Field(default=False, description="use HTTPS for S3")
    s3_region: str = Field(default="us-east-1", description="S3 region")
    service_token_public_key_file: Path | None = Field(
        default=None,
        description="the gateway's Ed25519 public key (PEM); when set, gRPC calls need a "
        "service token for audience 'training'",
    )
    workers: int = Field(
        default=1, ge=0, description="training jobs run at once (one per GPU; 1 on a CPU)"
    )
    device: str = Field(default="auto", description="device for jobs whose spec says 'auto'")
    ack_wait_seconds: float = Field(
        default=60.0, gt=0, description="a job is redelivered after this long without a heartbeat"
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="how often a running job tells JetStream it is alive"
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="deliveries of one job before it is FAILED"
    )
    progress_every_batches: int = Field(
        default=10, ge=1, description="report progress every N training batches"
    )
    cache_dir: Path | None = Field(
        default=None, description="dataset cache; default <data_dir>/training-cache"
    )

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "training-cache"
