"""The embedding service's migrations build exactly the tables its models declare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from visionmesh.common.db import Database, run_migrations
from visionmesh.embedding.db import MIGRATIONS
from visionmesh.embedding.db.models import Base


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    # The version table is Alembic's, not a model.
    return [
        d
        for d in compare_metadata(context, Base.metadata)
        if not (d[0] == "remove_table" and d[1].name == "embedding_alembic_version")
    ]


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrations_match_the_models_with_their_own_version_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'embedding.db'}"
    await run_migrations(database_url=url, script_location=MIGRATIONS)
    await run_migrations(database_url=url, script_location=MIGRATIONS)  # idempotent
    database = Database(url)
    try:
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            tables = await connection.run_sync(_tables)
            assert {"collections", "embedding_alembic_version"} <= tables
            assert "alembic_version" not in tables
            version = await connection.scalar(
                text("SELECT version_num FROM embedding_alembic_version")
            )
            assert version == "0002"
    finally:
        await database.dispose()
