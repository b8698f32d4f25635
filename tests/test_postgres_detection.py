"""tests/conftest.py's PostgreSQL detection: optional on a laptop, required under CI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from visionmesh.common.embedded import free_port, postgres_url_if_reachable


def _conftest() -> ModuleType:
    """tests/conftest.py as a module (pytest loads it as a plugin, not as an import)."""
    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("visionmesh_tests_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


conftest = _conftest()


def _dead_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/test"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("", False), ("false", False)],
)
def test_ci_is_recognised(value: str, expected: bool) -> None:
    assert conftest.running_in_ci({"CI": value}) is expected
    assert conftest.running_in_ci({}) is False


async def test_unreachable_postgres_is_a_skip_outside_ci() -> None:
    assert await conftest.detect_postgres_url([_dead_url()], required=False) is None


async def test_unreachable_postgres_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    dead = _dead_url()
    with pytest.raises(conftest.PostgresRequired, match="must not skip in CI") as excinfo:
        await conftest.detect_postgres_url(
            [dead], required=conftest.running_in_ci(), connect_timeout=0.5
        )
    assert dead.rsplit("@", 1)[1] in str(excinfo.value), "says what it tried"


async def test_password_is_not_echoed() -> None:
    url = f"postgresql://postgres:s3cr3t@127.0.0.1:{free_port()}/test"
    with pytest.raises(conftest.PostgresRequired) as excinfo:
        await conftest.detect_postgres_url([url], required=True, connect_timeout=0.5)
    assert "s3cr3t" not in str(excinfo.value)


def test_the_fixture_fails_rather_than_skips_under_ci(tmp_path: Path) -> None:
    """End to end: a test using `database_url` errors under CI when PostgreSQL is down."""
    (tmp_path / "conftest.py").write_text(Path(__file__).with_name("conftest.py").read_text())
    (tmp_path / "test_db.py").write_text(
        "async def test_db(database_url):\n    assert database_url\n"
    )
    env = {**os.environ, "CI": "true", "VISIONMESH_TEST_POSTGRES_URL": _dead_url()}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "asyncio_mode=auto", "-k", "postgresql", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "1 error" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "must not skip in CI" in result.stdout


async def test_a_live_server_is_found_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    url = conftest._POSTGRES_CANDIDATES[0]
    if await postgres_url_if_reachable(url) is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    found = await conftest.detect_postgres_url(
        [_dead_url(), *conftest._POSTGRES_CANDIDATES], required=True
    )
    assert found in conftest._POSTGRES_CANDIDATES
