"""The training worker's queue handling and dataset cache, against real NATS and S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import (
    JOB_EVENTS_STREAM,
    JOBS_STREAM,
    ensure_job_streams,
    job_request_subject,
)
from visionmesh.training.worker.cache import DataError, DatasetCache
from visionmesh.training.worker.worker import CONSUMER, TrainingWorker


async def test_a_job_delivered_too_often_is_failed_not_run(tmp_path: Path) -> None:
    async with (
        NatsServer(store_dir=tmp_path / "nats", log_dir=tmp_path) as nats,
        EventBus(servers=nats.url, name="worker-test") as bus,
    ):
        await ensure_job_streams(bus)
        request = events_pb2.JobRequest(
            job_id="job-1", tenant_id="t", kind=job_pb2.JOB_KIND_TRAINING
        )
        await bus.publish(job_request_subject(job_pb2.JOB_KIND_TRAINING), request, msg_id="job-1")
        worker = TrainingWorker(
            bus=bus,
            runner=None,  # type: ignore[arg-type]  # must never be reached
            ack_wait=1.0,
            heartbeat=0.5,
            max_deliveries=1,
        )
        consumer = await bus.pull_consumer(
            JOBS_STREAM,
            CONSUMER,
            filter_subject=job_request_subject(job_pb2.JOB_KIND_TRAINING),
            ack_wait=1.0,
            max_deliver=2,
        )
        # First delivery: the worker "dies" (never acks), so JetStream redelivers.
        (first,) = await consumer.fetch(1, timeout=5)
        assert first.num_delivered == 1
        (second,) = await consumer.fetch(1, timeout=10)
        assert second.num_delivered == 2
        await worker.handle(second)

        events = await bus.subscribe_ordered("vm.jobs.events.job-1", stream=JOB_EVENTS_STREAM)
        delivery = await events.next(timeout=5)
        await events.close()
        assert delivery is not None
        event = delivery.decode(events_pb2.JobEvent)
        assert event.state_changed.state == job_pb2.JOB_STATE_FAILED
        assert event.state_changed.error.reason == "MAX_DELIVERIES_EXCEEDED"
        assert event.attempt == 2
        # Terminated: never delivered again.
        assert await consumer.fetch(1, timeout=2.5) == []
        await consumer.close()


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
