"""Embedding service settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from visionmesh.common.jobs import WorkerServiceSettings
from visionmesh.common.limits import MAX_IMAGE_BYTES, PREDICT_MAX_MESSAGE_BYTES
from visionmesh.embedding.core.edge_store import DEFAULT_INDEX_THRESHOLD


class EmbeddingSettings(WorkerServiceSettings):
    """Ports, peers, models and the vector store of the embedding service."""

    service_name: str = "embedding"
    grpc_port: int = Field(default=50091, ge=0, le=65535, description="gRPC listen port")
    grpc_max_message_bytes: int = Field(
        # Embed and Match carry many images, as the gateway forwards them.
        default=PREDICT_MAX_MESSAGE_BYTES,
        gt=0,
        description="largest gRPC message sent or received, in bytes",
    )
    workers: int = Field(default=1, ge=0, description="embedding jobs run at once")
    qdrant_url: str = Field(
        default="",
        description="a Qdrant server URL (http://host:6333); empty means Qdrant Edge "
        "in-process under <data_dir>/vectors",
    )
    qdrant_api_key: str = Field(default="", description="the Qdrant server's API key, if any")
    vector_index_threshold: int = Field(
        default=DEFAULT_INDEX_THRESHOLD,
        ge=1,
        description="Qdrant Edge: unindexed points in a space that start an HNSW build (in a "
        "child process; the service keeps answering)",
    )
    vector_index_check_seconds: float = Field(
        default=30.0, gt=0, description="Qdrant Edge: how often spaces are checked for a build"
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL of the collections table (shared by all replicas); "
        "empty means a SQLite file in the data dir",
    )
    dinov2_dir: Path | None = Field(
        default=None,
        description="directory of local DINOv2 models (one transformers save_pretrained "
        "folder each, named as requests name them, e.g. dinov2_vits14); default "
        "<data_dir>/models/dinov2. Nothing is downloaded at run time",
    )
    default_model: str = Field(
        default="", description="model used when a request names none; default the first DINOv2"
    )
    device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="where embedders run: auto (CUDA when present), cpu, cuda or cuda:N",
    )
    embed_batch_size: int = Field(
        default=32, ge=1, le=1024, description="images per forward pass of an embedder"
    )
    max_image_bytes: int = Field(
        default=MAX_IMAGE_BYTES, ge=1, le=MAX_IMAGE_BYTES, description="largest encoded image"
    )
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="largest decoded image (width x height)"
    )
    inference_addr: str = Field(
        default="",
        description="the inference service's gRPC address (host:50081), for scene matching "
        "with a detector deployment; empty disables it",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'embedding.db').resolve()}"

    def resolved_dinov2_dir(self) -> Path:
        return self.dinov2_dir or self.data_dir / "models" / "dinov2"
