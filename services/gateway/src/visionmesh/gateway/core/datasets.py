"""Datasets: presigned upload, finalize (validate + manifest), snapshots."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, select, update
from visionmesh.api.gateway.v1 import datasets_pb2
from visionmesh.common.auth import require_principal
from visionmesh.common.datasets import download_capped
from visionmesh.common.db import Database
from visionmesh.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    VisionMeshError,
)
from visionmesh.common.logging import get_logger
from visionmesh.common.storage import ObjectStore
from visionmesh.gateway.core import convert
from visionmesh.gateway.core.archive import (
    ARCHIVE_FIELD,
    ArchiveReport,
    Reason,
    inspect_archive,
    manifest_json,
)
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)

UPLOADING = datasets_pb2.DATASET_STATE_UPLOADING
READY = datasets_pb2.DATASET_STATE_READY
FAILED = datasets_pb2.DATASET_STATE_FAILED
_FORMATS = {
    "detect": datasets_pb2.DATASET_FORMAT_YOLO_DETECT,
    "classify": datasets_pb2.DATASET_FORMAT_CLASSIFY_FOLDERS,
    "catalog": datasets_pb2.DATASET_FORMAT_CATALOG,
}


# A dataset may be finalized from UPLOADING, or again after a FAILED validation; never
# once READY.
_FINALIZABLE = (UPLOADING, FAILED)


def _too_large(size: int | None, limit: int) -> InvalidArgument:
    described = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    message = f"archive is {described}, over the limit of {limit} bytes"
    return InvalidArgument(
        f"invalid dataset archive: {message}",
        field_violations=[
            FieldViolation(
                field=ARCHIVE_FIELD, description=message, reason=Reason.ARCHIVE_TOO_LARGE
            )
        ],
    )


def _already_ready(dataset_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"dataset {dataset_id} is already READY")


def _failure_reason(error: InvalidArgument) -> str:
    if error.field_violations:
        first = error.field_violations[0]
        return f"{first.field}: {first.description}"
    return error.message


_PINNED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class PinnedSnapshot:
    """What a job needs of its snapshot, detached from any session."""

    id: str
    dataset_id: str
    dataset_name: str
    manifest_key: str
    manifest_sha256: str
    archive_key: str
    format: int
    class_names: tuple[str, ...]

    @classmethod
    def of(cls, row: db.Snapshot, dataset_name: str) -> PinnedSnapshot:
        return cls(
            id=row.id,
            dataset_id=row.dataset_id,
            dataset_name=dataset_name,
            manifest_key=row.manifest_key,
            manifest_sha256=row.manifest_sha256,
            archive_key=row.archive_key,
            format=row.format,
            class_names=tuple(row.class_names or ()),
        )


def _require_ready(row: db.Dataset) -> None:
    if row.state != READY:
        state = datasets_pb2.DatasetState.Name(row.state)  # type: ignore[arg-type]
        raise FailedPrecondition(
            f"dataset {row.id} is not READY (state {state.removeprefix('DATASET_STATE_')})"
        )


class DatasetsCore:
    """Datasets of the caller's tenant."""

    def __init__(
        self,
        *,
        db: Database,
        store: ObjectStore,
        max_bytes: int,
        presign_ttl: timedelta = timedelta(hours=1),
        work_dir: Path | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._max_bytes = max_bytes
        self._presign_ttl = presign_ttl
        self._work_dir = work_dir
        self._pinned: dict[tuple[str, str, str], PinnedSnapshot] = {}

    async def _row(self, dataset_id: str) -> db.Dataset:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.Dataset, dataset_id)
        if row is None or row.tenant_id != principal.tenant_id:
            raise NotFound(resource_type="Dataset", resource_id=dataset_id)
        return row

    async def create(self, *, name: str, description: str) -> tuple[datasets_pb2.Dataset, str, int]:
        principal = require_principal()
        dataset_id = db.new_id()
        row = db.Dataset(
            id=dataset_id,
            tenant_id=principal.tenant_id,
            name=name,
            description=description,
            state=UPLOADING,
            archive_key=f"datasets/{dataset_id}/upload.zip",
        )
        async with self._db.session() as session:
            session.add(row)
            await session.flush()
            message = convert.dataset(row)
        url = await self._store.presigned_put(row.archive_key, expires=self._presign_ttl)
        return message, url, int(self._presign_ttl.total_seconds())

    async def get(self, dataset_id: str) -> datasets_pb2.Dataset:
        return convert.dataset(await self._row(dataset_id))

    async def list_datasets(
        self, *, size: int, token: str
    ) -> tuple[list[datasets_pb2.Dataset], str]:
        principal = require_principal()
        size = page_size(size)
        query = newest_first(
            select(db.Dataset).where(db.Dataset.tenant_id == principal.tenant_id),
            db.Dataset,
            token=token,
            size=size,
        )
        async with self._db.session() as session:
            rows = list((await session.scalars(query)).all())
        page, next_token = split_page(rows, size)
        return [convert.dataset(row) for row in page], next_token

    async def finalize(self, dataset_id: str) -> datasets_pb2.Dataset:
        """Validates the uploaded zip and makes the dataset READY, exactly once.

        The upload's size is checked (stat) before a byte is downloaded, and the download
        itself stops at the limit, since the object can be replaced in between. Concurrent
        finalizes may all validate, but the READY transition is one conditional UPDATE:
        one wins, the others get FAILED_PRECONDITION, and a READY row never changes again.
        """
        row = await self._row(dataset_id)
        if row.state == READY:
            raise _already_ready(dataset_id)
        upload_key = f"datasets/{dataset_id}/upload.zip"
        try:
            uploaded = await self._store.stat(upload_key)
        except NotFound:
            raise await self._nothing_uploaded(dataset_id) from None
        if uploaded.size > self._max_bytes:
            raise await self._fail(dataset_id, _too_large(uploaded.size, self._max_bytes))
        with tempfile.TemporaryDirectory(dir=self._work_dir) as tmp:
            archive = Path(tmp) / "archive.zip"
            try:
                fetched = await download_capped(
                    self._store, upload_key, archive, limit=self._max_bytes
                )
            except NotFound:
                raise await self._nothing_uploaded(dataset_id) from None
            if fetched.over_limit:
                raise await self._fail(dataset_id, _too_large(None, self._max_bytes))
            try:
                report = await asyncio.to_thread(
                    inspect_archive, archive, max_bytes=self._max_bytes
                )
            except InvalidArgument as error:
                raise await self._fail(dataset_id, error) from None
            # Content-addressed keys: a later PUT to the upload URL can never change what
            # this dataset (and every snapshot of it) points at.
            archive_key = f"datasets/{dataset_id}/archive-{report.manifest.archive_sha256[:16]}.zip"
            await self._store.put_file(archive_key, archive, content_type="application/zip")
        manifest_sha = report.manifest_sha256
        manifest_key = f"datasets/{dataset_id}/manifest-{manifest_sha[:16]}.json"
        await self._store.put_bytes(
            manifest_key, manifest_json(report), content_type="application/json"
        )
        async with self._db.session() as session:
            result = await session.execute(
                update(db.Dataset)
                .where(db.Dataset.id == dataset_id, db.Dataset.state.in_(_FINALIZABLE))
                .values(
                    state=READY,
                    failure_reason="",
                    archive_key=archive_key,
                    manifest_key=manifest_key,
                    manifest_sha256=manifest_sha,
                    **self._report_values(report),
                )
                .execution_options(synchronize_session=False)
            )
            won = isinstance(result, CursorResult) and result.rowcount == 1
            stored = await session.get(db.Dataset, dataset_id, populate_existing=True)
            assert stored is not None
            message = convert.dataset(stored)
        if not won:
            # Another finalize made it READY first. Its objects stay; ours go unless they
            # are the very same content-addressed keys, and so does the upload, which a
            # READY dataset never reads again.
            stale = {archive_key, manifest_key} - {stored.archive_key, stored.manifest_key}
            for key in sorted(stale | {upload_key}):
                await self._store.delete(key)
            raise _already_ready(dataset_id)
        await self._store.delete(upload_key)
        return message

    async def _nothing_uploaded(self, dataset_id: str) -> FailedPrecondition:
        # The upload is deleted when a finalize wins, so a late concurrent one lands here.
        if (await self._row(dataset_id)).state == READY:
            return _already_ready(dataset_id)
        return FailedPrecondition(
            f"nothing was uploaded for dataset {dataset_id}: PUT the zip to its upload URL first"
        )

    async def _fail(self, dataset_id: str, error: InvalidArgument) -> VisionMeshError:
        """Records a failed validation (never over READY) and returns the error to raise."""
        reason = _failure_reason(error)
        async with self._db.session() as session:
            result = await session.execute(
                update(db.Dataset)
                .where(db.Dataset.id == dataset_id, db.Dataset.state.in_(_FINALIZABLE))
                .values(state=FAILED, failure_reason=reason[:4000])
                .execution_options(synchronize_session=False)
            )
        if not (isinstance(result, CursorResult) and result.rowcount == 1):
            # A concurrent finalize made it READY meanwhile; what this one read is moot.
            return _already_ready(dataset_id)
        _log.info("dataset failed validation", dataset_id=dataset_id, reason=reason)
        return error

    @staticmethod
    def _report_values(report: ArchiveReport) -> dict[str, Any]:
        return {
            "format": _FORMATS[report.format],
            "class_names": list(report.class_names),
            "splits": [
                {
                    "name": split.name,
                    "image_count": split.image_count,
                    "instances_per_class": dict(split.instances_per_class),
                }
                for split in report.splits
            ],
            "image_count": report.image_count,
            "size_bytes": report.size_bytes,
            "product_count": report.product_count,
            "products_without_images": report.products_without_images,
        }

    # -- snapshots --------------------------------------------------------------------

    async def create_snapshot(self, dataset_id: str, *, description: str) -> datasets_pb2.Snapshot:
        row = await self._ready(dataset_id)
        async with self._db.session() as session:
            snapshot = self._new_snapshot(row, description)
            session.add(snapshot)
            await session.flush()
            return convert.snapshot(snapshot)

    async def _ready(self, dataset_id: str) -> db.Dataset:
        row = await self._row(dataset_id)
        _require_ready(row)
        return row

    @staticmethod
    def _new_snapshot(row: db.Dataset, description: str) -> db.Snapshot:
        return db.Snapshot(
            id=db.new_id(),
            tenant_id=row.tenant_id,
            dataset_id=row.id,
            description=description,
            manifest_key=row.manifest_key,
            manifest_sha256=row.manifest_sha256,
            archive_key=row.archive_key,
            format=row.format,
            class_names=list(row.class_names or []),
            image_count=row.image_count,
            product_count=row.product_count,
        )

    async def snapshot_for_job(
        self, *, dataset_id: str = "", snapshot_id: str = ""
    ) -> PinnedSnapshot:
        """The snapshot a job trains on (and its dataset's name).

        Given a dataset, that is the newest snapshot of its current manifest, made when
        there is none, so repeated jobs on unchanged data share one. Answers are cached:
        READY datasets and snapshots never change (re-finalizing is refused and their
        files live under content-addressed keys), and the key includes the tenant.
        """
        principal = require_principal()
        key = (principal.tenant_id, dataset_id, snapshot_id)
        pinned = self._pinned.get(key)
        if pinned is None:
            pinned = await self._pin(principal.tenant_id, dataset_id, snapshot_id)
            if len(self._pinned) >= _PINNED_CACHE_SIZE:
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[key] = pinned
        return pinned

    async def _pin(self, tenant_id: str, dataset_id: str, snapshot_id: str) -> PinnedSnapshot:
        async with self._db.session() as session:
            if snapshot_id:
                snapshot = await session.get(db.Snapshot, snapshot_id)
                if snapshot is None or snapshot.tenant_id != tenant_id:
                    raise NotFound(resource_type="Snapshot", resource_id=snapshot_id)
                dataset = await session.get(db.Dataset, snapshot.dataset_id)
                return PinnedSnapshot.of(snapshot, dataset.name if dataset is not None else "")
            dataset = await session.get(db.Dataset, dataset_id)
            if dataset is None or dataset.tenant_id != tenant_id:
                raise NotFound(resource_type="Dataset", resource_id=dataset_id)
            _require_ready(dataset)
            existing = await session.scalar(
                select(db.Snapshot)
                .where(
                    db.Snapshot.dataset_id == dataset.id,
                    db.Snapshot.manifest_sha256 == dataset.manifest_sha256,
                )
                .order_by(db.Snapshot.created_at.desc())
                .limit(1)
            )
            if existing is not None:
                return PinnedSnapshot.of(existing, dataset.name)
            snapshot = self._new_snapshot(dataset, "made automatically for a training job")
            session.add(snapshot)
            await session.flush()
            return PinnedSnapshot.of(snapshot, dataset.name)

    async def get_snapshot(self, snapshot_id: str) -> datasets_pb2.Snapshot:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.Snapshot, snapshot_id)
        if row is None or row.tenant_id != principal.tenant_id:
            raise NotFound(resource_type="Snapshot", resource_id=snapshot_id)
        return convert.snapshot(row)

    async def list_snapshots(self, dataset_id: str) -> list[datasets_pb2.Snapshot]:
        await self._row(dataset_id)
        async with self._db.session() as session:
            rows = (
                await session.scalars(
                    select(db.Snapshot)
                    .where(db.Snapshot.dataset_id == dataset_id)
                    .order_by(db.Snapshot.created_at.desc(), db.Snapshot.id.desc())
                )
            ).all()
            return [convert.snapshot(row) for row in rows]
