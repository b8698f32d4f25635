"""Datasets: presigned upload, finalize (validate + manifest), snapshots."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from visionmesh.api.gateway.v1 import datasets_pb2
from visionmesh.common.auth import require_principal
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.common.logging import get_logger
from visionmesh.common.storage import ObjectStore
from visionmesh.gateway.core import convert
from visionmesh.gateway.core.archive import ArchiveReport, inspect_archive, manifest_json
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)

UPLOADING = datasets_pb2.DATASET_STATE_UPLOADING
READY = datasets_pb2.DATASET_STATE_READY
FAILED = datasets_pb2.DATASET_STATE_FAILED
_FORMATS = {
    "detect": datasets_pb2.DATASET_FORMAT_YOLO_DETECT,
    "classify": datasets_pb2.DATASET_FORMAT_CLASSIFY_FOLDERS,
}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        row = await self._row(dataset_id)
        if row.state == READY:
            raise FailedPrecondition(f"dataset {dataset_id} is already READY")
        upload_key = f"datasets/{dataset_id}/upload.zip"
        if not await self._store.exists(upload_key):
            raise FailedPrecondition(
                f"nothing was uploaded for dataset {dataset_id}: "
                "PUT the zip to its upload URL first"
            )
        with tempfile.TemporaryDirectory(dir=self._work_dir) as tmp:
            archive = Path(tmp) / "archive.zip"
            await self._store.download_file(upload_key, archive)
            try:
                report = await asyncio.to_thread(
                    inspect_archive, archive, max_bytes=self._max_bytes
                )
            except InvalidArgument as error:
                await self._mark_failed(dataset_id, _failure_reason(error))
                raise
            # Content-addressed keys: a later PUT to the upload URL can never change what
            # this dataset (and every snapshot of it) points at.
            archive_sha = await asyncio.to_thread(_sha256_file, archive)
            archive_key = f"datasets/{dataset_id}/archive-{archive_sha[:16]}.zip"
            await self._store.put_file(archive_key, archive, content_type="application/zip")
        manifest = manifest_json(report)
        manifest_sha = hashlib.sha256(manifest).hexdigest()
        manifest_key = f"datasets/{dataset_id}/manifest-{manifest_sha[:16]}.json"
        await self._store.put_bytes(manifest_key, manifest, content_type="application/json")
        await self._store.delete(upload_key)
        async with self._db.session() as session:
            stored = await session.get(db.Dataset, dataset_id)
            assert stored is not None
            self._apply_report(stored, report)
            stored.state = READY
            stored.failure_reason = ""
            stored.archive_key = archive_key
            stored.manifest_key = manifest_key
            stored.manifest_sha256 = manifest_sha
            await session.flush()
            return convert.dataset(stored)

    @staticmethod
    def _apply_report(row: db.Dataset, report: ArchiveReport) -> None:
        row.format = _FORMATS[report.format]
        row.class_names = list(report.class_names)
        row.splits = [
            {
                "name": split.name,
                "image_count": split.image_count,
                "instances_per_class": dict(split.instances_per_class),
            }
            for split in report.splits
        ]
        row.image_count = report.image_count
        row.size_bytes = report.size_bytes

    async def _mark_failed(self, dataset_id: str, reason: str) -> None:
        async with self._db.session() as session:
            stored = await session.get(db.Dataset, dataset_id)
            if stored is not None:
                stored.state = FAILED
                stored.failure_reason = reason[:4000]
        _log.info("dataset failed validation", dataset_id=dataset_id, reason=reason)

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
