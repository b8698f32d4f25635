"""Alembic environment of the embedding service's tables."""

from visionmesh.common.db import alembic_env
from visionmesh.embedding.db.models import Base

# Its own version table: the embedding service may share a database with other services.
alembic_env.run(Base.metadata, version_table="embedding_alembic_version")
