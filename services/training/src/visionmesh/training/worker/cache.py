"""Materialises dataset snapshots into a local cache keyed by manifest hash, verified by sha256."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import shutil
import uuid
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.storage import ObjectStore

_COMPLETE = ".complete"


class DataError(Exception):
    """The stored dataset does not match its manifest (corrupt or tampered)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _extract(archive: Path, manifest: dict[str, Any], dest: Path) -> None:
    entries = manifest["files"]
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        prefix = ""
        if entries:
            first = entries[0]["path"]
            match = next((n for n in names if n == first or n.endswith("/" + first)), None)
            if match is None:
                raise DataError(f"{first} from the manifest is missing in the archive")
            prefix = match[: len(match) - len(first)]
        for entry in entries:
            member = prefix + entry["path"]
            target = dest / entry["path"]
            if not target.resolve().is_relative_to(dest.resolve()):
                raise DataError(f"{entry['path']} escapes the dataset directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            size = 0
            try:
                with zf.open(member) as src, target.open("wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            except KeyError as exc:
                raise DataError(f"{entry['path']} from the manifest is missing") from exc
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise DataError(f"{entry['path']} does not match its manifest sha256/size")


class DatasetCache:
    """`<root>/<manifest sha256>/` holds one snapshot's files; later jobs reuse it."""

    def __init__(self, *, root: Path, store: ObjectStore) -> None:
        self._root = root
        self._store = store
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def path_for(self, manifest_sha256: str) -> Path:
        return self._root / manifest_sha256

    async def materialise(self, snapshot: events_pb2.SnapshotRef) -> tuple[Path, bool]:
        """The snapshot's directory, and whether it came from the cache."""
        target = self.path_for(snapshot.manifest_sha256)
        if (target / _COMPLETE).exists():
            return target, True
        self._root.mkdir(parents=True, exist_ok=True)
        async with self._locks[snapshot.manifest_sha256]:
            # Another worker process on this machine may be filling the same entry.
            lock_path = self._root / f".{snapshot.manifest_sha256}.lock"
            with lock_path.open("w") as lock_file:
                await asyncio.to_thread(fcntl.flock, lock_file, fcntl.LOCK_EX)
                try:
                    if (target / _COMPLETE).exists():
                        return target, True
                    await self._fill(snapshot, target)
                    return target, False
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    async def _fill(self, snapshot: events_pb2.SnapshotRef, target: Path) -> None:
        manifest_bytes = await self._store.get_bytes(snapshot.manifest_key)
        if _sha256(manifest_bytes) != snapshot.manifest_sha256:
            raise DataError(f"manifest {snapshot.manifest_key} does not match its sha256")
        manifest = json.loads(manifest_bytes)
        staging = self._root / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir(parents=True)
            archive = staging / "archive.zip"
            await self._store.download_file(snapshot.archive_key, archive)
            data = staging / "data"
            data.mkdir()
            await asyncio.to_thread(_extract, archive, manifest, data)
            (data / _COMPLETE).write_text(snapshot.snapshot_id)
            shutil.rmtree(target, ignore_errors=True)
            data.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
