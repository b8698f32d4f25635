"""Where the CLI keeps its gateway URL and token."""

from __future__ import annotations

import stat
from pathlib import Path

from visionmesh.cli.config import (
    DEFAULT_GATEWAY,
    Credentials,
    CredentialsStore,
    config_dir,
    normalize_gateway,
    resolve_gateway,
    resolve_token,
)


def test_config_dir_precedence(tmp_path: Path) -> None:
    assert config_dir({"VISIONMESH_CONFIG_DIR": str(tmp_path)}) == tmp_path
    assert config_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "visionmesh"
    assert config_dir({}) == Path.home() / ".config" / "visionmesh"


def test_normalize_gateway() -> None:
    assert normalize_gateway("localhost:8080/") == "http://localhost:8080"
    assert normalize_gateway(" https://vm.example.com/ ") == "https://vm.example.com"


def test_credentials_are_private_and_keyed_by_gateway(tmp_path: Path) -> None:
    store = CredentialsStore(tmp_path / "cfg")
    path = store.save(Credentials(gateway="http://a:1/", token="tok-a", username="ann"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store.save(Credentials(gateway="http://b:2", token="tok-b", expires_at=1.0))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp left

    a = store.get("http://a:1")
    assert a is not None and a.token == "tok-a" and a.username == "ann" and not a.expired()
    b = store.get("http://b:2")
    assert b is not None and b.expired()
    assert store.get("http://c:3") is None
    assert store.current_gateway() == "http://b:2"  # the last login

    assert store.remove("http://b:2") and not store.remove("http://b:2")
    assert store.current_gateway() is None
    assert store.get("http://a:1") is not None


def test_gateway_and_token_precedence(tmp_path: Path) -> None:
    store = CredentialsStore(tmp_path)
    assert resolve_gateway(None, store=store, environ={}) == DEFAULT_GATEWAY
    store.save(Credentials(gateway="http://saved:1", token="saved-token"))
    assert resolve_gateway(None, store=store, environ={}) == "http://saved:1"
    env = {"VISIONMESH_GATEWAY": "env:2"}
    assert resolve_gateway(None, store=store, environ=env) == "http://env:2"
    assert resolve_gateway("http://flag:3", store=store, environ=env) == "http://flag:3"

    assert resolve_token("http://saved:1", store=store, environ={}) == "saved-token"
    # A token saved for one gateway is never sent to another.
    assert resolve_token("http://other:1", store=store, environ={}) is None
    env_token = {"VISIONMESH_TOKEN": "vm_secret"}
    assert resolve_token("http://saved:1", store=store, environ=env_token) == "vm_secret"
