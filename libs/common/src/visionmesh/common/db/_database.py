"""The async engine and session factory for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool
from visionmesh.common.errors import InvalidArgument, Unavailable

_SQLITE_ASYNC = "sqlite+aiosqlite"
_POSTGRES_ASYNC = "postgresql+asyncpg"
_POSTGRES_DRIVERS = frozenset(
    {"postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+pg8000"}
)
_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite"})


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise InvalidArgument.for_field("database_url", f"not a database URL: {exc}") from exc


def normalize_database_url(url: str | URL) -> str:
    """The async-driver form of a SQLite or PostgreSQL URL.

    `sqlite:///x.db` becomes `sqlite+aiosqlite:///x.db`; `postgresql://` (or `postgres://`,
    or a sync driver) becomes `postgresql+asyncpg://`, with libpq's `sslmode` renamed to
    asyncpg's `ssl`. Anything else is `InvalidArgument`.
    """
    parsed = _parse(url)
    name = parsed.drivername
    if name in _SQLITE_DRIVERS:
        parsed = parsed.set(drivername=_SQLITE_ASYNC)
    elif name in _POSTGRES_DRIVERS:
        parsed = parsed.set(drivername=_POSTGRES_ASYNC)
    elif name not in (_SQLITE_ASYNC, _POSTGRES_ASYNC):
        raise InvalidArgument.for_field(
            "database_url", f"unsupported driver {name!r}; use sqlite:/// or postgresql://"
        )
    if parsed.drivername == _POSTGRES_ASYNC and "sslmode" in parsed.query:
        sslmode = parsed.query["sslmode"]
        parsed = parsed.difference_update_query(["sslmode"]).update_query_dict({"ssl": sslmode})
    return parsed.render_as_string(hide_password=False)


def _is_memory_sqlite(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or bool(url.query.get("mode") == "memory")


class Database:
    """One database: an async engine plus a session factory; `dispose()` when done.

    SQLite connections get WAL, foreign keys and a busy timeout; with `sqlite_immediate`
    (the default) every transaction starts with BEGIN IMMEDIATE, which takes the write lock
    up front so concurrent writers queue on the busy timeout instead of failing with
    "database is locked" when a read transaction tries to upgrade.
    """

    def __init__(
        self,
        url: str | URL,
        *,
        echo: bool = False,
        pool_size: int = 5,
        max_overflow: int = 10,
        sqlite_busy_timeout: float = 30.0,
        sqlite_immediate: bool = True,
    ) -> None:
        self.url = _parse(normalize_database_url(url))
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo}
        if self.dialect == "sqlite":
            if _is_memory_sqlite(self.url):
                # Each new connection to :memory: is a new empty database; share one.
                kwargs["poolclass"] = StaticPool
            elif self.url.database:
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            # No pool_pre_ping: it costs a round trip per checkout (~0.8 ms, half of a
            # small transaction); connections that died are invalidated on first use and
            # recycled after 30 minutes instead.
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(
                self.engine, busy_timeout=sqlite_busy_timeout, immediate=sqlite_immediate
            )
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed if the block succeeds, else rolled back."""
        async with self.sessionmaker.begin() as session:
            yield session

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection in one transaction (commit on success, rollback on error)."""
        async with self.engine.begin() as connection:
            yield connection

    async def ping(self) -> None:
        """`SELECT 1`; `Unavailable` when the database cannot be reached (health checks)."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except (OperationalError, DBAPIError, OSError) as exc:
            raise Unavailable(f"database unreachable: {exc}") from exc

    async def create_all(self, metadata: MetaData) -> None:
        """Creates missing tables directly (tests; services use migrations)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)

    async def drop_all(self, metadata: MetaData) -> None:
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)

    async def dispose(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout: float, immediate: bool) -> None:
    begin_sql = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN is switched off so SQLAlchemy's "begin" event below
        # decides how transactions start (and SAVEPOINT / transactional DDL work).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # NORMAL is durable across application crashes in WAL mode; only an OS crash can
            # lose the last transactions, a fair price for not syncing every commit.
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin_sql)
