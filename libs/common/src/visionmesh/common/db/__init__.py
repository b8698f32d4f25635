"""SQL for services that own tables: async engine + sessions, URL normalisation, Alembic."""

from __future__ import annotations

from visionmesh.common.db._database import Database, normalize_database_url
from visionmesh.common.db._migrations import run_migrations
from visionmesh.common.db._types import UtcDateTime

__all__ = ["Database", "UtcDateTime", "normalize_database_url", "run_migrations"]
