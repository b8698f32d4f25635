"""Service configuration from `VISIONMESH_*` environment variables, failing early and clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ENV_PREFIX", "ConfigError", "ServiceSettings", "env_var_name", "load_settings"]

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
