"""Batch inference jobs on the real job runtime (NATS, S3) with a real exported ONNX model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import zipfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import NotFound
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobContext, JobOutcome, JobWorker
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import (
    job_control_subject,
    job_request_subject,
)
from visionmesh.export.core.pipeline import ONNX_FILE
from visionmesh.inference.core.model import LoadedModel, Runtime, Tensor, TensorSpec, Timing
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.package import metadata_dict
from visionmesh.inference.worker.batch import BatchInferenceHandler, OpenModel, chunk_name

from tests.job_runtime import Events, job_bus, job_worker
from tests.job_runtime import running as _running
from tests.models import (
    NAMES,
    classifier_checkpoint,
    export_package,
    export_target,
    yolo_checkpoint,
)

TENANT = "t"
CHUNK = 4
CONF = 0.4
KIND = job_pb2.JOB_KIND_BATCH_INFERENCE

# Sorted as the job reads them; the corrupt file lands in the second chunk of four.
IMAGES = (
    "in/img-0.png",
    "in/img-1.jpg",
    "in/img-2.png",
    "in/img-3.jpg",
    "in/img-4.png",
    "in/img-5-broken.jpg",
    "in/img-5.jpg",
    "in/img-6.png",
    "in/img-7.JPG",
    "in/sub/img-8.png",
)
BROKEN = "in/img-5-broken.jpg"


def _picture(index: int) -> Image.Image:
    rng = np.random.default_rng(index)
    width, height = (64, 48, 80, 100, 50)[index % 5], (48, 64, 80, 60, 90)[index % 5]
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
        size = int(rng.integers(8, 16))
        fill = tuple(int(v) for v in rng.integers(0, 255, 3))
        draw.ellipse((x, y, x + size, y + size), fill=fill)
    return image


def _encode(image: Image.Image, name: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG" if name.lower().endswith(".png") else "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """The input files by tenant-relative key; the broken one is truncated JPEG bytes."""
    files = {key: _encode(_picture(i), key) for i, key in enumerate(IMAGES) if key != BROKEN}
    files[BROKEN] = files["in/img-1.jpg"][:200]
    return files


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A confident random-init YOLO11n exported at 64 px: (ONNX path, metadata dict)."""
    tmp = tmp_path_factory.mktemp("detector")
    checkpoint = yolo_checkpoint(tmp / "detect.pt", "yolo11n.yaml", confident=True)
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=8)
    package = export_package(
        tmp / "export", checkpoint, export_target(spec, "ultralytics", "detect", ()), images=2
    )
    return package.path(ONNX_FILE), metadata_dict(package.metadata)


@pytest.fixture(scope="module")
def segmenter_and_classifier(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, Any], Runtime]]:
    """A confident YOLO11n-seg and a resnet18 classifier, exported at 64 px and loaded."""
    tmp = tmp_path_factory.mktemp("others")
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=8)
    masks = export_package(
        tmp / "seg",
        yolo_checkpoint(tmp / "seg.pt", "yolo11n-seg.yaml", confident=True),
        export_target(spec, "ultralytics", "segment", ()),
        images=2,
    )
    labels = export_package(
        tmp / "cls",
        classifier_checkpoint(tmp / "cls.pt"),
        export_target(spec, "torchvision", "classify", NAMES),
        images=2,
    )
    return {
        name: (
            metadata_dict(package.metadata),
            OnnxRuntimeModel(package.path(ONNX_FILE), device="cpu", threads=1, max_batch_size=8),
        )
        for name, package in (("masks", masks), ("labels", labels))
    }


@pytest.fixture(scope="module")
def reference(
    detector: tuple[Path, dict[str, Any]],
    images: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, list[list[float]]]:
    """Ultralytics' own predict on the ONNX file: [x1, y1, x2, y2, score, class] per image."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("reference")
    model = YOLO(str(detector[0]), task="detect")
    boxes: dict[str, list[list[float]]] = {}
    for key, data in images.items():
        if key == BROKEN:
            continue
        path = folder / key.replace("/", "_")
        path.write_bytes(data)
        results: Any = model.predict(str(path), imgsz=64, conf=CONF, device="cpu", verbose=False)
        result = results[0]
        boxes[key] = [[float(v) for v in row] for row in result.boxes.data.tolist()]
    return boxes


class CountingRuntime:
    """The real ONNX Runtime model, counting the images it runs; with `block_at`, the first
    call once that many images have run waits until `release` is set (a worker stuck or
    about to die mid-job)."""

    def __init__(self, inner: Runtime, *, block_at: int | None = None) -> None:
        self._inner = inner
        self.images = 0
        self._block_at = block_at
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._inner.outputs

    @property
    def max_batch_size(self) -> int:
        return self._inner.max_batch_size

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]:
        if self._block_at is not None and self.images >= self._block_at:
            self.blocked.set()
            await self.release.wait()
        self.images += len(next(iter(inputs.values())))
        return await self._inner.infer(inputs, timing=timing)

    async def close(self) -> None:
        await self._inner.close()


def _deployments(
    detector: tuple[Path, dict[str, Any]],
    runtime: CountingRuntime,
    *,
    others: Mapping[str, tuple[dict[str, Any], Runtime]] | None = None,
) -> OpenModel:
    """The tenant's deployments: "shapes" (the detector) and `others` (what the service's
    deployments give a job)."""
    models = {
        name: LoadedModel(
            tenant_id=TENANT,
            name=name,
            version="1",
            metadata=metadata,
            runtime=served,
            platform="onnxruntime_onnx",
        )
        for name, (metadata, served) in {"shapes": (detector[1], runtime), **(others or {})}.items()
    }

    @contextlib.asynccontextmanager
    async def open_model(
        tenant_id: str, spec: inference_pb2.BatchInferenceSpec
    ) -> AsyncIterator[LoadedModel]:
        model = models.get(spec.deployment)
        if model is None or tenant_id != model.tenant_id:
            raise NotFound(resource_type="deployment", resource_id=spec.deployment)
        yield model

    return open_model


def _runtime(
    detector: tuple[Path, dict[str, Any]], *, block_at: int | None = None
) -> CountingRuntime:
    return CountingRuntime(
        OnnxRuntimeModel(detector[0], device="cpu", threads=1, max_batch_size=8),
        block_at=block_at,
    )


class RecordingHandler:
    """The batch handler, keeping each attempt's context so a test can see its cancel flag."""

    def __init__(self, inner: BatchInferenceHandler) -> None:
        self._inner = inner
        self.jobs: list[JobContext] = []

    async def run(self, job: JobContext) -> JobOutcome:
        self.jobs.append(job)
        return await self._inner.run(job)


async def _upload(store: ObjectStore, images: dict[str, bytes]) -> None:
    for key, data in images.items():
        await store.put_bytes(f"tenants/{TENANT}/{key}", data)
    # Not inputs: a non-image, a sibling prefix, another tenant's area.
    await store.put_bytes(f"tenants/{TENANT}/in/notes.txt", b"not an image")
    await store.put_bytes(f"tenants/{TENANT}/in-more/x.png", images["in/img-0.png"])
    await store.put_bytes("tenants/u/in/x.png", images["in/img-0.png"])


def _request(job_id: str, **spec: Any) -> events_pb2.JobRequest:
    spec.setdefault("deployment", "shapes")
    return events_pb2.JobRequest(
        job_id=job_id,
        tenant_id=TENANT,
        kind=KIND,
        batch_inference=events_pb2.BatchInferenceJobRequest(
            spec=inference_pb2.BatchInferenceSpec(
                batch_size=3, options=inference_pb2.PredictOptions(conf=CONF), **spec
            ),
            artifact_prefix=f"jobs/{job_id}/",
        ),
    )


def _mesh(tmp: Path) -> contextlib.AbstractAsyncContextManager[tuple[EventBus, Events]]:
    return job_bus(tmp, name="batch-handler-test")


def _worker(bus: EventBus, handler: Any) -> JobWorker:
    return job_worker(bus, handler, kind=KIND)


async def _publish(bus: EventBus, *requests: events_pb2.JobRequest) -> None:
    for request in requests:
        await bus.publish(job_request_subject(KIND), request, msg_id=request.job_id)


async def _lines(store: ObjectStore, key: str) -> list[inference_pb2.ImageResult]:
    from google.protobuf import json_format

    text = (await store.get_bytes(key)).decode()
    assert text.endswith("\n")
    return [json_format.Parse(line, inference_pb2.ImageResult()) for line in text.splitlines()]


async def _outputs(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    return {
        info.key[len(prefix) :]: await store.get_bytes(info.key)
        for info in await store.list(prefix)
    }


def _iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _assert_same_detections(result: inference_pb2.ImageResult, want: list[list[float]]) -> None:
    got = [
        [d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, float(d.class_id)]
        for d in result.detections
    ]
    assert len(got) == len(want), (result.key, len(got), len(want))
    unmatched = list(got)
    for row in want:
        match = next(
            (
                g
                for g in unmatched
                if g[5] == row[5] and abs(g[4] - row[4]) < 1e-3 and _iou(g, row) >= 0.99
            ),
            None,
        )
        assert match is not None, (result.key, row)
        unmatched.remove(match)


def _progress(events: list[events_pb2.JobEvent]) -> list[tuple[int, int]]:
    return [(e.progress.step, e.progress.total_steps) for e in events if e.HasField("progress")]


def _artifacts(events: list[events_pb2.JobEvent]) -> dict[str, str]:
    return {
        e.artifact.artifact.name: e.artifact.artifact.key for e in events if e.HasField("artifact")
    }


@pytest.mark.timeout(600)
async def test_a_folder_and_a_zip_run_to_json_lines_and_coco_with_one_line_per_image(
    object_store: ObjectStore,
    tmp_path: Path,
    detector: tuple[Path, dict[str, Any]],
    images: dict[str, bytes],
    reference: dict[str, list[list[float]]],
) -> None:
    await _upload(object_store, images)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("b/img-1.jpg", images["in/img-1.jpg"])
        zipped.writestr("a/", b"")
        zipped.writestr("a/img-0.png", images["in/img-0.png"])
        zipped.writestr("a/broken.png", b"\x89PNG not really")
        zipped.writestr("__MACOSX/a/._img-0.png", b"resource fork")
        zipped.writestr("readme.txt", b"no image")
    await object_store.put_bytes(f"tenants/{TENANT}/uploads/in.zip", archive.getvalue())

    runtime = _runtime(detector)
    handler = BatchInferenceHandler(
        store=object_store,
        open_model=_deployments(detector, runtime),
        work_root=tmp_path / "work",
        max_image_bytes=1 << 20,
        max_image_pixels=1 << 20,
        chunk_size=CHUNK,
    )
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, handler)):
        await _publish(
            bus,
            _request("folder", input_prefix="in/", output_prefix="out/"),
            _request("zipped", input_zip_key="uploads/in.zip"),
            _request("missing", deployment="nope", input_prefix="in/"),
            _request("outside", input_prefix="../u/in/"),
        )
        await events.ended("folder", "zipped", "missing", "outside")

    done = events.end("folder")
    assert done is not None and done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert done.metrics["images"] == 10 and done.metrics["errors"] == 1
    assert done.metrics["images_resumed"] == 0 and done.metrics["seconds"] > 0
    out = f"tenants/{TENANT}/out/"
    names = [chunk_name(i) for i in range(3)]
    assert sorted(await _outputs(object_store, out)) == ["coco.json", *names]
    results = [r for name in names for r in await _lines(object_store, out + name)]
    assert [len(await _lines(object_store, out + name)) for name in names] == [4, 4, 2]
    assert [r.key for r in results] == list(IMAGES)
    for index, result in enumerate(results):
        if result.key == BROKEN:
            assert result.error.reason == "UNDECODABLE"
            assert result.error.field == f"images[{index}].key"
            assert not result.detections and not result.width
            continue
        assert not result.HasField("error")
        picture = Image.open(io.BytesIO(images[result.key]))
        assert (result.width, result.height) == picture.size
        _assert_same_detections(result, reference[result.key])
    # The confident model finds things: the comparison above compared real boxes.
    assert sum(len(r.detections) for r in results) > 10
    assert done.metrics["detections"] == sum(len(r.detections) for r in results)
    # Progress counts images: once at the start, then after each chunk.
    assert _progress(events.by_job["folder"]) == [(0, 10), (4, 10), (8, 10), (10, 10)]
    assert _artifacts(events.by_job["folder"]) == {
        name: out + name for name in [*names, "coco.json"]
    }

    coco = json.loads(await object_store.get_bytes(out + "coco.json"))
    class_names = detector[1]["class_names"]
    assert coco["categories"] == [
        {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(class_names)
    ]
    assert [image["file_name"] for image in coco["images"]] == [
        key for key in IMAGES if key != BROKEN
    ]
    by_id = {image["id"]: image for image in coco["images"]}
    annotations = iter(coco["annotations"])
    for index, result in enumerate(results, start=1):
        if result.key == BROKEN:
            assert index not in by_id
            continue
        assert (by_id[index]["width"], by_id[index]["height"]) == (result.width, result.height)
        for detection in result.detections:
            annotation = next(annotations)
            assert annotation["image_id"] == index
            assert annotation["category_id"] == detection.class_id + 1
            box = detection.box
            want = [box.x1, box.y1, box.x2 - box.x1, box.y2 - box.y1]
            assert annotation["bbox"] == pytest.approx(want, abs=1e-3)
            assert annotation["score"] == pytest.approx(detection.score, abs=1e-5)
    assert next(annotations, None) is None

    zipped_end = events.end("zipped")
    assert zipped_end is not None and zipped_end.state == job_pb2.JOB_STATE_SUCCEEDED, zipped_end
    default_out = f"tenants/{TENANT}/batch-inference/zipped/"
    (zip_results,) = [await _lines(object_store, default_out + chunk_name(0))]
    assert [r.key for r in zip_results] == [
        "uploads/in.zip!a/broken.png",
        "uploads/in.zip!a/img-0.png",
        "uploads/in.zip!b/img-1.jpg",
    ]
    assert zip_results[0].error.reason == "UNDECODABLE"
    by_key = {r.key: r for r in results}
    for member, source in ((1, "in/img-0.png"), (2, "in/img-1.jpg")):
        assert list(zip_results[member].detections) == list(by_key[source].detections)
    assert "coco.json" in await _outputs(object_store, default_out)

    missing = events.end("missing")
    assert missing is not None and missing.state == job_pb2.JOB_STATE_FAILED
    assert missing.error.reason == "NOT_FOUND" and "spec.deployment 'nope'" in missing.error.message
    outside = events.end("outside")
    assert outside is not None and outside.state == job_pb2.JOB_STATE_FAILED
    assert outside.error.reason == "INVALID_SPEC" and "spec.input_prefix" in outside.error.message
    assert await object_store.list(f"tenants/{TENANT}/batch-inference/missing/") == []


@pytest.mark.timeout(300)
async def test_a_cancel_midway_keeps_the_chunks_written_and_stops_before_the_next(
    object_store: ObjectStore,
    tmp_path: Path,
    detector: tuple[Path, dict[str, Any]],
    images: dict[str, bytes],
) -> None:
    await _upload(object_store, images)
    # Chunk 0 runs; the first model call of chunk 1 waits until the cancel has arrived.
    runtime = _runtime(detector, block_at=CHUNK)
    handler = RecordingHandler(
        BatchInferenceHandler(
            store=object_store,
            open_model=_deployments(detector, runtime),
            work_root=tmp_path / "work",
            max_image_bytes=1 << 20,
            max_image_pixels=1 << 20,
            chunk_size=CHUNK,
        )
    )
    out = f"tenants/{TENANT}/out/"
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, handler)):
        await _publish(bus, _request("cancelled", input_prefix="in/", output_prefix="out/"))
        async with asyncio.timeout(120):
            await runtime.blocked.wait()
        assert await object_store.exists(out + chunk_name(0))
        await bus.publish(
            job_control_subject("cancelled"),
            events_pb2.JobControl(job_id="cancelled", action=events_pb2.JOB_CONTROL_ACTION_CANCEL),
        )
        # The job's cancel flag is a threading.Event (handlers poll it from threads).
        assert await asyncio.to_thread(handler.jobs[0].cancel.wait, 30)
        runtime.release.set()
        await events.ended("cancelled")

    end = events.end("cancelled")
    assert end is not None and end.state == job_pb2.JOB_STATE_CANCELLED, end
    # Chunk 1 was cut short: nothing of it is written, and no COCO file for a partial job.
    assert sorted(await _outputs(object_store, out)) == [chunk_name(0)]
    assert _artifacts(events.by_job["cancelled"]) == {chunk_name(0): out + chunk_name(0)}
    assert _progress(events.by_job["cancelled"]) == [(0, 10), (4, 10)]


@pytest.mark.timeout(600)
async def test_a_job_redelivered_after_a_crash_resumes_without_predicting_a_chunk_twice(
    object_store: ObjectStore,
    tmp_path: Path,
    detector: tuple[Path, dict[str, Any]],
    images: dict[str, bytes],
) -> None:
    await _upload(object_store, images)

    def handler(runtime: CountingRuntime) -> BatchInferenceHandler:
        return BatchInferenceHandler(
            store=object_store,
            open_model=_deployments(detector, runtime),
            work_root=tmp_path / "work",
            max_image_bytes=1 << 20,
            max_image_pixels=1 << 20,
            chunk_size=CHUNK,
        )

    crashing = _runtime(detector, block_at=CHUNK)
    resumed = f"tenants/{TENANT}/resumed/"
    async with _mesh(tmp_path) as (bus, events):
        first = _worker(bus, handler(crashing))
        first_task = asyncio.create_task(first.run())
        await _publish(bus, _request("resumed", input_prefix="in/", output_prefix="resumed/"))
        async with asyncio.timeout(120):
            await crashing.blocked.wait()
        assert sorted(await _outputs(object_store, resumed)) == [chunk_name(0)]
        # The worker dies in chunk 1: no end state, no ack; JetStream redelivers after
        # ack_wait and the next attempt is counted as after a crash.
        first_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first_task

        runtime = _runtime(detector)
        async with _running(_worker(bus, handler(runtime))):
            await _publish(bus, _request("whole", input_prefix="in/", output_prefix="whole/"))
            await events.ended("resumed", "whole")

    end = events.end("resumed")
    assert end is not None and end.state == job_pb2.JOB_STATE_SUCCEEDED, end
    assert {e.attempt for e in events.by_job["resumed"]} == {1, 2}
    assert end.metrics["images_resumed"] == CHUNK and end.metrics["images"] == 10
    # The second worker ran the 9 good images of the uninterrupted job and only the 5
    # good images after chunk 0 (one of chunk 1's six is the corrupt file) of the resumed one.
    assert runtime.images == 9 + 5
    whole = await _outputs(object_store, f"tenants/{TENANT}/whole/")
    assert await _outputs(object_store, resumed) == whole
    assert sorted(whole) == ["coco.json", chunk_name(0), chunk_name(1), chunk_name(2)]
    attempt_two = [e for e in events.by_job["resumed"] if e.attempt == 2]
    assert _progress(attempt_two) == [(0, 10), (4, 10), (8, 10), (10, 10)]
    assert sorted(_artifacts(attempt_two)) == sorted(whole)


@pytest.mark.timeout(600)
async def test_segment_masks_reach_coco_as_polygons_and_classifiers_write_json_lines_only(
    object_store: ObjectStore,
    tmp_path: Path,
    detector: tuple[Path, dict[str, Any]],
    images: dict[str, bytes],
    segmenter_and_classifier: dict[str, tuple[dict[str, Any], Runtime]],
) -> None:
    await _upload(object_store, images)
    handler = BatchInferenceHandler(
        store=object_store,
        open_model=_deployments(detector, _runtime(detector), others=segmenter_and_classifier),
        work_root=tmp_path / "work",
        max_image_bytes=1 << 20,
        max_image_pixels=1 << 20,
        chunk_size=CHUNK,
    )
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, handler)):
        await _publish(
            bus,
            _request("masks", deployment="masks", input_prefix="in/", output_prefix="masks/"),
            _request("labels", deployment="labels", input_prefix="in/", output_prefix="labels/"),
        )
        await events.ended("masks", "labels")

    for job_id in ("masks", "labels"):
        end = events.end(job_id)
        assert end is not None and end.state == job_pb2.JOB_STATE_SUCCEEDED, (job_id, end)

    masks = f"tenants/{TENANT}/masks/"
    results = [r for i in range(3) for r in await _lines(object_store, masks + chunk_name(i))]
    coco = json.loads(await object_store.get_bytes(masks + "coco.json"))
    annotations = iter(coco["annotations"])
    outlined = 0
    for result in results:
        for detection in result.detections:
            annotation = next(annotations)
            polygon = [v for point in detection.polygon for v in (point.x, point.y)]
            if len(detection.polygon) >= 3:
                outlined += 1
                (segmentation,) = annotation["segmentation"]
                assert segmentation == pytest.approx(polygon, abs=1e-3)
                # Every outline point lies in its image.
                assert all(0 <= x <= result.width for x in segmentation[0::2])
                assert all(0 <= y <= result.height for y in segmentation[1::2])
            else:
                assert annotation["segmentation"] == []
    assert next(annotations, None) is None
    assert outlined > 0

    labels = f"tenants/{TENANT}/labels/"
    # COCO has no form for image labels: a classifier's job writes the JSON Lines only.
    assert sorted(await _outputs(object_store, labels)) == [chunk_name(i) for i in range(3)]
    lines = [r for i in range(3) for r in await _lines(object_store, labels + chunk_name(i))]
    assert [r.key for r in lines] == list(IMAGES)
    for result in lines:
        if result.key == BROKEN:
            assert result.error.reason == "UNDECODABLE"
            continue
        assert [c.class_name for c in result.classifications] != []
        assert len(result.classifications) == len(NAMES) and not result.detections
        scores = [c.score for c in result.classifications]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-4)
    assert _artifacts(events.by_job["labels"]) == {
        chunk_name(i): labels + chunk_name(i) for i in range(3)
    }
