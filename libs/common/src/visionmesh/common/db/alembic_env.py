"""The body of every service's Alembic `env.py`: `alembic_env.run(Base.metadata)`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from visionmesh.common.db._database import Database, normalize_database_url

DATABASE_URL_ENV = "VISIONMESH_DATABASE_URL"
"""Where the `alembic` command line finds the database when no URL was configured."""


def run(target_metadata: MetaData | None, **configure_options: Any) -> None:
    """Runs the migrations Alembic asked for, online or offline.

    Online with a connection from `run_migrations` (the normal path), or from the URL in the
    Alembic config / `VISIONMESH_DATABASE_URL` when invoked as `alembic ...` by a developer.
    SQLite gets batch mode so ALTERs work; `configure_options` go to `context.configure`.
    """
    config = context.config
    if context.is_offline_mode():
        url = normalize_database_url(_configured_url())
        context.configure(
            url=url,
            target_metadata=target_metadata,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            render_as_batch=url.startswith("sqlite"),
            **configure_options,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_online(connection, target_metadata, configure_options)
        return
    asyncio.run(_run_standalone(_configured_url(), target_metadata, configure_options))


def _configured_url() -> str:
    config = context.config
    url = (
        config.attributes.get("database_url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get(DATABASE_URL_ENV)
    )
    if not url:
        raise RuntimeError(f"no database URL: set sqlalchemy.url or {DATABASE_URL_ENV}")
    return str(url)


def _run_online(
    connection: Connection, target_metadata: MetaData | None, options: dict[str, Any]
) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        **options,
    )
    # Inside run_migrations' transaction this is a no-op; standalone it opens one.
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(
    url: str, target_metadata: MetaData | None, options: dict[str, Any]
) -> None:
    database = Database(url)
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(_run_online, target_metadata, options)
    finally:
        await database.dispose()
