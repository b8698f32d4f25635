"""DatasetCache against a real S3 (SeaweedFS): verified, bounded, shared materialisation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.datasets import (
    DataError,
    DatasetCache,
    DatasetManifest,
    ManifestFile,
    ManifestSplit,
    MaterialisedDataset,
    download_capped,
)
from visionmesh.common.errors import NotFound
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig

DATA_YAML = b"names: [a]\ntrain: images/train\nval: images/val\n"
FILES = {
    "data.yaml": DATA_YAML,
    "images/train/1.jpg": b"train-image-bytes",
    "images/val/2.jpg": b"val-image-bytes",
    "labels/train/1.txt": b"0 0.5 0.5 0.1 0.1\n",
}


def all_dirs(*paths: str) -> bool:
    return all(Path(path).is_dir() for path in paths)


class RecordingStore(ObjectStore):
    """A real ObjectStore that remembers which keys were read (GET), for 'never downloaded'."""

    def __init__(self, config: ObjectStoreConfig) -> None:
        super().__init__(config)
        self.gets: list[str] = []

    async def get_bytes(self, key: str) -> bytes:
        self.gets.append(key)
        return await super().get_bytes(key)

    async def download_file(self, key: str, path: str | Path) -> None:
        self.gets.append(key)
        await super().download_file(key, path)

    def iter_chunks(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self.gets.append(key)
        return super().iter_chunks(key, chunk_size=chunk_size)


@pytest_asyncio.fixture
async def store(object_store_config: ObjectStoreConfig) -> AsyncIterator[RecordingStore]:
    recording = RecordingStore(object_store_config)
    await recording.ensure_bucket()
    try:
        yield recording
    finally:
        with contextlib.suppress(NotFound):
            await recording.remove_bucket()
        recording.close()


def write_zip(
    path: Path, files: dict[str, bytes], *, prefix: str = "ds/", compression: int = 8
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return path


def manifest_for(
    archive: Path, contents: dict[str, bytes], *, prefix: str = "ds/", **overrides: Any
) -> DatasetManifest:
    raw = archive.read_bytes()
    fields: dict[str, Any] = {
        "format": "detect",
        "root_prefix": prefix,
        "class_names": ("a",),
        "splits": (
            ManifestSplit("train", ("images/train",), ("labels/train",)),
            ManifestSplit("val", ("images/val",), ("labels/val",)),
        ),
        "files": tuple(
            ManifestFile(name, len(data), hashlib.sha256(data).hexdigest())
            for name, data in sorted(contents.items())
        ),
        "archive_sha256": hashlib.sha256(raw).hexdigest(),
        "archive_size": len(raw),
    }
    fields.update(overrides)
    return DatasetManifest(**fields)


async def publish(
    store: ObjectStore, archive: Path, manifest: DatasetManifest, name: str = "s"
) -> events_pb2.SnapshotRef:
    raw = manifest.to_json()
    await store.put_bytes(f"{name}/manifest.json", raw)
    await store.put_file(f"{name}/archive.zip", archive)
    return events_pb2.SnapshotRef(
        snapshot_id=name,
        manifest_key=f"{name}/manifest.json",
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        archive_key=f"{name}/archive.zip",
        task="detect",
        class_names=list(manifest.class_names),
    )


async def test_materialises_once_verifies_and_builds_the_data_dict(
    store: RecordingStore, tmp_path: Path
) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    manifest = manifest_for(archive, FILES)
    ref = await publish(store, archive, manifest)
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    first = await cache.materialise(ref)

    assert isinstance(first, MaterialisedDataset)
    assert not first.cached
    assert first.manifest == manifest
    assert first.root == tmp_path / "cache" / ref.manifest_sha256 / "data"
    for name, data in FILES.items():
        assert (first.root / name).read_bytes() == data
    yolo = first.ultralytics_data()
    assert yolo["names"] == {0: "a"}
    assert all_dirs(yolo["train"], yolo["val"])
    # Two jobs at once on one machine share the entry; nothing is downloaded again.
    reads = len(store.gets)
    again = await asyncio.gather(cache.materialise(ref), cache.materialise(ref))
    assert all(result.cached and result.manifest == manifest for result in again)
    assert len(store.gets) == reads
    # A new process (new cache object) on the same directory reuses it too.
    reopened = await DatasetCache(root=tmp_path / "cache", store=store).materialise(ref)
    assert reopened.cached and reopened.root == first.root


@pytest.mark.parametrize(
    "bad_hash",
    [
        "../../../../tmp/escape",
        "A" * 64,
        "0" * 63,
        "0" * 65,
        "",
        "/" + "0" * 63,
    ],
)
async def test_a_manifest_hash_that_is_not_a_sha256_is_refused_before_use(
    store: RecordingStore, tmp_path: Path, bad_hash: str
) -> None:
    cache = DatasetCache(root=tmp_path / "cache", store=store)
    ref = events_pb2.SnapshotRef(
        snapshot_id="s", manifest_key="m", manifest_sha256=bad_hash, archive_key="a"
    )

    with pytest.raises(DataError, match="not 64 lower-case hex digits"):
        await cache.materialise(ref)

    assert store.gets == []
    assert not (tmp_path / "cache").exists()


async def test_a_manifest_that_is_not_the_pinned_one_is_refused(
    store: RecordingStore, tmp_path: Path
) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    ref = await publish(store, archive, manifest_for(archive, FILES))
    ref.manifest_sha256 = "0" * 64
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    with pytest.raises(DataError, match=r"manifest .* does not match its sha256"):
        await cache.materialise(ref)

    assert ref.archive_key not in store.gets


async def test_an_archive_of_the_wrong_size_is_refused_without_downloading(
    store: RecordingStore, tmp_path: Path
) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    ref = await publish(store, archive, manifest_for(archive, FILES))
    # The archive is replaced (another PUT) by a different one.
    other = write_zip(tmp_path / "other.zip", {**FILES, "extra.txt": b"more"})
    await store.put_file(ref.archive_key, other)
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    with pytest.raises(DataError, match=r"archive .* bytes, the manifest says"):
        await cache.materialise(ref)

    assert ref.archive_key not in store.gets
    assert not (tmp_path / "cache" / ref.manifest_sha256).exists()


async def test_a_tampered_archive_of_the_same_size_is_refused_before_extracting(
    store: RecordingStore, tmp_path: Path
) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES, compression=zipfile.ZIP_STORED)
    ref = await publish(store, archive, manifest_for(archive, FILES))
    tampered = bytearray(archive.read_bytes())
    offset = tampered.find(b"train-image-bytes")
    tampered[offset : offset + 5] = b"TRAIN"
    (tmp_path / "tampered.zip").write_bytes(bytes(tampered))
    await store.put_file(ref.archive_key, tmp_path / "tampered.zip")
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    with pytest.raises(DataError, match="does not match the manifest's sha256"):
        await cache.materialise(ref)

    assert not (tmp_path / "cache" / ref.manifest_sha256).exists()
    assert not list((tmp_path / "cache").glob(".staging-*"))


def _count_member_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Bytes zipfile hands out per member (an observer around the real read)."""
    counts: dict[str, int] = {}
    real_read = zipfile.ZipExtFile.read

    def read(self: zipfile.ZipExtFile, n: int = -1) -> bytes:
        data = real_read(self, n)
        counts[self.name] = counts.get(self.name, 0) + len(data)
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return counts


async def test_reads_are_bounded_by_the_manifest_not_by_zip_headers(
    store: RecordingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manifest pins this exact archive (hash and size match) but records 2 bytes for
    # a member that inflates to 8 MiB: the cache must stop reading at the recorded size.
    files = {**FILES, "x.txt": bytes(8 << 20)}
    archive = write_zip(tmp_path / "ds.zip", files)
    manifest = manifest_for(archive, files)
    lying = tuple(
        ManifestFile(f.path, 2, f.sha256) if f.path == "x.txt" else f for f in manifest.files
    )
    ref = await publish(store, archive, manifest_for(archive, files, files=lying))
    counts = _count_member_reads(monkeypatch)
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    with pytest.raises(DataError, match=r"x\.txt does not match its manifest"):
        await cache.materialise(ref)

    assert counts["ds/x.txt"] <= 3


def _patch_declared_size(data: bytearray, member: str, size: int) -> None:
    """Rewrite an entry's uncompressed size in the central directory."""
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        (name_len,) = struct.unpack_from("<H", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, pos + 24, size)
            return
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(member)


async def test_a_zip_header_claiming_a_larger_member_is_not_trusted(
    store: RecordingStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header says 1 GiB; the manifest (which pins this archive) says the true size,
    # and only that many bytes (plus one, to see the end) are read and written.
    archive = write_zip(tmp_path / "ds.zip", FILES)
    forged = bytearray(archive.read_bytes())
    _patch_declared_size(forged, "ds/labels/train/1.txt", 1 << 30)
    archive.write_bytes(bytes(forged))
    ref = await publish(store, archive, manifest_for(archive, FILES))
    counts = _count_member_reads(monkeypatch)
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    materialised = await cache.materialise(ref)

    label = FILES["labels/train/1.txt"]
    assert (materialised.root / "labels/train/1.txt").read_bytes() == label
    assert counts["ds/labels/train/1.txt"] <= len(label) + 1


async def test_a_file_missing_from_the_archive_is_named(
    store: RecordingStore, tmp_path: Path
) -> None:
    archive = write_zip(tmp_path / "ds.zip", FILES)
    extra = ManifestFile("images/val/3.jpg", 1, hashlib.sha256(b"x").hexdigest())
    files = tuple(sorted((*manifest_for(archive, FILES).files, extra), key=lambda f: f.path))
    ref = await publish(store, archive, manifest_for(archive, FILES, files=files))
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    with pytest.raises(DataError, match=r"images/val/3\.jpg from the manifest is missing"):
        await cache.materialise(ref)


async def test_download_capped_stops_at_the_limit(store: RecordingStore, tmp_path: Path) -> None:
    await store.put_bytes("blob", bytes(3 << 20))

    over = await download_capped(store, "blob", tmp_path / "over", limit=1 << 20)
    whole = await download_capped(store, "blob", tmp_path / "whole", limit=3 << 20)

    assert over.over_limit and over.size <= (1 << 20) + (1 << 20)
    assert (tmp_path / "over").stat().st_size <= 1 << 20
    assert not whole.over_limit and whole.size == 3 << 20
    assert whole.sha256 == hashlib.sha256(bytes(3 << 20)).hexdigest()
