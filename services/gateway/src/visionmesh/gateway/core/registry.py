"""The model registry: models, their versions (registered from job events) and their exports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from visionmesh.api.common.v1 import artifact_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.gateway.v1 import models_pb2
from visionmesh.common.auth import require_principal
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.common.specs.embedding import BACKBONE_MODEL_PREFIX, backbone_model_version_id
from visionmesh.common.storage import ObjectStore
from visionmesh.gateway.core import convert
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db

EXPORT_FILES: Mapping[str, str] = {
    "package": "triton_repository_zip",
    "onnx": "onnx",
    "metadata": "metadata_file",
    "tensorrt": "tensorrt",
    "parity_report": "parity_report_file",
}
"""GetExportDownloadUrlRequest.file -> the ExportResult field naming that file."""
DEFAULT_EXPORT_FILE = "package"


@dataclass(frozen=True, slots=True)
class ResolvedExport:
    """A successful export of the caller's tenant, as a deployment or batch job serves it."""

    job_id: str
    model_version_id: str
    result: export_pb2.ExportResult


def _not_found(field: str, resource_type: str, resource_id: str, why: str) -> NotFound:
    return NotFound(
        f"{field}: {why}",
        resource_type=resource_type,
        resource_id=resource_id,
        metadata={"field": field},
    )


async def resolve_export(
    database: Database,
    tenant_id: str,
    *,
    model_version_id: str = "",
    export_job_id: str = "",
    field_prefix: str = "",
) -> ResolvedExport:
    """The newest successful export of a model version, or an export job's result, within
    `tenant_id`. NOT_FOUND names the field (`model_version_id`, `export_job_id`, with
    `field_prefix`): also for another tenant's, so their existence does not leak."""
    if bool(model_version_id) == bool(export_job_id):
        raise ValueError("give exactly one of model_version_id and export_job_id")
    async with database.session() as session:
        if model_version_id:
            field = f"{field_prefix}model_version_id"
            version = await session.get(db.ModelVersion, model_version_id)
            if version is None or version.tenant_id != tenant_id:
                raise _not_found(
                    field,
                    "ModelVersion",
                    model_version_id,
                    f"model version {model_version_id!r} not found",
                )
            row = await session.scalar(
                select(db.Export)
                .where(
                    db.Export.model_version_id == model_version_id, db.Export.tenant_id == tenant_id
                )
                .order_by(db.Export.created_at.desc(), db.Export.id.desc())
                .limit(1)
            )
            if row is None:
                raise _not_found(
                    field,
                    "Export",
                    model_version_id,
                    f"model version {model_version_id!r} has no successful export; "
                    "export it first (visionmesh export)",
                )
        else:
            field = f"{field_prefix}export_job_id"
            row = await session.scalar(
                select(db.Export).where(
                    db.Export.job_id == export_job_id, db.Export.tenant_id == tenant_id
                )
            )
            if row is None:
                raise _not_found(
                    field,
                    "Export",
                    export_job_id,
                    f"no successful export job {export_job_id!r}",
                )
        return ResolvedExport(
            job_id=row.job_id,
            model_version_id=row.model_version_id,
            result=export_pb2.ExportResult.FromString(row.result),
        )


async def resolve_backbone(
    database: Database, tenant_id: str, model: str, *, field: str
) -> embedding_pb2.ResolvedBackbone | None:
    """The classification model version an `mv-<id>` embedding model names, within
    `tenant_id`: its checkpoint, framework and imgsz. None for any other model (DINOv2...,
    which the embedding service knows itself). NOT_FOUND names `field`, also for another
    tenant's version; a version that is not a classifier is FAILED_PRECONDITION."""
    version_id = backbone_model_version_id(model)
    if not version_id:
        if model.startswith(BACKBONE_MODEL_PREFIX):
            raise InvalidArgument.for_field(field, f"{model!r} names no model version")
        return None
    async with database.session() as session:
        version = await session.get(db.ModelVersion, version_id)
        if version is None or version.tenant_id != tenant_id:
            raise _not_found(
                field, "ModelVersion", version_id, f"model version {version_id!r} not found"
            )
        if version.task != "classify":
            raise FailedPrecondition.for_field(
                field,
                f"model version {version_id!r} is a {version.task} model; only "
                "classification models are embedding backbones",
            )
        checkpoint = await session.get(db.Artifact, version.checkpoint_artifact_id)
        if checkpoint is None:
            raise FailedPrecondition.for_field(
                field, f"model version {version_id!r} has no checkpoint"
            )
        return embedding_pb2.ResolvedBackbone(
            model_version_id=version.id,
            checkpoint=convert.artifact(checkpoint),
            framework=version.framework,
            imgsz=version.imgsz,
        )


class RegistryCore:
    """Read side of the registry for the caller's tenant."""

    def __init__(
        self,
        *,
        db: Database,
        store: ObjectStore,
        presign_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._store = store
        self._presign_ttl = presign_ttl

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
            return convert.model(row, await _versions(session, versions))

    async def get_version(self, version_id: str) -> models_pb2.ModelVersion:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.ModelVersion, version_id)
            if row is None or row.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="ModelVersion", resource_id=version_id)
            (version,) = await _versions(session, [row])
            return version

    async def resolve_export(
        self, *, model_version_id: str = "", export_job_id: str = "", field_prefix: str = ""
    ) -> ResolvedExport:
        """`resolve_export` in the caller's tenant."""
        return await resolve_export(
            self._db,
            require_principal().tenant_id,
            model_version_id=model_version_id,
            export_job_id=export_job_id,
            field_prefix=field_prefix,
        )

    async def resolve_backbone(
        self, model: str, *, field: str
    ) -> embedding_pb2.ResolvedBackbone | None:
        """`resolve_backbone` in the caller's tenant."""
        return await resolve_backbone(self._db, require_principal().tenant_id, model, field=field)

    async def _export_row(self, session: AsyncSession, export_id: str) -> db.Export:
        principal = require_principal()
        row = await session.get(db.Export, export_id)
        if row is None or row.tenant_id != principal.tenant_id:
            raise NotFound(resource_type="Export", resource_id=export_id)
        return row

    async def get_export(self, export_id: str) -> models_pb2.Export:
        async with self._db.session() as session:
            return convert.export(await self._export_row(session, export_id))

    async def export_download_url(
        self, export_id: str, file: str = ""
    ) -> tuple[str, int, artifact_pb2.ArtifactRef]:
        """A presigned URL of one file of the export (`file` as in EXPORT_FILES; default
        the package), its lifetime in seconds and the file's artifact."""
        file = file or DEFAULT_EXPORT_FILE
        if file not in EXPORT_FILES:
            raise InvalidArgument.for_field("file", f"one of {', '.join(EXPORT_FILES)}")
        async with self._db.session() as session:
            row = await self._export_row(session, export_id)
            result = convert.export(row).result
            ref: artifact_pb2.ArtifactRef = getattr(result, EXPORT_FILES[file])
            if not ref.key:
                raise NotFound(
                    f"export {export_id} has no {file} file",
                    resource_type="ExportFile",
                    resource_id=f"{export_id}/{file}",
                )
            artifact = await session.scalar(
                select(db.Artifact).where(
                    db.Artifact.job_id == row.job_id, db.Artifact.key == ref.key
                )
            )
            if artifact is not None:
                ref = convert.artifact(artifact)
        url = await self._store.presigned_get(ref.key, expires=self._presign_ttl)
        return url, int(self._presign_ttl.total_seconds()), ref


async def _versions(
    session: AsyncSession, rows: Sequence[db.ModelVersion]
) -> list[models_pb2.ModelVersion]:
    """The versions as messages with their checkpoints and exports (newest first)."""
    exports: dict[str, list[models_pb2.Export]] = defaultdict(list)
    if rows:
        export_rows = await session.scalars(
            select(db.Export)
            .where(db.Export.model_version_id.in_([row.id for row in rows]))
            .order_by(db.Export.created_at.desc(), db.Export.id.desc())
        )
        for export in export_rows:
            exports[export.model_version_id].append(convert.export(export))
    versions = []
    for row in rows:
        checkpoint = await session.get(db.Artifact, row.checkpoint_artifact_id)
        versions.append(convert.model_version(row, checkpoint, exports[row.id]))
    return versions
