"""The gateway's migrations build exactly the tables its models declare, on both backends."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.db._migrations import alembic_config
from visionmesh.gateway.app import MIGRATIONS
from visionmesh.gateway.db.models import Base


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _downgrade(connection: Connection, database_url: str, revision: str) -> None:
    config = alembic_config(script_location=MIGRATIONS, database_url=database_url)
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrations_match_the_models_and_0003_downgrades(database_url: str) -> None:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS, revision="0002")
    database = Database(database_url)
    try:
        async with database.engine.connect() as connection:
            assert "exports" not in await connection.run_sync(_tables)
            missing = await connection.run_sync(_differences)
            assert [(d[0], d[1].name) for d in missing if d[0] == "add_table"] == [
                ("add_table", "exports")
            ]
        await run_migrations(database_url=database_url, script_location=MIGRATIONS)
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
        async with database.engine.begin() as connection:
            await connection.run_sync(_downgrade, database_url, "0002")
            assert "exports" not in await connection.run_sync(_tables)
        await run_migrations(database_url=database_url, script_location=MIGRATIONS)
        async with database.engine.connect() as connection:
            assert "exports" in await connection.run_sync(_tables)
    finally:
        await database.dispose()
