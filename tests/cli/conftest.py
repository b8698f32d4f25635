"""CLI fixtures: an isolated config dir, a CliRunner, and the gateway fixtures re-exported."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO, cast

import pytest
import structlog
from typer.testing import CliRunner

from tests.gateway.conftest import (  # noqa: F401
    bus,
    detect_package,
    harness,
    make_gateway,
    served,
)


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


class _Pinned(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


@pytest.fixture(autouse=True)
def _gateway_logs_stay_out_of_cli_output() -> Iterator[None]:
    """The in-process gateway logs through structlog's default PrintLogger, which writes to
    whatever `sys.stdout` is at that moment: inside `CliRunner.invoke` (run in a thread) that
    is the CLI's captured output. Pin the gateway's logs to the stream of the test instead."""
    saved = structlog.get_config()
    # A wrapper, not sys.stdout itself: PrintLogger treats the stream that was sys.stdout
    # when structlog was imported as "the current sys.stdout" and looks it up per line.
    pinned = cast(TextIO, _Pinned(sys.stdout))  # writes like a text stream, all it needs
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=pinned))
    yield
    structlog.configure(**saved)
