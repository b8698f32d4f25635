"""Test helpers: synthetic dataset uploads and a scripted worker that emits job events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.cli.synth import make_classify_dataset, make_detect_dataset, zip_dataset
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import job_events_subject


def detect_zip(tmp: Path, *, n_train: int = 6, n_val: int = 3) -> Path:
    root = tmp / "detect-src"
    make_detect_dataset(root, n_train=n_train, n_val=n_val, imgsz=64, seed=0)
    return zip_dataset(root, tmp / "detect.zip")


def classify_zip(tmp: Path) -> Path:
    root = tmp / "classify-src"
    make_classify_dataset(root, n_per_class_train=3, n_per_class_val=2, imgsz=32, seed=0)
    return zip_dataset(root, tmp / "classify.zip")


async def upload_dataset(
    client: httpx.AsyncClient, archive: Path, *, name: str = "shapes"
) -> dict[str, Any]:
    """Create -> PUT to the presigned URL -> finalize; returns the finalize response."""
    created = await client.post("/v1/datasets", json={"name": name})
    assert created.status_code == 200, created.text
    body = created.json()
    async with httpx.AsyncClient(timeout=30) as s3:
        put = await s3.put(body["uploadUrl"], content=await asyncio.to_thread(archive.read_bytes))
        assert put.status_code == 200, put.text
    finalized = await client.post(f"/v1/datasets/{body['dataset']['id']}:finalize", json={})
    return {**finalized.json(), "http_status": finalized.status_code}


async def wait_for(
    predicate: Any, *, within: float = 20.0, interval: float = 0.1, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class ScriptedWorker:
    """Publishes the events a training worker would, for one job attempt."""

    def __init__(self, bus: EventBus, *, job_id: str, tenant_id: str, attempt: int = 1) -> None:
        self.bus = bus
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.attempt = attempt
        self.sequence = 0

    async def emit(self, *, sequence: int | None = None, **payload: Any) -> None:
        if sequence is None:
            self.sequence += 1
            sequence = self.sequence
        now = Timestamp()
        now.GetCurrentTime()
        event = events_pb2.JobEvent(
            job_id=self.job_id,
            tenant_id=self.tenant_id,
            attempt=self.attempt,
            worker_sequence=sequence,
            worker_id="scripted",
            time=now,
            **payload,
        )
        await self.bus.publish(
            job_events_subject(self.job_id),
            event,
            msg_id=f"{self.job_id}/{self.attempt}/{sequence}/{time.monotonic_ns()}",
        )

    async def state(self, state: int, **kwargs: Any) -> None:
        await self.emit(state_changed=events_pb2.JobStateChanged(state=state, **kwargs))

    async def progress(self, epoch: int, total: int) -> None:
        await self.emit(
            progress=job_pb2.JobProgress(
                epoch=epoch, total_epochs=total, fraction=epoch / total, phase="train"
            )
        )

    async def metrics(self, epoch: int, **values: float) -> None:
        await self.emit(
            metrics=events_pb2.JobMetricsReported(
                points=[
                    metric_pb2.MetricPoint(name=name, value=value, epoch=epoch)
                    for name, value in values.items()
                ]
            )
        )

    async def artifact(self, name: str, key: str, size: int) -> artifact_pb2.ArtifactRef:
        ref = artifact_pb2.ArtifactRef(
            name=name,
            kind="checkpoint",
            key=key,
            size_bytes=size,
            content_type="application/octet-stream",
        )
        await self.emit(artifact=events_pb2.JobArtifactUploaded(artifact=ref))
        return ref
