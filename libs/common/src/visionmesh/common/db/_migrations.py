"""Runs a service's Alembic migrations from code, over the service's own async engine."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from visionmesh.common.db._database import Database

# Key of the PostgreSQL advisory lock that serialises concurrent upgraders (several replicas
# of a service starting at once); any stable 63-bit number unique to this purpose will do.
_PG_MIGRATION_LOCK = zlib.crc32(b"visionmesh.common.db.run_migrations")


def alembic_config(*, script_location: str | Path, database_url: str | None = None) -> Config:
    """An Alembic Config without an ini file; `script_location` may be `package:folder`."""
    config = Config()
    # configparser treats % as interpolation; a path may contain one.
    config.set_main_option("script_location", str(script_location).replace("%", "%%"))
    if database_url is not None:
        # Kept out of the ini options so a password with % or special characters survives.
        config.attributes["database_url"] = database_url
    return config


async def run_migrations(
    *, database_url: str, script_location: str | Path, revision: str = "head"
) -> None:
    """Upgrades the database to `revision` in one transaction.

    The service's `env.py` must call `visionmesh.common.db.alembic_env.run(metadata)`, which
    picks up the connection handed over here.
    """
    config = alembic_config(script_location=script_location, database_url=database_url)
    database = Database(database_url)
    try:
        async with database.engine.begin() as connection:
            if database.is_postgresql:
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            await connection.run_sync(_upgrade, config, revision)
    finally:
        await database.dispose()


def _upgrade(connection: Connection, config: Config, revision: str) -> Any:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
