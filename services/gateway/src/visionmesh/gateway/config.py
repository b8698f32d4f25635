"""Gateway settings from VISIONMESH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from visionmesh.common.limits import PREDICT_MAX_MESSAGE_BYTES
from visionmesh.common.settings import NatsSettings, ObjectStoreSettings, ServiceSettings


class GatewaySettings(NatsSettings, ObjectStoreSettings, ServiceSettings):
    """What the gateway needs: its ports, SQL, the event bus, the object store, peers."""

    service_name: str = "gateway"
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC listen port")
    rest_host: str = Field(default="127.0.0.1", description="interface the REST server binds")
    rest_port: int = Field(default=8080, ge=0, le=65535, description="REST/JSON listen port")
    database_pool_size: int = Field(
        default=20, gt=0, description="SQL connections kept open (PostgreSQL)"
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL (postgresql://... or sqlite:///...); "
        "empty means a SQLite file in the data dir",
    )
    s3_public_endpoint: str = Field(
        default="", description="host:port clients use for presigned URLs; default s3_endpoint"
    )
    training_addr: str = Field(description="the training service's gRPC address (host:port)")
    export_addr: str = Field(
        default="127.0.0.1:50071",
        description="the export service's gRPC address (host:port); while it does not answer, "
        "export specs are checked by the shared rules, which accept ONNX only",
    )
    inference_addr: str = Field(
        default="127.0.0.1:50081",
        description="the inference service's gRPC address (host:port); deployments, Predict "
        "and batch inference intake go there (UNAVAILABLE while it does not answer)",
    )
    embedding_addr: str = Field(
        default="127.0.0.1:50091",
        description="the embedding service's gRPC address (host:port); collections, Embed, "
        "Search, Match and embedding job intake go there (UNAVAILABLE while it does not "
        "answer)",
    )
    grpc_max_message_bytes: int = Field(
        # Predict carries up to 64 images of up to 20 MiB each (inference.proto), through
        # this server and on to the inference service.
        default=PREDICT_MAX_MESSAGE_BYTES,
        gt=0,
        description="largest gRPC message sent or received, in bytes (Predict's images)",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) signing access and service tokens; "
        "generated in the data dir when unset",
    )
    access_token_ttl_seconds: int = Field(default=3600, gt=0, description="access JWT lifetime")
    open_signup: bool = Field(
        default=False, description="let anyone sign up (otherwise admins only, after the first)"
    )
    password_hash_workers: int = Field(
        default=2,
        gt=0,
        description="threads hashing passwords (argon2), apart from the default executor",
    )
    password_hash_queue: int = Field(
        default=32,
        ge=0,
        description="password hashes allowed to wait for a thread; beyond, logins get 429",
    )
    login_max_failures_per_user: int = Field(
        default=5, gt=0, description="failed logins per username within the window before 429"
    )
    login_max_failures_per_address: int = Field(
        default=30,
        gt=0,
        description="failed logins per client address within the window before 429",
    )
    login_failure_window_seconds: float = Field(
        default=300.0, gt=0, description="how long a failed login counts against user and address"
    )
    dataset_max_bytes: int = Field(
        default=2 * 1024**3, gt=0, description="largest dataset archive accepted"
    )
    presign_ttl_seconds: int = Field(default=3600, gt=0, description="presigned URL lifetime")
    outbox_poll_seconds: float = Field(
        default=0.5, gt=0, description="how often the outbox relay looks for unpublished rows"
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"
