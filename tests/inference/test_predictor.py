"""Predictor on exported models: per-image errors, limits, options, top-k, batching."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.metadata import metadata_dict
from visionmesh.inference.core.batcher import DynamicBatcher
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.predictor import ImageInput, Predictor

from tests.models import (
    NAMES,
    classifier_checkpoint,
    export_package,
    export_target,
    yolo_checkpoint,
)

pytestmark = pytest.mark.timeout(240)

Options = inference_pb2.PredictOptions


def _png(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", image[..., ::-1])[1].tobytes())


@pytest.fixture(scope="module")
def encoded() -> list[bytes]:
    return [_png(image) for image in synthetic_images(5, seed=3).images]


@pytest.fixture(scope="module")
def detect_package(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    checkpoint = yolo_checkpoint(root / "det.pt", "yolo11n.yaml", confident=True)
    spec = export_pb2.ExportSpec(
        dynamic_batch=True, max_batch_size=8, nms_settings=export_pb2.NmsSettings(conf=0.4)
    )
    return export_package(
        root / "x", checkpoint, export_target(spec, "ultralytics", "detect", ()), images=2
    )


@pytest.fixture(scope="module")
def classify_package(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("classify")
    torch.manual_seed(0)
    checkpoint = classifier_checkpoint(root / "tv.pt")
    spec = export_pb2.ExportSpec(dynamic_batch=True, dynamic_size=True)
    return export_package(
        root / "x", checkpoint, export_target(spec, "torchvision", "classify", NAMES), images=2
    )


def _predictor(
    package: Any,
    *,
    max_batch_size: int = 8,
    max_image_bytes: int = 5_000_000,
    max_image_pixels: int = 1_000_000,
) -> Predictor:
    model = OnnxRuntimeModel(package.path("model.onnx"), max_batch_size=max_batch_size)
    return Predictor(
        metadata_dict(package.metadata),
        model,
        max_image_bytes=max_image_bytes,
        max_image_pixels=max_image_pixels,
    )


def _detections(result: inference_pb2.ImageResult) -> list[list[float]]:
    return [
        [d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, d.class_id] for d in result.detections
    ]


async def test_bad_images_get_their_own_errors_and_the_others_are_answered(
    detect_package: Any, encoded: list[bytes]
) -> None:
    predictor = _predictor(detect_package)
    fetch_error = inference_pb2.ImageError(
        field="images[3].key", reason="NOT_FOUND", message="no such object"
    )
    images = [
        ImageInput(field="images[0]", data=encoded[0]),
        ImageInput(field="images[1]", data=b"\x89PNG not really"),
        ImageInput(field="images[2]", data=encoded[1], key="photos/b.png"),
        ImageInput(field="images[3]", key="photos/missing.png", error=fetch_error),
        ImageInput(field="images[4]", data=b""),
    ]
    response = await predictor.predict(images, Options())
    assert response.task == "detect" and len(response.results) == 5
    good, undecodable, keyed, missing, empty = response.results
    for result, image in ((good, 0), (keyed, 1)):
        height, width = synthetic_images(5, seed=3).images[image].shape[:2]
        assert (result.width, result.height) == (width, height)
        assert not result.HasField("error") and len(result.detections) > 0
        assert all(d.score > 0.4 and d.box.x2 <= width for d in result.detections)
    assert keyed.key == "photos/b.png" and good.key == ""
    assert (undecodable.error.field, undecodable.error.reason) == ("images[1].data", "UNDECODABLE")
    assert not undecodable.detections and undecodable.width == 0
    assert missing.error == fetch_error and missing.key == "photos/missing.png"
    assert (empty.error.field, empty.error.reason) == ("images[4].data", "UNDECODABLE")
    timing = response.timing
    assert timing.preprocess_ms > 0 and timing.inference_ms > 0 and timing.postprocess_ms > 0
    assert timing.queue_ms >= 0


async def test_when_every_image_is_bad_the_call_fails_naming_each(detect_package: Any) -> None:
    predictor = _predictor(detect_package, max_image_bytes=100)
    images = [
        ImageInput(field="images[0]", data=b"garbage"),
        ImageInput(field="images[1]", data=b"x" * 101),
    ]
    with pytest.raises(InvalidArgument) as caught:
        await predictor.predict(images, Options())
    violations = [(v.field, v.reason) for v in caught.value.field_violations]
    assert violations == [("images[0].data", "UNDECODABLE"), ("images[1].data", "TOO_LARGE")]


async def test_size_limits(detect_package: Any, encoded: list[bytes]) -> None:
    big = np.zeros((400, 300, 3), np.uint8)
    small = np.zeros((100, 100, 3), np.uint8)
    predictor = _predictor(detect_package, max_image_pixels=300 * 300)
    response = await predictor.predict(
        [
            ImageInput(field="images[0]", data=_png(big)),
            ImageInput(field="images[1]", data=_png(small)),
            # 4 M pixels in a few kilobytes: refused from the header.
            ImageInput(field="images[2]", data=_png(np.zeros((2000, 2000, 3), np.uint8))),
        ],
        Options(),
    )
    too_big, fine, tall = response.results
    assert too_big.error.reason == "TOO_LARGE" and "300x400 pixels" in too_big.error.message
    assert not fine.HasField("error") and fine.width == 100
    assert tall.error.reason == "TOO_LARGE"

    by_bytes = _predictor(detect_package, max_image_bytes=len(encoded[0]) - 1)
    with pytest.raises(InvalidArgument, match="none of the 1 images"):
        await by_bytes.predict([ImageInput(field="images[0]", data=encoded[0])], Options())


async def test_options_are_checked_and_applied(detect_package: Any, encoded: list[bytes]) -> None:
    predictor = _predictor(detect_package)
    images = [ImageInput(field=f"images[{i}]", data=data) for i, data in enumerate(encoded)]
    for options, field in (
        (Options(classes=[0, 80]), "options.classes"),
        (Options(imgsz=64), "options.imgsz"),
        (Options(conf=1.5), "options.conf"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            await predictor.predict(images, options)
        assert [v.field for v in caught.value.field_violations] == [field]

    everything = await predictor.predict(images, Options(conf=0.3))
    default = await predictor.predict(images, Options())
    counts = [len(r.detections) for r in everything.results]
    assert sum(counts) >= sum(len(r.detections) for r in default.results) > 0
    scores = [d.score for r in everything.results for d in r.detections]
    middle = (min(scores) + max(scores)) / 2
    strict = await predictor.predict(images, Options(conf=middle))
    assert 0 < sum(len(r.detections) for r in strict.results) < sum(counts)
    assert all(d.score > middle for r in strict.results for d in r.detections)
    assert all(d.score > 0.3 for r in everything.results for d in r.detections)
    kept = {d.class_id for r in everything.results for d in r.detections}
    one_class = sorted(kept)[0]
    only = await predictor.predict(images, Options(conf=0.3, classes=[one_class]))
    assert {d.class_id for r in only.results for d in r.detections} == {one_class}
    capped = await predictor.predict(images, Options(conf=0.3, max_det=1))
    assert [len(r.detections) for r in capped.results] == [min(c, 1) for c in counts]
    agnostic = await predictor.predict(images, Options(conf=0.3, agnostic=True))
    assert sum(len(r.detections) for r in agnostic.results) <= sum(counts)
    none = await predictor.predict(images, Options(conf=1.0))
    assert all(not r.detections for r in none.results)


async def test_classifier_top_k_and_dynamic_size(
    classify_package: Any, encoded: list[bytes]
) -> None:
    predictor = _predictor(classify_package)
    images = [ImageInput(field=f"images[{i}]", data=data) for i, data in enumerate(encoded)]
    response = await predictor.predict(images, Options())
    assert response.task == "classify"
    for result in response.results:
        # The default top 5 is capped at the model's 3 classes.
        assert [c.class_name for c in result.classifications] == [
            NAMES[c.class_id] for c in result.classifications
        ]
        assert len(result.classifications) == 3
        scores = [c.score for c in result.classifications]
        assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1, abs=1e-5)
    top1 = await predictor.predict(images, Options(top_k=1))
    assert [r.classifications[0].class_id for r in top1.results] == [
        r.classifications[0].class_id for r in response.results
    ]
    assert all(len(r.classifications) == 1 for r in top1.results)

    resized = await predictor.predict(images, Options(imgsz=96))
    assert [c.score for c in resized.results[0].classifications] != pytest.approx(
        [c.score for c in response.results[0].classifications], abs=1e-7
    )
    with pytest.raises(InvalidArgument, match="multiple of 32"):
        await predictor.predict(images, Options(imgsz=100))
    with pytest.raises(InvalidArgument) as caught:
        await predictor.predict(images, Options(classes=[3]))
    assert caught.value.field_violations[0].field == "options.classes"


async def test_a_batch_equals_its_images_one_by_one(
    detect_package: Any, encoded: list[bytes]
) -> None:
    """Through the dynamic batcher in chunks of 2, five images answer as they do alone."""
    model = OnnxRuntimeModel(detect_package.path("model.onnx"), max_batch_size=8)
    batcher = DynamicBatcher(model, max_batch_size=2, queue_delay_s=0.01)
    predictor = Predictor(
        metadata_dict(detect_package.metadata),
        batcher,
        max_image_bytes=5_000_000,
        max_image_pixels=1_000_000,
    )
    images = [ImageInput(field=f"images[{i}]", data=data) for i, data in enumerate(encoded)]
    together = await predictor.predict(images, Options())
    assert batcher.stats.execution_count == 3 and batcher.stats.inference_count == 5
    for image, result in zip(images, together.results, strict=True):
        (alone,) = (await predictor.predict([image], Options())).results
        assert len(_detections(alone)) == len(_detections(result)) > 0
        np.testing.assert_allclose(_detections(alone), _detections(result), atol=1e-3)
    assert together.timing.queue_ms > 0
    await batcher.close()
