"""Database: URL normalisation, SQLite pragmas, transactions, Alembic on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.exc import IntegrityError
from visionmesh.common.db import Database, normalize_database_url, run_migrations
from visionmesh.common.errors import InvalidArgument, Unavailable

MIGRATIONS = Path(__file__).parent / "migrations_fixture"

metadata = MetaData()
parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
children = Table(
    "children",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id"), nullable=False),
    Column("name", String(32), nullable=False),
)
counters = Table(
    "counters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", Integer, nullable=False),
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/x.db", "sqlite+aiosqlite:///data/x.db"),
        ("sqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://u:p%40ss@db:5432/vm", "postgresql+asyncpg://u:p%40ss@db:5432/vm"),
        ("postgres://u@db/vm", "postgresql+asyncpg://u@db/vm"),
        ("postgresql+psycopg2://u@db/vm", "postgresql+asyncpg://u@db/vm"),
        ("postgresql+asyncpg://u@db/vm", "postgresql+asyncpg://u@db/vm"),
        ("postgresql://u@db/vm?sslmode=require", "postgresql+asyncpg://u@db/vm?ssl=require"),
    ],
)
def test_normalize_database_url(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize("bad", ["mysql://u@db/vm", "not a url"])
def test_normalize_database_url_rejects_other_databases(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_database_url(bad)


async def test_sqlite_connections_use_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    async with Database(f"sqlite:///{tmp_path / 'nested' / 'db.sqlite'}") as db:
        async with db.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
        assert (tmp_path / "nested" / "db.sqlite").exists()


async def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    async with Database(f"sqlite:///{tmp_path / 'db.sqlite'}") as db:
        await db.create_all(metadata)
        with pytest.raises(IntegrityError):
            async with db.session() as session:
                await session.execute(children.insert().values(id=1, parent_id=42, name="orphan"))


async def test_session_commits_on_success_and_rolls_back_on_error(database_url: str) -> None:
    async with Database(database_url) as db:
        await db.create_all(metadata)
        async with db.session() as session:
            await session.execute(parents.insert().values(id=1))

        with pytest.raises(RuntimeError, match="handler failed"):
            async with db.session() as session:
                await session.execute(parents.insert().values(id=2))
                await session.execute(children.insert().values(id=1, parent_id=1, name="kept?"))
                raise RuntimeError("handler failed")

        async with db.session() as session:
            assert (await session.execute(select(parents.c.id))).scalars().all() == [1]
            assert (await session.execute(select(children.c.id))).scalars().all() == []


async def test_concurrent_read_modify_write_transactions_do_not_fail(tmp_path: Path) -> None:
    # Read-then-write transactions racing on SQLite fail with "database is locked" unless
    # they take the write lock at BEGIN; the sleep widens the race window.
    async with Database(f"sqlite:///{tmp_path / 'db.sqlite'}") as db:
        await db.create_all(metadata)
        async with db.session() as session:
            await session.execute(counters.insert().values(id=1, value=0))

        async def increment() -> None:
            async with db.session() as session:
                value = (await session.execute(select(counters.c.value))).scalar_one()
                await asyncio.sleep(0.01)
                await session.execute(counters.update().values(value=value + 1))

        await asyncio.gather(*(increment() for _ in range(8)))
        async with db.session() as session:
            assert (await session.execute(select(counters.c.value))).scalar_one() == 8


async def test_in_memory_sqlite_keeps_one_database_across_sessions() -> None:
    async with Database("sqlite://") as db:
        await db.create_all(metadata)
        async with db.session() as session:
            await session.execute(parents.insert().values(id=7))
        async with db.session() as session:
            assert (await session.execute(select(parents.c.id))).scalars().all() == [7]


async def test_ping_reports_unreachable_database_as_unavailable() -> None:
    async with Database("postgresql://nobody@127.0.0.1:1/none") as db:
        with pytest.raises(Unavailable):
            await db.ping()


async def _tables_and_revision(database_url: str) -> tuple[set[str], list[str], str | None]:
    async with Database(database_url) as db, db.connect() as conn:

        def read(sync_conn: object) -> tuple[set[str], list[str]]:
            inspector = inspect(sync_conn)
            columns = [c["name"] for c in inspector.get_columns("widgets")]
            return set(inspector.get_table_names()), columns

        tables, widget_columns = await conn.run_sync(read)
        revision = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        return tables, widget_columns, revision


async def test_run_migrations_upgrades_step_by_step_and_is_idempotent(database_url: str) -> None:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS, revision="0001")
    tables, columns, revision = await _tables_and_revision(database_url)
    assert tables == {"alembic_version", "widgets"}
    assert columns == ["id", "name"]
    assert revision == "0001"

    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    tables, columns, revision = await _tables_and_revision(database_url)
    assert tables == {"alembic_version", "widgets", "gadgets"}
    assert columns == ["id", "name", "colour"]
    assert revision == "0002"


async def test_run_migrations_accepts_the_sync_url_form(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    await run_migrations(database_url=url, script_location=str(MIGRATIONS))
    _, _, revision = await _tables_and_revision(url)
    assert revision == "0002"


async def test_failed_migration_leaves_nothing_behind(database_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "versions").mkdir(parents=True)
    (broken / "env.py").write_text((MIGRATIONS / "env.py").read_text())
    (broken / "versions" / "0001_widgets.py").write_text(
        (MIGRATIONS / "versions" / "0001_widgets.py").read_text()
    )
    (broken / "versions" / "0002_bad.py").write_text(
        'revision = "0002"\ndown_revision = "0001"\n'
        "from alembic import op\n\n"
        "def upgrade():\n    op.execute('SELECT * FROM no_such_table')\n"
    )
    with pytest.raises(Exception, match="no_such_table"):
        await run_migrations(database_url=database_url, script_location=broken)
    async with Database(database_url) as db, db.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    # One transaction for the whole upgrade: 0001's table went with the failed 0002.
    assert "widgets" not in tables
