"""The embedding service's own table: each tenant's collections and the model bound to them."""

MIGRATIONS = "visionmesh.embedding.db:migrations"
"""Alembic script location of the embedding service's tables (`run_migrations`)."""
