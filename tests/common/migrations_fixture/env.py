"""Alembic env of the throwaway migrations that test_db.py runs."""

from __future__ import annotations

from visionmesh.common.db import alembic_env

alembic_env.run(None)
