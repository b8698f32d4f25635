"""Inference service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from visionmesh.common.settings import ServiceSettings

Backend = Literal["onnxruntime", "triton"]


class InferenceSettings(ServiceSettings):
    """Ports, peers and the model backend of the inference service."""

    service_name: str = "inference"
    grpc_port: int = Field(default=50081, ge=0, le=65535, description="gRPC listen port")
    nats_url: str = Field(description="the NATS JetStream server address (nats://host:4222)")
    s3_endpoint: str = Field(description="the S3 API endpoint host:port (MinIO, SeaweedFS)")
    s3_access_key: str = Field(description="S3 access key")
    s3_secret_key: str = Field(description="S3 secret key")
    s3_bucket: str = Field(default="visionmesh", description="bucket for datasets and artifacts")
    s3_secure: bool = Field(default=False, description="use HTTPS for S3")
    s3_region: str = Field(default="us-east-1", description="S3 region")
    backend: Backend = Field(
        default="onnxruntime",
        description="where models run: 'onnxruntime' in-process or an NVIDIA 'triton' server",
    )
    triton_url: str = Field(
        default="",
        # Checked even when unset, so backend=triton without an address fails at start.
        validate_default=True,
        description="the Triton server's gRPC address (host:8001); required when backend=triton",
    )

    @field_validator("triton_url")
    @classmethod
    def _triton_needs_url(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "triton" and not value:
            raise ValueError("required when VISIONMESH_BACKEND is 'triton'")
        return value
