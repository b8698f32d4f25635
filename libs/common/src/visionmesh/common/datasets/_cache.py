"""A worker's local dataset cache: snapshots materialised once, verified against the manifest.

Nothing from the object store is trusted before it is checked: the manifest against the
sha256 the job pinned, the archive against the manifest's size and sha256 (before it is
opened), and every extracted file against its manifest entry. Reads are bounded by the
sizes the manifest records, never by what a zip header claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import shutil
import uuid
import zipfile
import zlib
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.datasets._manifest import DataError, DatasetManifest, is_sha256
from visionmesh.common.storage import ObjectStore

__all__ = [
    "MAX_MANIFEST_BYTES",
    "CappedDownload",
    "DatasetCache",
    "MaterialisedDataset",
    "download_capped",
]

MAX_MANIFEST_BYTES: Final = 64 << 20
"""Largest manifest read (about 400,000 files); a bigger object is refused unread."""

_CHUNK: Final = 1 << 20
_READY: Final = ".ready"
_MANIFEST: Final = "manifest.json"
_DATA: Final = "data"


def _chunks(store: ObjectStore, key: str) -> AsyncGenerator[bytes, None]:
    # iter_chunks is an async generator, typed as an iterator; aclosing needs aclose().
    return cast(AsyncGenerator[bytes, None], store.iter_chunks(key, chunk_size=_CHUNK))


@dataclass(frozen=True, slots=True)
class CappedDownload:
    """What `download_capped` wrote: `size` bytes hashing to `sha256`, or `over_limit`."""

    size: int
    sha256: str
    over_limit: bool


async def download_capped(
    store: ObjectStore, key: str, path: Path, *, limit: int
) -> CappedDownload:
    """Streams `key` to `path`, hashing it, and stops once more than `limit` bytes arrive.

    A stat taken earlier can be stale (the object may be replaced in between), so the
    bound is enforced on the bytes themselves. On `over_limit` the file holds a prefix.
    """
    digest = hashlib.sha256()
    size = 0

    def consume(out: IO[bytes], chunk: bytes) -> None:
        digest.update(chunk)
        out.write(chunk)

    with path.open("wb") as out:
        # aclosing: leaving early must close the HTTP response, not leave it to the GC.
        async with contextlib.aclosing(_chunks(store, key)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    return CappedDownload(size=size, sha256="", over_limit=True)
                await asyncio.to_thread(consume, out, chunk)
    return CappedDownload(size=size, sha256=digest.hexdigest(), over_limit=False)


@dataclass(frozen=True, slots=True)
class MaterialisedDataset:
    """A snapshot on local disk: its files under `root`, described by `manifest`."""

    root: Path
    manifest: DatasetManifest
    cached: bool
    """True when an earlier job had already materialised it."""

    def ultralytics_data(self) -> dict[str, Any]:
        """Ultralytics' dataset dict for this copy (see `DatasetManifest.ultralytics_data`)."""
        return self.manifest.ultralytics_data(self.root)


class DatasetCache:
    """`<root>/<manifest sha256>/` holds one snapshot (`data/` and its `manifest.json`).

    Entries are built in a staging folder and renamed into place, so a crash never leaves
    a half-filled entry that looks complete. Jobs of one process share a download through
    an asyncio lock, and processes on one machine through a file lock.
    """

    def __init__(self, *, root: Path, store: ObjectStore) -> None:
        self._root = root
        self._store = store
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def path_for(self, manifest_sha256: str) -> Path:
        """The cache entry of a manifest; refuses anything but a sha256 (it becomes a path)."""
        if not is_sha256(manifest_sha256):
            raise DataError(
                f"manifest sha256 {manifest_sha256[:80]!r} is not 64 lower-case hex digits"
            )
        return self._root / manifest_sha256

    async def materialise(self, snapshot: events_pb2.SnapshotRef) -> MaterialisedDataset:
        """The snapshot's files on local disk, downloaded and verified unless cached.

        Raises:
            DataError: the manifest, the archive or a file does not match what was pinned.
            NotFound: the manifest or the archive is missing from the object store.
        """
        entry = self.path_for(snapshot.manifest_sha256)
        found = await asyncio.to_thread(_load_entry, entry, snapshot.manifest_sha256)
        if found is not None:
            return found
        self._root.mkdir(parents=True, exist_ok=True)
        async with self._locks[snapshot.manifest_sha256]:
            # Another worker process on this machine may be filling the same entry.
            lock_path = self._root / f".{snapshot.manifest_sha256}.lock"
            with lock_path.open("w") as lock_file:
                await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                try:
                    found = await asyncio.to_thread(_load_entry, entry, snapshot.manifest_sha256)
                    if found is not None:
                        return found
                    manifest = await self._fill(snapshot, entry)
                    return MaterialisedDataset(root=entry / _DATA, manifest=manifest, cached=False)
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    async def _fill(self, snapshot: events_pb2.SnapshotRef, entry: Path) -> DatasetManifest:
        raw = await self._read_manifest(snapshot)
        manifest = DatasetManifest.from_json(raw)
        staging = self._root / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            archive = staging / "archive.zip"
            await self._download_archive(snapshot.archive_key, manifest, archive)
            data = staging / _DATA
            data.mkdir()
            await asyncio.to_thread(_extract, archive, manifest, data)
            archive.unlink()
            (staging / _MANIFEST).write_bytes(raw)
            (staging / _READY).write_text(snapshot.snapshot_id)
            shutil.rmtree(entry, ignore_errors=True)  # an unfinished or older-format entry
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    async def _read_manifest(self, snapshot: events_pb2.SnapshotRef) -> bytes:
        key = snapshot.manifest_key
        info = await self._store.stat(key)
        if info.size > MAX_MANIFEST_BYTES:
            raise DataError(
                f"manifest {key} is {info.size} bytes, over the limit of {MAX_MANIFEST_BYTES}"
            )
        chunks: list[bytes] = []
        size = 0
        async with contextlib.aclosing(_chunks(self._store, key)) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > MAX_MANIFEST_BYTES:
                    raise DataError(f"manifest {key} is over the limit of {MAX_MANIFEST_BYTES}")
                chunks.append(chunk)
        raw = b"".join(chunks)
        if hashlib.sha256(raw).hexdigest() != snapshot.manifest_sha256:
            raise DataError(f"manifest {key} does not match its sha256")
        return raw

    async def _download_archive(self, key: str, manifest: DatasetManifest, path: Path) -> None:
        info = await self._store.stat(key)
        if info.size != manifest.archive_size:
            # Refused before a byte is downloaded.
            raise DataError(
                f"archive {key} is {info.size} bytes, the manifest says {manifest.archive_size}"
            )
        got = await download_capped(self._store, key, path, limit=manifest.archive_size)
        if got.over_limit or got.size != manifest.archive_size:
            raise DataError(
                f"archive {key} changed while downloading: not {manifest.archive_size} bytes"
            )
        if got.sha256 != manifest.archive_sha256:
            raise DataError(f"archive {key} does not match the manifest's sha256")


def _load_entry(entry: Path, manifest_sha256: str) -> MaterialisedDataset | None:
    """A complete cache entry, or None; its manifest is re-checked against the hash."""
    if not (entry / _READY).exists():
        return None
    try:
        raw = (entry / _MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    if hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise DataError(f"cached manifest in {entry} does not match its sha256")
    return MaterialisedDataset(
        root=entry / _DATA, manifest=DatasetManifest.from_json(raw), cached=True
    )


def _extract(archive: Path, manifest: DatasetManifest, dest: Path) -> None:
    """Writes exactly the manifest's files, each checked against its size and sha256."""
    base = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member, entry in manifest.members():
                target = dest / entry.path
                if not target.resolve().is_relative_to(base):
                    raise DataError(f"{entry.path} escapes the dataset directory")
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise DataError(f"{entry.path} from the manifest is missing") from None
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise DataError(f"{entry.path}: unsupported compression method")
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(zf, info, entry.size, entry.sha256, target, entry.path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"archive is not a readable zip: {exc}") from exc


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, sha256: str, target: Path, path: str
) -> None:
    """Copies at most `size` bytes (plus one, to see that the member ends there)."""
    digest = hashlib.sha256()
    remaining = size
    try:
        with zf.open(info) as src, target.open("wb") as out:
            while remaining:
                chunk = src.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                digest.update(chunk)
                out.write(chunk)
            # Reading to the end also makes zipfile check the member's CRC.
            longer = bool(src.read(1))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataError(f"{path}: unreadable in the archive: {exc}") from exc
    if remaining or longer or digest.hexdigest() != sha256:
        raise DataError(f"{path} does not match its manifest sha256/size")
