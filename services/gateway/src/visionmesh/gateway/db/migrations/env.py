"""Alembic environment of the gateway's tables."""

from visionmesh.common.db import alembic_env
from visionmesh.gateway.db.models import Base

alembic_env.run(Base.metadata)
