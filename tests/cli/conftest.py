"""CLI fixtures: an isolated config dir, a CliRunner, and the gateway fixtures re-exported."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.gateway.conftest import bus, harness, make_gateway  # noqa: F401


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private VISIONMESH_CONFIG_DIR; no token or gateway leaks in from the environment."""
    directory = tmp_path / "config"
    monkeypatch.setenv("VISIONMESH_CONFIG_DIR", str(directory))
    monkeypatch.delenv("VISIONMESH_TOKEN", raising=False)
    monkeypatch.delenv("VISIONMESH_GATEWAY", raising=False)
    # Wide enough that tables never truncate the 36-character ids the tests look for.
    monkeypatch.setenv("COLUMNS", "200")
    return directory


@pytest.fixture
def runner(config_dir: Path) -> CliRunner:
    return CliRunner()
