"""The training handler on the real job runtime (NATS, S3, dataset cache), in-process."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.cli.synth import make_classify_dataset, zip_dataset
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobMetrics, JobWorker, JobWorkerSpec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import JOB_EVENTS_STREAM, ensure_job_streams, job_request_subject
from visionmesh.gateway.core.archive import inspect_archive, manifest_json
from visionmesh.training.core import classifier_trainer
from visionmesh.training.worker.handler import TrainingHandler

SPEC = {
    "framework": "torchvision",
    "task": "classify",
    "model": "resnet18",
    "epochs": 2,
    "imgsz": 32,
    "batch": 4,
    "seed": 0,
    "dataLoading": {"preload": True, "numWorkers": 0},
}


async def _snapshot(store: ObjectStore, tmp: Path) -> events_pb2.SnapshotRef:
    """A classification dataset as the gateway stores it: archive plus manifest."""
    root = tmp / "data"
    make_classify_dataset(root, n_per_class_train=4, n_per_class_val=2, imgsz=32, seed=0)
    archive = zip_dataset(root, tmp / "data.zip")
    report = inspect_archive(archive, max_bytes=1 << 30)
    manifest = manifest_json(report)
    await store.put_file("datasets/d/archive.zip", archive)
    await store.put_bytes("datasets/d/manifest.json", manifest)
    return events_pb2.SnapshotRef(
        snapshot_id="s",
        manifest_key="datasets/d/manifest.json",
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        archive_key="datasets/d/archive.zip",
        task="classify",
        class_names=list(report.manifest.class_names),
    )


async def _run_job(
    store: ObjectStore, tmp: Path, spec: dict[str, Any]
) -> list[events_pb2.JobEvent]:
    snapshot = await _snapshot(store, tmp)
    request = events_pb2.JobRequest(
        job_id="job",
        tenant_id="t",
        kind=job_pb2.JOB_KIND_TRAINING,
        training=events_pb2.TrainingJobRequest(
            spec=json_format.ParseDict(spec, training_pb2.TrainingSpec()),
            snapshot=snapshot,
            artifact_prefix="jobs/job/",
        ),
    )
    async with (
        NatsServer(store_dir=tmp / "nats", log_dir=tmp) as nats,
        EventBus(servers=nats.url, name="handler-test") as bus,
    ):
        await ensure_job_streams(bus)
        handler = TrainingHandler(
            store=store,
            cache=DatasetCache(root=tmp / "cache", store=store),
            work_root=tmp / "work",
            progress_every=1,
            default_device="cpu",
        )
        worker = JobWorker(
            bus=bus,
            handler=handler,
            spec=JobWorkerSpec(kind=job_pb2.JOB_KIND_TRAINING, heartbeat_seconds=1.0),
            metrics=JobMetrics.create(CollectorRegistry()),
        )
        await bus.publish(job_request_subject(job_pb2.JOB_KIND_TRAINING), request, msg_id="job")
        running = asyncio.create_task(worker.run())
        events: list[events_pb2.JobEvent] = []
        subscription = await bus.subscribe_ordered("vm.jobs.events.job", stream=JOB_EVENTS_STREAM)
        try:
            async with asyncio.timeout(90):
                async for delivery in subscription:
                    event = delivery.decode(events_pb2.JobEvent)
                    events.append(event)
                    if event.state_changed.state in (
                        job_pb2.JOB_STATE_FAILED,
                        job_pb2.JOB_STATE_SUCCEEDED,
                    ):
                        break
        finally:
            await subscription.close()
            worker.stop()
            await asyncio.wait_for(running, 30)
    return events


async def test_gpu_out_of_memory_fails_at_once_naming_batch_and_imgsz(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 0

    def out_of_memory(inputs: torch.Tensor, augment: Any, *, erase_fill: Any) -> torch.Tensor:
        nonlocal steps
        steps += 1
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    # Inside a training step, where a real CUDA allocation would fail.
    monkeypatch.setattr(classifier_trainer, "augment_batch", out_of_memory)
    events = await _run_job(object_store, tmp_path, SPEC)
    end = events[-1].state_changed
    assert end.state == job_pb2.JOB_STATE_FAILED
    assert end.error.reason == "OUT_OF_MEMORY"
    assert "batch 4" in end.error.message and "imgsz 32" in end.error.message
    assert "lower spec.batch or spec.imgsz" in end.error.message
    assert steps == 1  # permanent: never retried
    assert not (tmp_path / "work" / "job").exists() or not any(
        (tmp_path / "work" / "job").iterdir()
    )


async def test_a_job_trains_and_reports_its_model_on_the_runtime(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    events = await _run_job(object_store, tmp_path, SPEC)
    kinds = [e.WhichOneof("payload") for e in events]
    assert events[-1].state_changed.state == job_pb2.JOB_STATE_SUCCEEDED
    assert kinds.count("model_trained") == 1
    trained = next(e.model_trained for e in events if e.WhichOneof("payload") == "model_trained")
    assert trained.checkpoint.key.startswith("jobs/job/")
    assert await object_store.exists(trained.checkpoint.key)
    assert [e.worker_sequence for e in events] == list(range(1, len(events) + 1))
