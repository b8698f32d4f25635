"""ServiceSettings from VISIONMESH_* variables, and ConfigError messages naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError
from visionmesh.common.errors import VisionMeshError
from visionmesh.common.settings import ConfigError, ServiceSettings, env_var_name, load_settings


class TrainingSettings(ServiceSettings):
    service_name: str = "training"
    nats_url: str = Field(description="the NATS server address (nats://host:4222)")


class S3(BaseModel):
    endpoint: str = Field(description="S3 endpoint URL")


class StorageSettings(ServiceSettings):
    s3: S3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("VISIONMESH_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings(ServiceSettings)
    assert settings.grpc_host == "127.0.0.1"
    assert settings.metrics_port == 0
    assert settings.grpc_max_message_bytes == 64 * 1024 * 1024
    assert settings.data_dir == Path(".visionmesh")
    assert settings.log_level == "INFO"
    assert settings.log_json is False


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_NATS_URL", "nats://localhost:4222")
    monkeypatch.setenv("VISIONMESH_GRPC_PORT", "50061")
    monkeypatch.setenv("VISIONMESH_LOG_LEVEL", "debug")
    monkeypatch.setenv("VISIONMESH_LOG_JSON", "true")
    monkeypatch.setenv("VISIONMESH_SHUTDOWN_GRACE_SECONDS", "2.5")
    settings = load_settings(TrainingSettings)
    assert settings.nats_url == "nats://localhost:4222"
    assert settings.grpc_port == 50061
    assert settings.log_level == "DEBUG"
    assert settings.log_json is True
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.service_name == "training"


def test_missing_required_peer_names_the_variable() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(TrainingSettings)
    assert str(excinfo.value) == (
        "VISIONMESH_NATS_URL is required: the NATS server address (nats://host:4222)"
    )
    assert not isinstance(excinfo.value, VisionMeshError)
    assert isinstance(excinfo.value, RuntimeError)


def test_invalid_value_names_variable_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_GRPC_PORT", "s3cr3t-value")
    monkeypatch.setenv("VISIONMESH_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(TrainingSettings)
    problems = excinfo.value.problems
    assert len(problems) == 3
    assert any(p.startswith("VISIONMESH_GRPC_PORT is invalid") for p in problems)
    assert any(p.startswith("VISIONMESH_LOG_LEVEL is invalid") for p in problems)
    assert any(p.startswith("VISIONMESH_NATS_URL is required") for p in problems)
    assert "s3cr3t-value" not in str(excinfo.value)


def test_out_of_range_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_GRPC_PORT", "70000")
    with pytest.raises(ConfigError, match="VISIONMESH_GRPC_PORT is invalid"):
        load_settings(ServiceSettings)


def test_nested_fields_use_the_nested_delimiter(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="VISIONMESH_S3 is required"):
        load_settings(StorageSettings)
    monkeypatch.setenv("VISIONMESH_S3__ENDPOINT", "http://minio:9000")
    assert load_settings(StorageSettings).s3.endpoint == "http://minio:9000"
    assert env_var_name(StorageSettings, ("s3", "endpoint")) == "VISIONMESH_S3__ENDPOINT"


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_GRPC_PORT", "50061")
    settings = load_settings(TrainingSettings, grpc_port=0, nats_url="nats://x:4222")
    assert settings.grpc_port == 0


def test_settings_are_frozen() -> None:
    settings = load_settings(ServiceSettings)
    with pytest.raises(ValidationError):
        settings.grpc_port = 1  # type: ignore[misc]
