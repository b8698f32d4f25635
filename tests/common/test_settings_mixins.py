"""The shared settings mixins: one declaration per variable, and the fail-closed authenticator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    generate_signing_key,
    private_key_pem,
    public_key_pem,
)
from visionmesh.common.settings import (
    ConfigError,
    JobWorkerSettings,
    NatsSettings,
    ObjectStoreSettings,
    ServiceSettings,
    ServiceTokenAuthSettings,
    env_var_name,
    load_settings,
    service_token_authenticator,
)
from visionmesh.embedding.config import EmbeddingSettings
from visionmesh.export.config import ExportSettings
from visionmesh.gateway.config import GatewaySettings
from visionmesh.inference.config import InferenceSettings
from visionmesh.training.config import TrainingSettings

KEY_VARIABLE = "VISIONMESH_SERVICE_TOKEN_PUBLIC_KEY_FILE"
SERVICES = (GatewaySettings, TrainingSettings, ExportSettings, InferenceSettings, EmbeddingSettings)
S3_FIELDS = ("s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket", "s3_secure", "s3_region")


class WorkerSettings(NatsSettings, JobWorkerSettings, ServiceSettings):
    pass


class AuthSettings(ServiceTokenAuthSettings, ServiceSettings):
    pass


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("VISIONMESH_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("cls", SERVICES, ids=lambda cls: cls.__name__)
def test_shared_fields_come_from_the_mixins_under_the_same_variables(
    cls: type[ServiceSettings],
) -> None:
    assert issubclass(cls, NatsSettings) and issubclass(cls, ObjectStoreSettings)
    for field in ("nats_url", *S3_FIELDS):
        assert field in cls.model_fields
        assert env_var_name(cls, (field,)) == f"VISIONMESH_{field.upper()}"
    # Declared once: a service class does not redeclare a shared field.
    for mixin in (NatsSettings, ObjectStoreSettings):
        assert not set(mixin.model_fields) & set(vars(cls).get("__annotations__", {}))


@pytest.mark.parametrize(
    "cls", [c for c in SERVICES if c is not GatewaySettings], ids=lambda cls: cls.__name__
)
def test_internal_services_verify_service_tokens(cls: type[ServiceSettings]) -> None:
    assert issubclass(cls, ServiceTokenAuthSettings)
    assert env_var_name(cls, ("service_token_public_key_file",)) == KEY_VARIABLE


def test_required_shared_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(TrainingSettings)
    problems = "\n".join(excinfo.value.problems)
    for name in ("NATS_URL", "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY"):
        assert f"VISIONMESH_{name} is required" in problems


def test_object_store_config(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ObjectStoreSettings(s3_endpoint="minio:9000", s3_access_key="a", s3_secret_key="b")
    config = settings.object_store_config(public_endpoint="s3.example.com")
    assert (config.endpoint, config.access_key, config.secret_key) == ("minio:9000", "a", "b")
    assert (config.bucket, config.secure, config.region) == ("visionmesh", False, "us-east-1")
    assert config.public_endpoint == "s3.example.com"
    assert settings.object_store_config().public_endpoint is None


def test_job_worker_defaults_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_NATS_URL", "nats://nats:4222")
    settings = load_settings(WorkerSettings)
    assert settings.workers == 1
    assert settings.graceful_stop_seconds == 30
    assert settings.transient_retry_limit == 10
    assert settings.heartbeat_seconds < settings.ack_wait_seconds
    for name, value in {
        "WORKERS": "4",
        "ACK_WAIT_SECONDS": "120",
        "HEARTBEAT_SECONDS": "15",
        "MAX_DELIVERIES": "5",
        "GRACEFUL_STOP_SECONDS": "45",
        "TRANSIENT_RETRY_LIMIT": "2",
    }.items():
        monkeypatch.setenv(f"VISIONMESH_{name}", value)
    settings = load_settings(WorkerSettings)
    assert (settings.workers, settings.ack_wait_seconds, settings.heartbeat_seconds) == (4, 120, 15)
    assert (settings.max_deliveries, settings.graceful_stop_seconds) == (5, 45)
    assert settings.transient_retry_limit == 2


def test_training_uses_the_job_worker_mixin() -> None:
    assert issubclass(TrainingSettings, JobWorkerSettings)
    for field in JobWorkerSettings.model_fields:
        assert env_var_name(TrainingSettings, (field,)) == f"VISIONMESH_{field.upper()}"


def test_heartbeat_must_be_shorter_than_ack_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("VISIONMESH_ACK_WAIT_SECONDS", "10")
    monkeypatch.setenv("VISIONMESH_HEARTBEAT_SECONDS", "10")
    with pytest.raises(ConfigError, match="VISIONMESH_HEARTBEAT_SECONDS is invalid"):
        load_settings(WorkerSettings)


def test_negative_worker_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONMESH_NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("VISIONMESH_TRANSIENT_RETRY_LIMIT", "-1")
    monkeypatch.setenv("VISIONMESH_GRACEFUL_STOP_SECONDS", "-1")
    with pytest.raises(ConfigError) as excinfo:
        load_settings(WorkerSettings)
    problems = "\n".join(excinfo.value.problems)
    assert "VISIONMESH_TRANSIENT_RETRY_LIMIT is invalid" in problems
    assert "VISIONMESH_GRACEFUL_STOP_SECONDS is invalid" in problems


# --- the service-token authenticator -------------------------------------------------------


def test_authenticator_needs_the_public_key() -> None:
    with pytest.raises(ConfigError) as excinfo:
        service_token_authenticator(AuthSettings(), audience="training")
    assert str(excinfo.value).startswith(f"{KEY_VARIABLE} is required")
    assert isinstance(excinfo.value, RuntimeError)


def test_authenticator_refuses_an_unreadable_key(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    settings = AuthSettings(service_token_public_key_file=missing)
    with pytest.raises(ConfigError, match=f"{KEY_VARIABLE} .*absent.pem.* cannot be read"):
        service_token_authenticator(settings, audience="training")
    settings = AuthSettings(service_token_public_key_file=tmp_path)  # a directory
    with pytest.raises(ConfigError, match=f"{KEY_VARIABLE} .* cannot be read"):
        service_token_authenticator(settings, audience="training")


def test_authenticator_refuses_a_key_that_is_not_an_ed25519_public_key(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigError, match=f"{KEY_VARIABLE} .* not an Ed25519 public key"):
        service_token_authenticator(
            AuthSettings(service_token_public_key_file=garbage), audience="training"
        )
    private = tmp_path / "private.pem"
    private.write_bytes(private_key_pem(generate_signing_key()))
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        service_token_authenticator(
            AuthSettings(service_token_public_key_file=private), audience="training"
        )


async def test_authenticator_verifies_tokens_for_its_audience(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_signing_key()
    path = tmp_path / "gateway-public-key.pem"
    path.write_bytes(public_key_pem(key.public_key()))
    monkeypatch.setenv(KEY_VARIABLE, str(path))
    settings = load_settings(AuthSettings)
    authenticator = service_token_authenticator(
        settings, audience="training", public_methods={"/x.Y/Public"}
    )
    assert isinstance(authenticator, ServiceTokenVerifier)
    assert authenticator.is_public("/x.Y/Public") and not authenticator.is_public("/x.Y/Other")
    caller = Principal(subject="gateway", tenant_id="", role="service", kind="service")
    token = ServiceTokenSigner(private_key=key).sign(audience="training", principal=caller)
    principal = await authenticator.authenticate(
        method="/x.Y/Other", metadata={"authorization": f"Bearer {token}"}
    )
    assert principal == caller
