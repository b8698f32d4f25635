"""SQLAlchemy tables of the embedding service."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from visionmesh.common.db import UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the embedding service's tables."""

    type_annotation_map = {datetime: UtcDateTime()}


class CollectionRow(Base):
    """A tenant's logical collection, bound to one embedder and dimension at creation.

    Its points live in the vector store's shared `space` (one per model, dimension and
    distance), scoped by tenant and name; this row is what says which model may write there.
    """

    __tablename__ = "collections"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(63))
    model: Mapped[str] = mapped_column(String(128))
    """The embedder that fills it; empty for a vector-only collection."""
    dim: Mapped[int] = mapped_column(Integer)
    distance: Mapped[str] = mapped_column(String(16))
    space: Mapped[str] = mapped_column(String(160))
    """The vector store's physical collection holding its points."""
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class BackboneRow(Base):
    """A registered model version's checkpoint as the gateway resolved it for a tenant
    (`mv-<id>` embedders): kept so a replica, a restart or a job can load it again."""

    __tablename__ = "backbones"
    __table_args__ = (UniqueConstraint("tenant_id", "model_version_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    model_version_id: Mapped[str] = mapped_column(String(128))
    resolved: Mapped[bytes] = mapped_column(LargeBinary)
    """The serialized visionmesh.embedding.v1.ResolvedBackbone."""
    update_time: Mapped[datetime] = mapped_column(default=utcnow)
