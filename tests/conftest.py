"""Shared fixtures: real nats-server and SeaweedFS processes, object stores, database URLs.

Servers are session-scoped and start only when a test first asks for them, so test runs
that need neither pay nothing. PostgreSQL is used when one answers on 127.0.0.1:5432 (set
VISIONMESH_TEST_POSTGRES_URL to point elsewhere); on a developer machine without one its
tests are skipped, but under CI (`CI=true`) an unreachable PostgreSQL fails them: CI has one,
and a suite that quietly skipped half its database tests would pass for the wrong reason.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from visionmesh.common.embedded import (
    NatsServer,
    SeaweedS3,
    postgres_url_if_reachable,
)
from visionmesh.common.errors import NotFound
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig

S3_ACCESS_KEY = "visionmesh-test"
S3_SECRET_KEY = "visionmesh-test-secret"
S3_REGION = "us-east-1"

POSTGRES_URL_ENV = "VISIONMESH_TEST_POSTGRES_URL"
_POSTGRES_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    """A nats-server with JetStream on a free port, its store in a fresh temp dir."""
    root = tmp_path_factory.mktemp("nats")
    async with NatsServer(store_dir=root / "jetstream", log_dir=root) as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def s3_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SeaweedS3]:
    """SeaweedFS (`weed mini`) with its S3 gateway on a free port and test credentials."""
    root = tmp_path_factory.mktemp("seaweedfs")
    async with SeaweedS3(
        data_dir=root / "data",
        log_dir=root,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        region=S3_REGION,
    ) as server:
        yield server


@pytest.fixture
def object_store_config(s3_server: SeaweedS3) -> ObjectStoreConfig:
    """Config for a bucket name no other test uses (the bucket itself is not created)."""
    return ObjectStoreConfig(
        endpoint=s3_server.endpoint,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        bucket=f"test-{uuid.uuid4().hex[:20]}",
        secure=False,
        region=S3_REGION,
    )


@pytest_asyncio.fixture
async def object_store(object_store_config: ObjectStoreConfig) -> AsyncIterator[ObjectStore]:
    """An ObjectStore on its own fresh bucket, emptied and removed afterwards."""
    store = ObjectStore(object_store_config)
    await store.ensure_bucket()
    try:
        yield store
    finally:
        # Buckets are SeaweedFS collections with their own volumes; dropping them keeps a
        # long session from running out of volume slots.
        with contextlib.suppress(NotFound):
            await store.remove_bucket()
        store.close()


def running_in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """`CI` is set to a true value, as GitHub Actions, GitLab CI and most others do."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class PostgresRequired(RuntimeError):
    """Under CI, no PostgreSQL answered: its tests must fail, not skip."""


async def detect_postgres_url(
    candidates: Sequence[str], *, required: bool, connect_timeout: float = 1.0
) -> str | None:
    """The first candidate URL that answers and whose user may CREATE DATABASE.

    None when there is none, unless `required`: then PostgresRequired says what was tried.
    """
    for candidate in candidates:
        url = await postgres_url_if_reachable(candidate, timeout=connect_timeout)
        if url is not None and await _can_create_database(url):
            return url
    if required:
        tried = ", ".join(make_url(c).render_as_string(hide_password=True) for c in candidates)
        raise PostgresRequired(
            f"CI is set but no PostgreSQL that may CREATE DATABASE answered (tried {tried}); "
            f"start one or set {POSTGRES_URL_ENV}: PostgreSQL tests must not skip in CI"
        )
    return None


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_server_url() -> str | None:
    """A PostgreSQL URL (sync form) whose user may CREATE DATABASE, or None (never under CI)."""
    override = os.environ.get(POSTGRES_URL_ENV)
    candidates = (override,) if override else _POSTGRES_CANDIDATES
    try:
        return await detect_postgres_url(candidates, required=running_in_ci())
    except PostgresRequired as exc:
        pytest.fail(str(exc), pytrace=False)


async def _can_create_database(url: str) -> bool:
    conn = await _admin_connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            )
        )
    finally:
        await conn.close()


async def _admin_connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
        timeout=5,
    )


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server_url: str | None
) -> AsyncIterator[str]:
    """An async-driver URL of an empty database, once per backend.

    SQLite is a file in the test's temp dir; PostgreSQL gets a database created for this
    test and dropped after it, so parallel runs and reruns never see each other's tables.
    """
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    if postgres_server_url is None:
        pytest.skip(f"no PostgreSQL reachable (tried {POSTGRES_URL_ENV} or 127.0.0.1:5432)")
    name = f"vm_test_{uuid.uuid4().hex[:16]}"
    admin = await _admin_connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield (
            make_url(postgres_server_url)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        admin = await _admin_connect(postgres_server_url)
        try:
            # FORCE ends connections a failed test may have leaked (PostgreSQL >= 13).
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
