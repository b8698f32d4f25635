"""The export handler on the real job runtime (NATS, S3, dataset cache), in-process."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.cli.synth import make_classify_dataset, zip_dataset
from visionmesh.common.classifiers import CHECKPOINT_FORMAT, build_torchvision_classifier
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.embedded import NatsServer
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobMetrics, JobWorker, JobWorkerSpec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import JOB_EVENTS_STREAM, ensure_job_streams, job_request_subject
from visionmesh.export.worker.handler import ExportHandler
from visionmesh.gateway.core.archive import inspect_archive, manifest_json

IMGSZ = 32
TERMINAL = (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_CANCELLED)


async def _snapshot(store: ObjectStore, tmp: Path) -> events_pb2.SnapshotRef:
    root = tmp / "data"
    make_classify_dataset(root, n_per_class_train=2, n_per_class_val=3, imgsz=IMGSZ, seed=0)
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


async def _request(
    store: ObjectStore, tmp: Path, job_id: str, spec: export_pb2.ExportSpec, *, sha256: str = ""
) -> events_pb2.JobRequest:
    snapshot = await _snapshot(store, tmp)
    names = list(snapshot.class_names)
    model = build_torchvision_classifier("resnet18", num_classes=len(names), imgsz=IMGSZ)
    checkpoint = tmp / "classifier.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "arch": "resnet18",
            "class_names": names,
            "imgsz": IMGSZ,
        },
        checkpoint,
    )
    await store.put_file(f"jobs/train-{job_id}/best.pt", checkpoint)
    spec.model_version_id = "mv"
    return events_pb2.JobRequest(
        job_id=job_id,
        tenant_id="t",
        kind=job_pb2.JOB_KIND_EXPORT,
        export=events_pb2.ExportJobRequest(
            spec=spec,
            checkpoint_key=f"jobs/train-{job_id}/best.pt",
            checkpoint_sha256=sha256 or hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            model_name="shapes",
            model_version=2,
            framework="torchvision",
            task="classify",
            architecture="resnet18",
            class_names=names,
            artifact_prefix=f"jobs/{job_id}/",
            snapshot=snapshot,
            imgsz=IMGSZ,
        ),
    )


async def _run(
    store: ObjectStore, tmp: Path, requests: list[events_pb2.JobRequest]
) -> dict[str, list[events_pb2.JobEvent]]:
    async with (
        NatsServer(store_dir=tmp / "nats", log_dir=tmp) as nats,
        EventBus(servers=nats.url, name="export-handler-test") as bus,
    ):
        await ensure_job_streams(bus)
        handler = ExportHandler(
            store=store,
            cache=DatasetCache(root=tmp / "cache", store=store),
            work_root=tmp / "work",
            parity_images=4,
        )
        worker = JobWorker(
            bus=bus,
            handler=handler,
            spec=JobWorkerSpec(kind=job_pb2.JOB_KIND_EXPORT, heartbeat_seconds=1.0),
            metrics=JobMetrics.create(CollectorRegistry()),
        )
        for request in requests:
            subject = job_request_subject(job_pb2.JOB_KIND_EXPORT)
            await bus.publish(subject, request, msg_id=request.job_id)
        running = asyncio.create_task(worker.run())
        events: dict[str, list[events_pb2.JobEvent]] = {}
        subscription = await bus.subscribe_ordered("vm.jobs.events.>", stream=JOB_EVENTS_STREAM)
        try:
            async with asyncio.timeout(100):
                async for delivery in subscription:
                    event = delivery.decode(events_pb2.JobEvent)
                    events.setdefault(event.job_id, []).append(event)
                    ended = [
                        job_id
                        for job_id, seen in events.items()
                        if any(e.state_changed.state in TERMINAL for e in seen)
                    ]
                    if len(ended) == len(requests):
                        break
        finally:
            await subscription.close()
            worker.stop()
            await asyncio.wait_for(running, 30)
    return events


def _state(events: list[events_pb2.JobEvent]) -> events_pb2.JobStateChanged:
    return next(e.state_changed for e in events if e.state_changed.state in TERMINAL)


async def test_an_export_job_checks_on_validation_images_uploads_and_reports_its_package(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    good = await _request(object_store, tmp_path, "good", export_pb2.ExportSpec(dynamic_batch=True))
    forged = await _request(
        object_store, tmp_path / "f", "forged", export_pb2.ExportSpec(), sha256="0" * 64
    )
    gpu = await _request(
        object_store, tmp_path / "g", "gpu", export_pb2.ExportSpec(formats=["tensorrt"])
    )
    events = await _run(object_store, tmp_path, [good, forged, gpu])

    done = _state(events["good"])
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert done.metrics["parity_images"] == 4 and done.metrics["parity_top1_agreed"] == 4
    assert "seconds_export" in done.metrics
    phases = [e.progress.phase for e in events["good"] if e.HasField("progress")]
    assert [p for p in dict.fromkeys(phases)] == ["load", "export", "parity", "package", "upload"]
    uploaded = {e.artifact.artifact.name for e in events["good"] if e.HasField("artifact")}
    assert {"model.onnx", "metadata.json", "parity.json", "triton.zip"} <= uploaded
    (exported,) = [e.model_exported.result for e in events["good"] if e.HasField("model_exported")]
    assert exported.parity.image_source == "validation" and exported.parity.passed
    assert exported.onnx.key == "jobs/good/model.onnx" and exported.onnx.sha256
    assert exported.triton_repository_prefix == "jobs/good/triton/"
    assert {m.name for m in exported.triton_models} >= {"shapes-v2", "shapes-v2-ensemble"}
    for model in exported.triton_models:
        assert model.config.key.startswith("jobs/good/triton/") and model.config.sha256
    keys = {info.key for info in await object_store.list("jobs/good/")}
    assert keys == {f"jobs/good/{name}" for name in uploaded}

    forged_end = _state(events["forged"])
    assert forged_end.state == job_pb2.JOB_STATE_FAILED
    assert forged_end.error.reason == "CHECKPOINT_MISMATCH"
    assert await object_store.list("jobs/forged/") == []
    # The worker checks the spec against its own capabilities: no GPU here.
    gpu_end = _state(events["gpu"])
    assert gpu_end.state == job_pb2.JOB_STATE_FAILED and "spec.formats" in gpu_end.error.message
