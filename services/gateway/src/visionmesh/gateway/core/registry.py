"""The model registry: models and their versions (registered from job events)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from visionmesh.api.gateway.v1 import models_pb2
from visionmesh.common.auth import require_principal
from visionmesh.common.db import Database
from visionmesh.common.errors import NotFound
from visionmesh.gateway.core import convert
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db


class RegistryCore:
    """Read side of the registry for the caller's tenant."""

    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def list_models(self, *, size: int, token: str) -> tuple[list[models_pb2.Model], str]:
        principal = require_principal()
        size = page_size(size)
        query = newest_first(
            select(db.Model).where(db.Model.tenant_id == principal.tenant_id),
            db.Model,
            token=token,
            size=size,
        )
        async with self._db.session() as session:
            rows = list((await session.scalars(query)).all())
        page, next_token = split_page(rows, size)
        return [convert.model(row) for row in page], next_token

    async def get_model(self, model_id: str) -> models_pb2.Model:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.Model, model_id)
            if row is None or row.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="Model", resource_id=model_id)
            versions = (
                await session.scalars(
                    select(db.ModelVersion)
                    .where(db.ModelVersion.model_id == model_id)
                    .order_by(db.ModelVersion.version.desc())
                )
            ).all()
            return convert.model(row, [await _version(session, v) for v in versions])

    async def get_version(self, version_id: str) -> models_pb2.ModelVersion:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.ModelVersion, version_id)
            if row is None or row.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="ModelVersion", resource_id=version_id)
            return await _version(session, row)


async def _version(session: AsyncSession, row: db.ModelVersion) -> models_pb2.ModelVersion:
    checkpoint = await session.get(db.Artifact, row.checkpoint_artifact_id)
    return convert.model_version(row, checkpoint)
