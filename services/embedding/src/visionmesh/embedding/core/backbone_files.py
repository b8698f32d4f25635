"""Checkpoints behind `mv-<model_version_id>` embedders, as the gateway resolved them.

Only the gateway knows the model registry. When a call or a job spec names a backbone, the
gateway resolves it within the caller's tenant and hands the checkpoint's reference over
(`ResolvedBackbone`); it is kept in SQL, so other replicas, a restart and the job workers
load the same file later. Files are downloaded once per replica and checked by sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

from sqlalchemy import select
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition, NotFound
from visionmesh.common.storage import ObjectStore
from visionmesh.embedding.core.provider import BackboneCheckpoint
from visionmesh.embedding.db.models import BackboneRow, utcnow


class BackboneFiles:
    """`ResolveBackbone` for the EmbedderProvider, over the references the gateway gave."""

    def __init__(self, *, db: Database, objects: ObjectStore, cache_dir: Path) -> None:
        self._db = db
        self._objects = objects
        self._cache = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    async def remember(self, tenant_id: str, backbone: embedding_pb2.ResolvedBackbone) -> None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(BackboneRow).where(
                    BackboneRow.tenant_id == tenant_id,
                    BackboneRow.model_version_id == backbone.model_version_id,
                )
            )
            if row is None:
                row = BackboneRow(
                    id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    model_version_id=backbone.model_version_id,
                )
                session.add(row)
            row.resolved = backbone.SerializeToString()
            row.update_time = utcnow()

    async def known(self, tenant_id: str) -> list[str]:
        async with self._db.session() as session:
            rows = await session.scalars(
                select(BackboneRow.model_version_id)
                .where(BackboneRow.tenant_id == tenant_id)
                .order_by(BackboneRow.model_version_id)
            )
            return list(rows)

    async def __call__(self, tenant_id: str, model_version_id: str) -> BackboneCheckpoint:
        async with self._db.session() as session:
            row = await session.scalar(
                select(BackboneRow).where(
                    BackboneRow.tenant_id == tenant_id,
                    BackboneRow.model_version_id == model_version_id,
                )
            )
        if row is None:
            raise NotFound(
                f"model version {model_version_id!r} has not been resolved for this tenant; "
                "name it through the gateway (which checks the registry) first",
                resource_type="model_version",
                resource_id=model_version_id,
            )
        backbone = embedding_pb2.ResolvedBackbone()
        backbone.ParseFromString(row.resolved)
        path = await self._download(backbone.checkpoint.key, backbone.checkpoint.sha256)
        return BackboneCheckpoint(path=path, framework=backbone.framework, imgsz=backbone.imgsz)

    async def _download(self, key: str, sha256: str) -> Path:
        name = sha256 or hashlib.sha256(key.encode()).hexdigest()
        path = self._cache / f"{name}.pt"
        async with self._locks.setdefault(name, asyncio.Lock()):
            if path.exists():
                return path
            self._cache.mkdir(parents=True, exist_ok=True)
            staging = path.with_suffix(f".{uuid.uuid4().hex[:8]}.part")
            try:
                await self._objects.download_file(key, staging)
                digest = await asyncio.to_thread(_sha256, staging)
                if sha256 and digest != sha256:
                    raise FailedPrecondition(
                        f"checkpoint {key!r} does not match its registry record",
                        reason="CHECKPOINT_CORRUPT",
                    )
                staging.rename(path)
            finally:
                staging.unlink(missing_ok=True)
        return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
