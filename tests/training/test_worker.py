"""The training worker's dataset cache, against a real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.storage import ObjectStore
from visionmesh.training.worker.cache import DataError, DatasetCache


def _dataset_zip(path: Path) -> tuple[bytes, dict[str, object]]:
    files = {"data.yaml": b"names: [a]\ntrain: images/train\nval: images/val\n", "x.txt": b"hi"}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"root/{name}", data)
    manifest = {
        "files": [
            {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for name, data in sorted(files.items())
        ],
        "version": 1,
    }
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return raw, manifest


async def test_dataset_cache_materialises_once_and_verifies_every_file(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    raw, _ = _dataset_zip(tmp_path / "ds.zip")
    sha = hashlib.sha256(raw).hexdigest()
    await object_store.put_bytes("m.json", raw)
    await object_store.put_file("a.zip", tmp_path / "ds.zip")
    ref = events_pb2.SnapshotRef(
        snapshot_id="s", manifest_key="m.json", manifest_sha256=sha, archive_key="a.zip"
    )
    cache = DatasetCache(root=tmp_path / "cache", store=object_store)
    path, cached = await cache.materialise(ref)
    assert not cached and (path / "data.yaml").read_bytes().startswith(b"names")
    # Two jobs at once on one machine share one download.
    results = await asyncio.gather(cache.materialise(ref), cache.materialise(ref))
    assert all(cached for _, cached in results)

    # A tampered archive (same manifest) is refused, file named.
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("root/data.yaml", b"names: [a]\ntrain: images/train\nval: images/val\n")
        zf.writestr("root/x.txt", b"tampered")
    await object_store.put_file("bad.zip", tmp_path / "bad.zip")
    fresh = DatasetCache(root=tmp_path / "other-cache", store=object_store)
    bad = events_pb2.SnapshotRef(
        snapshot_id="s", manifest_key="m.json", manifest_sha256=sha, archive_key="bad.zip"
    )
    with pytest.raises(DataError, match=r"x\.txt"):
        await fresh.materialise(bad)
    assert not (tmp_path / "other-cache" / sha).exists()
    # A manifest that is not the pinned one is refused too.
    wrong = events_pb2.SnapshotRef(
        snapshot_id="s", manifest_key="m.json", manifest_sha256="0" * 64, archive_key="a.zip"
    )
    with pytest.raises(DataError, match="manifest"):
        await fresh.materialise(wrong)
