"""The collections table: each tenant's logical collections and the model bound to them."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from visionmesh.common.db import Database
from visionmesh.common.errors import AlreadyExists
from visionmesh.embedding.db.models import CollectionRow, utcnow

__all__ = ["CollectionStore"]


class CollectionStore:
    """Collections by (tenant, name); a name is unique within its tenant."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, *, tenant_id: str, name: str, model: str, dim: int, distance: str, space: str
    ) -> CollectionRow:
        """The new row; AlreadyExists when the tenant has a collection of that name."""
        row = CollectionRow(
            id=str(uuid.uuid4()),
            tenant_id=tenant_id,
            name=name,
            model=model,
            dim=dim,
            distance=distance,
            space=space,
            create_time=utcnow(),
        )
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            # The unique (tenant_id, name) constraint decides, so two racing creates of one
            # name cannot both succeed.
            raise AlreadyExists(resource_type="collection", resource_id=name) from None
        return row

    async def get(self, tenant_id: str, name: str) -> CollectionRow | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(CollectionRow).where(
                    CollectionRow.tenant_id == tenant_id, CollectionRow.name == name
                )
            )

    async def page(self, tenant_id: str, *, after: str = "", limit: int) -> list[CollectionRow]:
        """The tenant's collections by name, those after `after`, at most `limit`."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(CollectionRow)
                .where(CollectionRow.tenant_id == tenant_id, CollectionRow.name > after)
                .order_by(CollectionRow.name)
                .limit(limit)
            )
            return list(rows)

    async def delete(self, tenant_id: str, name: str) -> CollectionRow | None:
        """Remove the row; the one removed, or None when there was none."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(CollectionRow).where(
                    CollectionRow.tenant_id == tenant_id, CollectionRow.name == name
                )
            )
            if row is not None:
                await session.execute(delete(CollectionRow).where(CollectionRow.id == row.id))
            return row
