"""Inference service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from visionmesh.common.settings import (
    NatsSettings,
    ObjectStoreSettings,
    ServiceSettings,
    ServiceTokenAuthSettings,
)

Backend = Literal["onnxruntime", "triton"]


class InferenceSettings(
    NatsSettings, ObjectStoreSettings, ServiceTokenAuthSettings, ServiceSettings
):
    """Ports, peers and the model backend of the inference service."""

    service_name: str = "inference"
    grpc_port: int = Field(default=50081, ge=0, le=65535, description="gRPC listen port")
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
