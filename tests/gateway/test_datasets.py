"""Finalize against real S3 and SQL (SQLite and PostgreSQL), and the worker's view of it.

The gateway writes the manifest; the worker's `DatasetCache` materialises the snapshot and
builds Ultralytics' data dict from that manifest alone. These tests run both halves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import datasets_pb2
from visionmesh.common.auth import Principal, bind_principal
from visionmesh.common.datasets import DatasetCache, MaterialisedDataset
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.common.storage import ObjectInfo, ObjectStore, ObjectStoreConfig
from visionmesh.gateway.app import MIGRATIONS
from visionmesh.gateway.core.archive import ARCHIVE_FIELD, Reason
from visionmesh.gateway.core.datasets import DatasetsCore
from visionmesh.gateway.db import models as db

from tests.gateway.test_archive import Entry, classify_entries, jpeg, png, write_zip

MAX_BYTES = 50 << 20


class GatedStore(ObjectStore):
    """A real ObjectStore with hooks for ordering concurrent finalizes, and a GET log.

    `after_upload_stat` runs after each stat of an upload; the n-th download of an upload
    waits for `download_gates[n]` (when gates are set) and records the task that made it.
    """

    def __init__(self, config: ObjectStoreConfig) -> None:
        super().__init__(config)
        self.gets: list[str] = []
        self.after_upload_stat: Callable[[], Awaitable[object]] | None = None
        self.download_gates: list[asyncio.Event] = []
        self.downloaders: list[asyncio.Task[object] | None] = []
        self.downloading = asyncio.Event()

    async def stat(self, key: str) -> ObjectInfo:
        info = await super().stat(key)
        if key.endswith("/upload.zip") and self.after_upload_stat is not None:
            await self.after_upload_stat()
        return info

    async def _before_get(self, key: str) -> None:
        self.gets.append(key)
        if key.endswith("/upload.zip") and self.download_gates:
            index = len(self.downloaders)
            self.downloaders.append(asyncio.current_task())
            self.downloading.set()
            await self.download_gates[index].wait()

    async def get_bytes(self, key: str) -> bytes:
        await self._before_get(key)
        return await super().get_bytes(key)

    async def download_file(self, key: str, path: str | Path) -> None:
        await self._before_get(key)
        await super().download_file(key, path)

    async def iter_chunks(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        await self._before_get(key)
        inner_chunks = cast(
            AsyncGenerator[bytes, None], super().iter_chunks(key, chunk_size=chunk_size)
        )
        async with contextlib.aclosing(inner_chunks) as inner:
            async for chunk in inner:
                yield chunk


@dataclass
class Env:
    database: Database
    store: GatedStore
    principal: Principal
    tmp: Path

    def core(self, *, max_bytes: int = MAX_BYTES) -> DatasetsCore:
        return DatasetsCore(
            db=self.database, store=self.store, max_bytes=max_bytes, work_dir=self.tmp
        )

    async def upload(self, core: DatasetsCore, archive: Path) -> str:
        with bind_principal(self.principal):
            dataset, _, _ = await core.create(name="shapes", description="")
        await self.store.put_file(upload_key(dataset.id), archive)
        return dataset.id

    async def row(self, dataset_id: str) -> db.Dataset:
        async with self.database.session() as session:
            row = await session.get(db.Dataset, dataset_id)
        assert row is not None
        return row


def upload_key(dataset_id: str) -> str:
    return f"datasets/{dataset_id}/upload.zip"


@pytest_asyncio.fixture
async def env(
    database_url: str, object_store_config: ObjectStoreConfig, tmp_path: Path
) -> AsyncIterator[Env]:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    database = Database(database_url)
    store = GatedStore(object_store_config)
    await store.ensure_bucket()
    tenant = db.Tenant(id=db.new_id(), name="tenant")
    async with database.session() as session:
        session.add(tenant)
    principal = Principal(subject="user", tenant_id=tenant.id, role="member", kind="user")
    try:
        yield Env(database=database, store=store, principal=principal, tmp=tmp_path)
    finally:
        await database.dispose()
        with contextlib.suppress(NotFound):
            await store.remove_bucket()
        store.close()


# --- the gateway's manifest is what the worker trains on ------------------------------------

DATA_YML = b"names: [cat, dog]\ntrain: images/train\nval: images/val\n"
ROBOFLOW_YAML = (
    b"train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
    b"nc: 2\nnames: ['cat', 'dog']\n"
)


def data_yml_entries() -> list[Entry]:
    """A detect dataset whose YAML is named data.yml, inside a top folder."""
    return [
        ("shapes/data.yml", DATA_YML),
        ("shapes/images/train/a.jpg", jpeg(1)),
        ("shapes/images/train/b.png", png(2)),
        ("shapes/images/val/c.jpg", jpeg(3)),
        ("shapes/labels/train/a.txt", b"0 0.5 0.5 0.2 0.2\n"),
        ("shapes/labels/train/b.txt", b"1 0.5 0.5 0.2 0.2\n"),
        ("shapes/labels/val/c.txt", b"1 0.5 0.5 0.2 0.2\n"),
    ]


def roboflow_entries() -> list[Entry]:
    """Roboflow's export: split folders at the top, `../train/images` in the YAML."""
    return [
        ("data.yaml", ROBOFLOW_YAML),
        ("README.roboflow.txt", b"exported"),
        ("train/images/a.jpg", jpeg(1)),
        ("train/labels/a.txt", b"0 0.5 0.5 0.2 0.2\n"),
        ("valid/images/b.jpg", jpeg(2)),
        ("valid/labels/b.txt", b"1 0.5 0.5 0.2 0.2\n"),
        ("test/images/c.jpg", jpeg(3)),
        ("test/labels/c.txt", b"1 0.5 0.5 0.2 0.2\n"),
    ]


async def finalize_and_materialise(env: Env, entries: list[Entry]) -> MaterialisedDataset:
    core = env.core()
    dataset_id = await env.upload(core, write_zip(env.tmp / "upload.zip", entries))
    with bind_principal(env.principal):
        dataset = await core.finalize(dataset_id)
        pinned = await core.snapshot_for_job(dataset_id=dataset_id)
    assert dataset.state == datasets_pb2.DATASET_STATE_READY
    # What the gateway hands a training job (see JobsCore), materialised as a worker does.
    ref = events_pb2.SnapshotRef(
        snapshot_id=pinned.id,
        manifest_key=pinned.manifest_key,
        manifest_sha256=pinned.manifest_sha256,
        archive_key=pinned.archive_key,
        class_names=list(pinned.class_names),
    )
    return await DatasetCache(root=env.tmp / "worker-cache", store=env.store).materialise(ref)


def ultralytics_dirs(materialised: MaterialisedDataset) -> dict[str, Path]:
    data = materialised.ultralytics_data()
    assert data["path"] == str(materialised.root)
    return {split: Path(data[split]) for split in ("train", "val", "test") if split in data}


def label_files(images: Path) -> list[Path]:
    """Where Ultralytics looks for each image's label (last /images/ -> /labels/)."""
    found = []
    for image in sorted(p for p in images.rglob("*") if p.is_file()):
        head, _, tail = str(image).rpartition("/images/")
        found.append(Path(f"{head}/labels/{tail}").with_suffix(".txt"))
    return found


async def test_a_data_yml_dataset_reaches_the_worker_with_its_layout(env: Env) -> None:
    materialised = await finalize_and_materialise(env, data_yml_entries())

    assert materialised.manifest.root_prefix == "shapes/"
    # The worker never needs a data.yaml: the manifest carries the resolved layout.
    assert not (materialised.root / "data.yaml").exists()
    assert (materialised.root / "data.yml").is_file()
    dirs = ultralytics_dirs(materialised)
    assert dirs == {
        "train": materialised.root / "images/train",
        "val": materialised.root / "images/val",
    }
    assert all(path.is_dir() for path in dirs.values())
    assert materialised.ultralytics_data()["names"] == {0: "cat", 1: "dog"}
    for images in dirs.values():
        assert all(label.is_file() for label in label_files(images))


async def test_a_roboflow_export_reaches_the_worker_with_its_layout(env: Env) -> None:
    materialised = await finalize_and_materialise(env, roboflow_entries())

    dirs = ultralytics_dirs(materialised)
    assert dirs == {
        "train": materialised.root / "train/images",
        "val": materialised.root / "valid/images",
        "test": materialised.root / "test/images",
    }
    assert all(path.is_dir() for path in dirs.values())
    for images in dirs.values():
        labels = label_files(images)
        assert labels and all(label.is_file() for label in labels)
    assert [s.labels for s in materialised.manifest.splits] == [
        ("train/labels",),
        ("valid/labels",),
        ("test/labels",),
    ]


async def test_a_classification_dataset_reaches_the_worker_as_split_folders(env: Env) -> None:
    materialised = await finalize_and_materialise(env, classify_entries("flowers/"))

    dirs = ultralytics_dirs(materialised)
    assert dirs == {"train": materialised.root / "train", "val": materialised.root / "val"}
    assert sorted(p.name for p in dirs["train"].iterdir()) == ["cat", "dog"]
    assert materialised.manifest.format == "classify"


# --- size limit: stat before download -------------------------------------------------------


async def test_an_over_limit_upload_is_refused_without_downloading_it(env: Env) -> None:
    archive = write_zip(env.tmp / "upload.zip", data_yml_entries())
    size = archive.stat().st_size
    core = env.core(max_bytes=size - 1)
    dataset_id = await env.upload(core, archive)

    with bind_principal(env.principal), pytest.raises(InvalidArgument) as info:
        await core.finalize(dataset_id)

    message = f"archive is {size} bytes, over the limit of {size - 1} bytes"
    assert message in info.value.message
    (violation,) = info.value.field_violations
    assert (violation.field, violation.reason) == (ARCHIVE_FIELD, Reason.ARCHIVE_TOO_LARGE)
    assert upload_key(dataset_id) not in env.store.gets
    row = await env.row(dataset_id)
    assert row.state == datasets_pb2.DATASET_STATE_FAILED
    assert message in row.failure_reason


async def test_an_upload_replaced_after_the_size_check_is_cut_off_at_the_limit(env: Env) -> None:
    small = write_zip(env.tmp / "small.zip", data_yml_entries())
    big = write_zip(env.tmp / "big.zip", [*data_yml_entries(), ("shapes/pad.bin", bytes(1 << 20))])
    big_size = big.stat().st_size
    core = env.core(max_bytes=small.stat().st_size + 100)
    dataset_id = await env.upload(core, small)

    async def replace_upload() -> None:
        # A second PUT to the presigned URL lands between the stat and the download.
        env.store.after_upload_stat = None
        await env.store.put_file(upload_key(dataset_id), big)

    env.store.after_upload_stat = replace_upload

    with bind_principal(env.principal), pytest.raises(InvalidArgument) as info:
        await core.finalize(dataset_id)

    assert "over the limit" in info.value.message
    assert big_size > small.stat().st_size + 100
    assert (await env.row(dataset_id)).state == datasets_pb2.DATASET_STATE_FAILED


# --- concurrent finalizes: exactly one wins, READY never changes ----------------------------


async def test_concurrent_finalizes_make_the_dataset_ready_exactly_once(env: Env) -> None:
    core = env.core()
    dataset_id = await env.upload(core, write_zip(env.tmp / "upload.zip", data_yml_entries()))
    # All three pass the "not READY yet" check before any of them validates.
    barrier = asyncio.Barrier(3)
    env.store.after_upload_stat = barrier.wait

    with bind_principal(env.principal):
        results = await asyncio.gather(
            *(core.finalize(dataset_id) for _ in range(3)), return_exceptions=True
        )

    winners = [r for r in results if isinstance(r, datasets_pb2.Dataset)]
    losers = [r for r in results if not isinstance(r, datasets_pb2.Dataset)]
    assert len(winners) == 1, results
    assert all(isinstance(r, FailedPrecondition) for r in losers), losers
    assert all("already READY" in str(r) for r in losers)
    row = await env.row(dataset_id)
    assert row.state == datasets_pb2.DATASET_STATE_READY
    assert row.manifest_sha256 == winners[0].manifest_sha256
    keys = [info.key for info in await env.store.list(f"datasets/{dataset_id}/")]
    assert keys == sorted([row.archive_key, row.manifest_key])


async def test_a_losing_finalize_never_rewrites_a_ready_dataset(env: Env) -> None:
    core = env.core()
    dataset_id = await env.upload(core, write_zip(env.tmp / "v1.zip", data_yml_entries()))
    barrier = asyncio.Barrier(2)
    env.store.after_upload_stat = barrier.wait
    env.store.download_gates = [asyncio.Event(), asyncio.Event()]

    with bind_principal(env.principal):
        first = asyncio.create_task(core.finalize(dataset_id))
        second = asyncio.create_task(core.finalize(dataset_id))
        # Both are past the READY check. One downloads v1 and finishes: READY.
        env.store.download_gates[0].set()
        await env.store.downloading.wait()
        winner = env.store.downloaders[0]
        assert winner is not None
        ready = await winner
        assert isinstance(ready, datasets_pb2.Dataset)
        # Then the other downloads what was PUT meanwhile: another valid archive, and
        # then a broken one; neither may change the READY dataset.
        await env.store.put_file(
            upload_key(dataset_id),
            write_zip(env.tmp / "v2.zip", [*data_yml_entries(), ("shapes/extra.txt", b"v2")]),
        )
        env.store.download_gates[1].set()
        results = await asyncio.gather(first, second, return_exceptions=True)

    loser = next(r for r in results if r is not ready)
    assert isinstance(loser, FailedPrecondition), loser
    row = await env.row(dataset_id)
    assert row.state == datasets_pb2.DATASET_STATE_READY
    assert row.manifest_sha256 == ready.manifest_sha256
    assert row.failure_reason == ""
    keys = [info.key for info in await env.store.list(f"datasets/{dataset_id}/")]
    assert keys == sorted([row.archive_key, row.manifest_key])


async def test_a_failing_concurrent_finalize_never_marks_a_ready_dataset_failed(
    env: Env,
) -> None:
    core = env.core()
    dataset_id = await env.upload(core, write_zip(env.tmp / "v1.zip", data_yml_entries()))
    barrier = asyncio.Barrier(2)
    env.store.after_upload_stat = barrier.wait
    env.store.download_gates = [asyncio.Event(), asyncio.Event()]

    with bind_principal(env.principal):
        first = asyncio.create_task(core.finalize(dataset_id))
        second = asyncio.create_task(core.finalize(dataset_id))
        env.store.download_gates[0].set()
        await env.store.downloading.wait()
        winner = env.store.downloaders[0]
        assert winner is not None
        ready = await winner
        (env.tmp / "broken.zip").write_bytes(b"not a zip at all")
        await env.store.put_file(upload_key(dataset_id), env.tmp / "broken.zip")
        env.store.download_gates[1].set()
        results = await asyncio.gather(first, second, return_exceptions=True)

    loser = next(r for r in results if r is not ready)
    assert isinstance(loser, FailedPrecondition), loser
    row = await env.row(dataset_id)
    assert row.state == datasets_pb2.DATASET_STATE_READY
    assert row.failure_reason == ""
    assert isinstance(ready, datasets_pb2.Dataset)
    assert row.manifest_sha256 == ready.manifest_sha256


async def test_finalize_after_a_failed_validation_can_succeed(env: Env) -> None:
    core = env.core()
    (env.tmp / "broken.zip").write_bytes(b"not a zip at all")
    dataset_id = await env.upload(core, env.tmp / "broken.zip")
    with bind_principal(env.principal), pytest.raises(InvalidArgument):
        await core.finalize(dataset_id)
    assert (await env.row(dataset_id)).state == datasets_pb2.DATASET_STATE_FAILED

    await env.store.put_file(
        upload_key(dataset_id), write_zip(env.tmp / "good.zip", data_yml_entries())
    )
    with bind_principal(env.principal):
        dataset = await core.finalize(dataset_id)

    assert dataset.state == datasets_pb2.DATASET_STATE_READY
    assert dataset.failure_reason == ""
    assert not await env.store.exists(upload_key(dataset_id))
