"""Detects a reachable PostgreSQL server.

The test suite (tests/conftest.py) runs its database tests on PostgreSQL when one answers,
and under CI requires one. Nothing else calls this: `make up` (visionmesh.stack) runs the
gateway on SQLite and never starts or looks for PostgreSQL.
"""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def postgres_url_if_reachable(
    url: str = DEFAULT_POSTGRES_URL,
    *,
    timeout: float = 1.0,  # noqa: ASYNC109 - bounds the connect handshake, not the caller
) -> str | None:
    """Returns `url` if a connection and then `SELECT 1` succeed, else None.

    Each step gets `timeout` seconds, so a dead or silent server costs at most twice that.
    """
    parsed = make_url(url)
    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(
                host=parsed.host or "127.0.0.1",
                port=parsed.port or 5432,
                user=parsed.username,
                password=parsed.password,
                database=parsed.database,
                timeout=timeout,
            ),
            timeout,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    try:
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        conn.terminate()
    return url
