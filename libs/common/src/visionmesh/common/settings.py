"""Service configuration from `VISIONMESH_*` environment variables, failing early and clearly.

`ServiceSettings` holds what every process shares (ports, logging, data dir). What several
services share beyond that is a mixin here, declared once, so the variable names and their
meaning cannot drift apart between services:

- `NatsSettings`: `VISIONMESH_NATS_URL`
- `ObjectStoreSettings`: `VISIONMESH_S3_*`
- `ServiceTokenAuthSettings`: `VISIONMESH_SERVICE_TOKEN_PUBLIC_KEY_FILE`, turned into the
  gRPC authenticator by `service_token_authenticator` (fails closed: no key, no start)
- `JobWorkerSettings`: `VISIONMESH_WORKERS`, `VISIONMESH_ACK_WAIT_SECONDS`, ... for every
  process that pulls jobs off the JetStream work queue

A service's settings class lists the mixins before `ServiceSettings`:
`class TrainingSettings(NatsSettings, ObjectStoreSettings, ServiceSettings)`.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from visionmesh.common.auth import ServiceTokenVerifier
    from visionmesh.common.storage import ObjectStoreConfig

__all__ = [
    "ENV_PREFIX",
    "SERVICE_TOKEN_PUBLIC_KEY_ENV",
    "ConfigError",
    "JobWorkerSettings",
    "NatsSettings",
    "ObjectStoreSettings",
    "ServiceSettings",
    "ServiceTokenAuthSettings",
    "env_var_name",
    "load_settings",
    "service_token_authenticator",
]

ENV_PREFIX = "VISIONMESH_"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ConfigError(RuntimeError):
    """The environment does not describe a runnable service.

    A RuntimeError, not a VisionMeshError: it happens before any RPC exists, is fatal to
    the process, and must never be mapped to a status code. The message names each
    offending environment variable and what it is for, one problem per line.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class ServiceSettings(BaseSettings):
    """Settings every service shares; subclass it and declare peers as required fields.

    A required field with a `description` fails at start with
    "VISIONMESH_<FIELD> is required: <description>" when built through `load_settings`.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        case_sensitive=False,
    )

    service_name: str = Field(
        default="visionmesh", min_length=1, description="name used in logs, metrics and health"
    )
    grpc_host: str = Field(default="127.0.0.1", description="interface the gRPC server binds")
    grpc_port: int = Field(
        default=50051, ge=0, le=65535, description="gRPC listen port (0 picks a free port)"
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus /metrics HTTP port (0 disables it)"
    )
    log_level: LogLevel = Field(default="INFO", description="minimum log level")
    log_json: bool = Field(default=False, description="emit JSON log lines instead of console text")
    data_dir: Path = Field(
        default=Path(".visionmesh"), description="directory for local state and caches"
    )
    grpc_max_message_bytes: int = Field(
        # Images travel inside requests (Predict, Embed), so the 4 MiB gRPC default is too small.
        default=64 * 1024 * 1024,
        gt=0,
        description="largest gRPC message sent or received, in bytes",
    )
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="time in-flight RPCs get to finish on SIGTERM"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# --- shared mixins --------------------------------------------------------------------------
#
# Plain pydantic models: their fields become fields of the BaseSettings class that lists them,
# and are read from the environment with its prefix like any other.


class NatsSettings(BaseModel):
    """The event bus: every service that publishes or consumes jobs and events."""

    nats_url: str = Field(description="the NATS JetStream server address (nats://host:4222)")


class ObjectStoreSettings(BaseModel):
    """The S3 object store holding datasets, checkpoints and model artifacts."""

    s3_endpoint: str = Field(description="the S3 API endpoint host:port (MinIO, SeaweedFS)")
    s3_access_key: str = Field(description="S3 access key")
    s3_secret_key: str = Field(description="S3 secret key")
    s3_bucket: str = Field(default="visionmesh", description="bucket for datasets and artifacts")
    s3_secure: bool = Field(default=False, description="use HTTPS for S3")
    s3_region: str = Field(default="us-east-1", description="S3 region")

    def object_store_config(self, *, public_endpoint: str | None = None) -> ObjectStoreConfig:
        """These settings as the ObjectStore's config."""
        from visionmesh.common.storage import ObjectStoreConfig

        return ObjectStoreConfig(
            endpoint=self.s3_endpoint,
            public_endpoint=public_endpoint or None,
            access_key=self.s3_access_key,
            secret_key=self.s3_secret_key,
            bucket=self.s3_bucket,
            secure=self.s3_secure,
            region=self.s3_region,
        )


SERVICE_TOKEN_PUBLIC_KEY_ENV = f"{ENV_PREFIX}SERVICE_TOKEN_PUBLIC_KEY_FILE"


class ServiceTokenAuthSettings(BaseModel):
    """An internal service whose gRPC calls carry gateway-minted service tokens."""

    service_token_public_key_file: Path | None = Field(
        default=None,
        description="the gateway's Ed25519 public key (PEM) that verifies service tokens; "
        "required: the service does not start without it",
    )


class JobWorkerSettings(BaseModel):
    """A process that pulls jobs off the JetStream work queue (`visionmesh.common.jobs`)."""

    workers: int = Field(default=1, ge=0, description="jobs this process runs at once")
    ack_wait_seconds: float = Field(
        default=60.0, gt=0, description="a job is redelivered after this long without a heartbeat"
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="how often a running job tells JetStream it is alive"
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="deliveries of one job before it is FAILED"
    )
    graceful_stop_seconds: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, how long running jobs get to finish before they are handed "
        "back to the queue for another worker",
    )
    transient_retry_limit: int = Field(
        default=10,
        ge=0,
        description="retries of a job after transient failures (peer outages) before it is FAILED",
    )

    @field_validator("heartbeat_seconds")
    @classmethod
    def _heartbeat_within_ack_wait(cls, value: float, info: ValidationInfo) -> float:
        ack_wait = info.data.get("ack_wait_seconds")
        if ack_wait is not None and value >= ack_wait:
            raise ValueError(
                f"must be shorter than {ENV_PREFIX}ACK_WAIT_SECONDS ({ack_wait}), "
                "or running jobs are redelivered"
            )
        return value


def service_token_authenticator(
    settings: ServiceTokenAuthSettings,
    *,
    audience: str,
    public_methods: Collection[str] = (),
) -> ServiceTokenVerifier:
    """The gRPC authenticator of an internal service, from its public key file.

    Fails closed: raises ConfigError naming VISIONMESH_SERVICE_TOKEN_PUBLIC_KEY_FILE when it
    is unset, unreadable or not an Ed25519 public key, so a misconfigured service refuses to
    start rather than serve unauthenticated calls.
    """
    from visionmesh.common.auth import ServiceTokenVerifier

    path = settings.service_token_public_key_file
    name = SERVICE_TOKEN_PUBLIC_KEY_ENV
    if path is None:
        raise ConfigError(
            [
                f"{name} is required: the gateway's Ed25519 public key (PEM) that verifies "
                "service tokens; without it every caller would be trusted"
            ]
        )
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name} ({path}) cannot be read: {exc.strerror or exc}"]) from None
    try:
        return ServiceTokenVerifier.from_pem(
            [pem], audience=audience, public_methods=public_methods
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"{name} ({path}) is not an Ed25519 public key in PEM: {exc}"]) from None


# --- loading --------------------------------------------------------------------------------

S = TypeVar("S", bound=BaseSettings)


def env_var_name(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable that feeds the field at pydantic error location `loc`."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    delimiter = str(cls.model_config.get("env_nested_delimiter") or "__")
    head, *rest = [str(part) for part in loc] or [""]
    field = cls.model_fields.get(head)
    if field is not None and isinstance(field.validation_alias, str):
        head = field.validation_alias
        prefix = ""
    return (prefix + delimiter.join([head, *rest])).upper()


def _describe(cls: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    field = cls.model_fields.get(str(loc[0])) if loc else None
    return field.description if field is not None and field.description else ""


def load_settings(cls: type[S], /, **overrides: Any) -> S:
    """Build `cls` from the environment (`overrides` win); raise ConfigError naming each variable.

    Values are never echoed in the message, since settings hold secrets.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors(include_url=False, include_input=False):
            loc = tuple(error["loc"])
            name = env_var_name(cls, loc)
            description = _describe(cls, loc)
            if error["type"] == "missing":
                problem = f"{name} is required"
            else:
                problem = f"{name} is invalid ({error['msg']})"
            problems.append(f"{problem}: {description}" if description else problem)
        raise ConfigError(problems) from None
