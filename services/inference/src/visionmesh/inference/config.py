"""Inference service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from visionmesh.common.jobs import WorkerServiceSettings
from visionmesh.common.limits import MAX_IMAGE_BYTES, PREDICT_MAX_MESSAGE_BYTES

Backend = Literal["onnxruntime", "triton"]


class InferenceSettings(WorkerServiceSettings):
    """Ports, peers, backends and serving limits of the inference service."""

    service_name: str = "inference"
    grpc_port: int = Field(default=50081, ge=0, le=65535, description="gRPC listen port")
    grpc_max_message_bytes: int = Field(
        # Predict carries up to 64 images of up to 20 MiB each, as the gateway forwards them.
        default=PREDICT_MAX_MESSAGE_BYTES,
        gt=0,
        description="largest gRPC message sent or received, in bytes (Predict's images)",
    )
    kserve_grpc_port: int = Field(
        default=50082,
        ge=0,
        le=65535,
        description="KServe v2 gRPC port (inference.GRPCInferenceService, as Triton's 8001)",
    )
    kserve_http_port: int = Field(
        default=50083,
        ge=0,
        le=65535,
        description="KServe v2 REST port (/v2/..., as Triton's 8000)",
    )
    kserve_host: str = Field(default="127.0.0.1", description="KServe REST listen address")
    gateway_addr: str = Field(
        default="",
        description="the gateway's gRPC address (host:50051), which checks users' API keys and "
        "access tokens on the KServe ports; empty accepts only gateway-minted service tokens",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the deployments table (shared by all replicas); "
        "empty means a SQLite file in the data dir",
    )
    workers: int = Field(default=1, ge=0, description="batch inference jobs run at once")
    backend: Backend = Field(
        default="onnxruntime",
        description="default runtime of new deployments: 'onnxruntime' in-process or 'triton'",
    )
    triton_url: str = Field(
        default="",
        # Checked even when unset, so backend=triton without an address fails at start.
        validate_default=True,
        description="a Triton server's gRPC address (host:8001); enables the triton runtime; "
        "required when backend=triton",
    )
    onnx_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads per model; 0 = all cores"
    )
    onnx_providers: list[str] = Field(
        default_factory=list,
        description="ONNX Runtime execution providers in order of preference; empty = CUDA "
        "when a GPU is available, then CPU",
    )
    max_batch_size: int = Field(
        default=8, ge=1, le=1024, description="dynamic batching: most images per model call"
    )
    batch_queue_delay_ms: float = Field(
        default=2.0,
        ge=0,
        le=10_000,
        description="dynamic batching: how long a request may wait for others to join its batch",
    )
    max_image_bytes: int = Field(
        default=MAX_IMAGE_BYTES,
        ge=1,
        le=MAX_IMAGE_BYTES,
        description="largest encoded image accepted (the contract's limit is 20 MiB)",
    )
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="largest decoded image (width x height) accepted"
    )
    reconcile_seconds: float = Field(
        default=2.0,
        gt=0,
        description="how often a replica compares its loaded models with the deployments table",
    )
    model_cache_dir: Path | None = Field(
        default=None, description="downloaded export packages; default <data_dir>/models"
    )

    @field_validator("triton_url")
    @classmethod
    def _triton_needs_url(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "triton" and not value:
            raise ValueError("required when VISIONMESH_BACKEND is 'triton'")
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'inference.db').resolve()}"

    def resolved_model_cache_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"
