"""Alembic environment of the inference service's tables."""

from visionmesh.common.db import alembic_env
from visionmesh.inference.db.models import Base

# Its own version table: the inference service may share a database with the gateway.
alembic_env.run(Base.metadata, version_table="inference_alembic_version")
