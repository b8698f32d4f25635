"""SQLAlchemy tables of the inference service."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Boolean, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from visionmesh.common.db import UtcDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the inference service's tables."""

    type_annotation_map = {datetime: UtcDateTime()}


class DeploymentRow(Base):
    """A deployment every replica should serve: the desired state, not what is loaded.

    `generation` grows on every change of what it serves, so replicas notice a redeploy
    and KServe reports it as the model's version.
    """

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36), index=True)
    name: Mapped[str] = mapped_column(String(63))
    generation: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[str] = mapped_column(String(128))
    export_job_id: Mapped[str] = mapped_column(String(128))
    export: Mapped[bytes] = mapped_column(LargeBinary)
    """The serialized visionmesh.export.v1.ExportResult it serves."""
    backend: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(32))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    """False after a KServe repository unload: kept (and listed), not served."""
    created_by: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)
