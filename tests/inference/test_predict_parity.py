"""Serving parity: Predictor on the exported ONNX model equals Ultralytics' predict on the .pt.

The acceptance of the inference issue: on the same model and images, each box matches one of
Ultralytics' with IoU >= 0.99, the same class and |score difference| <= 1e-3, and
classifiers agree on the top-1. The reference predictions come from
scripts/ultralytics_predict_reference.py, which imports nothing from visionmesh. Detectors
are random-init with spread class biases (tests/models.py) so that they find boxes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.classifiers import build_torchvision_classifier
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.metadata import metadata_dict
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.predictor import ImageInput, Predictor

from tests.models import (
    IMGSZ,
    NAMES,
    classifier_checkpoint,
    export_package,
    export_target,
    yolo_checkpoint,
)

pytestmark = pytest.mark.timeout(300)

SCRIPTS = Path(__file__).parents[2] / "scripts"
MAX_PIXELS = 10_000_000


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images of different sizes and aspect ratios, PNG and JPEG (decoded alike by both)."""
    root = tmp_path_factory.mktemp("images")
    for i, image in enumerate(synthetic_images(5, seed=11).images):
        suffix = ".jpg" if i % 2 else ".png"
        cv2.imwrite(str(root / f"{i:02d}{suffix}"), image[..., ::-1])
    return root


def _inputs(image_dir: Path) -> tuple[list[str], list[ImageInput]]:
    paths = sorted(image_dir.iterdir())
    return [p.name for p in paths], [
        ImageInput(field=f"images[{i}]", data=p.read_bytes()) for i, p in enumerate(paths)
    ]


def _reference(checkpoint: Path, image_dir: Path, conf: float) -> dict[str, Any]:
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "ultralytics_predict_reference.py"),
            str(checkpoint),
            str(image_dir),
            str(IMGSZ),
            str(conf),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reference: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    assert reference["arguments"]["conf"] == conf and reference["arguments"]["rect"] is False
    return reference


async def _serve(package: Any, image_dir: Path, options: inference_pb2.PredictOptions) -> Any:
    model = await OnnxRuntimeModel.load(package.path("model.onnx"), device="cpu")
    predictor = Predictor(
        metadata_dict(package.metadata),
        model,
        max_image_bytes=10_000_000,
        max_image_pixels=MAX_PIXELS,
    )
    names, inputs = _inputs(image_dir)
    response = await predictor.predict(inputs, options)
    await model.close()
    return names, response


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _match(
    served: inference_pb2.ImageResult, want: list[list[float]], conf: float
) -> list[tuple[int, int]]:
    """Pairs (served index, reference index), one to one; every box must find its partner.

    A box whose score lies within 1e-3 of the threshold may be on either side of it in
    one run and not the other: only such a box may go unmatched.
    """
    got = [[d.box.x1, d.box.y1, d.box.x2, d.box.y2, d.score, d.class_id] for d in served.detections]
    pairs: list[tuple[int, int]] = []
    taken: set[int] = set()
    for i, row in enumerate(got):
        candidates = [
            (_iou(np.array(row[:4]), np.array(ref[:4])), j)
            for j, ref in enumerate(want)
            if j not in taken and int(ref[5]) == int(row[5])
        ]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= 0.99 and abs(want[best[1]][4] - row[4]) <= 1e-3:
            pairs.append((i, best[1]))
            taken.add(best[1])
        else:
            assert row[4] - conf <= 1e-3, f"served box {row} has no reference partner in {want}"
    for j, ref in enumerate(want):
        if j not in taken:
            assert ref[4] - conf <= 1e-3, f"reference box {ref} was not served: {got}"
    return pairs


async def test_a_detector_serves_what_ultralytics_predicts(tmp_path: Path, image_dir: Path) -> None:
    conf = 0.4
    torch.manual_seed(0)
    checkpoint = yolo_checkpoint(tmp_path / "det.pt", "yolo11n.yaml", confident=True)
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=4)
    package = export_package(
        tmp_path / "x", checkpoint, export_target(spec, "ultralytics", "detect", ()), images=2
    )
    names, response = await _serve(package, image_dir, inference_pb2.PredictOptions(conf=conf))
    reference = _reference(checkpoint, image_dir, conf)
    assert response.task == "detect" == reference["task"]
    matched = 0
    for name, result in zip(names, response.results, strict=True):
        want = reference["images"][name]["boxes"]
        assert not result.HasField("error")
        matched += len(_match(result, want, conf))
        assert all(d.class_name for d in result.detections)
    assert matched >= 5, f"only {matched} boxes compared"


async def test_a_segment_model_serves_ultralytics_boxes_and_outlines(
    tmp_path: Path, image_dir: Path
) -> None:
    conf = 0.3
    torch.manual_seed(0)  # a random-init model: the same one every run
    checkpoint = yolo_checkpoint(tmp_path / "seg.pt", "yolo11n-seg.yaml", confident=True)
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=4)
    package = export_package(
        tmp_path / "x", checkpoint, export_target(spec, "ultralytics", "segment", ()), images=2
    )
    names, response = await _serve(package, image_dir, inference_pb2.PredictOptions(conf=conf))
    reference = _reference(checkpoint, image_dir, conf)
    outlines = 0
    for name, result in zip(names, response.results, strict=True):
        want = reference["images"][name]
        for i, j in _match(result, want["boxes"], conf):
            got = [(p.x, p.y) for p in result.detections[i].polygon]
            expected = want["polygons"][j]
            iou = _polygon_iou(got, expected, result.width, result.height)
            assert iou >= 0.9, f"{name} box {i}: mask IoU {iou:.3f}"
            outlines += 1
    assert outlines >= 5, f"only {outlines} outlines compared"


def _polygon_iou(a: list[Any], b: list[Any], width: int, height: int) -> float:
    def fill(points: list[Any]) -> np.ndarray:
        canvas = np.zeros((height, width), dtype=np.uint8)
        if len(points) >= 3:
            cv2.fillPoly(canvas, [np.round(np.asarray(points)).astype(np.int32)], 1)
        return canvas.astype(bool)

    first, second = fill(a), fill(b)
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


async def test_an_ultralytics_classifier_serves_the_same_top1(
    tmp_path: Path, image_dir: Path
) -> None:
    torch.manual_seed(0)
    checkpoint = yolo_checkpoint(tmp_path / "cls.pt", "yolo11n-cls.yaml")
    package = export_package(
        tmp_path / "x",
        checkpoint,
        export_target(export_pb2.ExportSpec(), "ultralytics", "classify", NAMES),
        images=2,
    )
    names, response = await _serve(package, image_dir, inference_pb2.PredictOptions(top_k=1))
    reference = _reference(checkpoint, image_dir, 0.25)
    assert response.task == "classify" == reference["task"]
    for name, result in zip(names, response.results, strict=True):
        want = reference["images"][name]
        (top,) = result.classifications
        assert top.class_id == want["top1"] and top.class_name == NAMES[want["top1"]]
        assert abs(top.score - want["top1conf"]) <= 1e-3


async def test_a_torchvision_classifier_serves_what_torch_computes(
    tmp_path: Path, image_dir: Path
) -> None:
    """The reference: torchvision's own transforms on a PIL image and a plain forward pass."""
    from PIL import Image
    from torchvision.transforms import v2

    torch.manual_seed(0)
    checkpoint = classifier_checkpoint(tmp_path / "tv.pt")
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=2)
    package = export_package(
        tmp_path / "x", checkpoint, export_target(spec, "torchvision", "classify", NAMES), images=2
    )
    names, response = await _serve(package, image_dir, inference_pb2.PredictOptions())

    saved = torch.load(checkpoint, weights_only=True)
    model = build_torchvision_classifier("resnet18", num_classes=len(NAMES), imgsz=IMGSZ)
    model.load_state_dict(saved["model_state"])
    model.eval()
    transform = v2.Compose(
        [
            v2.Resize((IMGSZ, IMGSZ), antialias=True),  # on the PIL image, as in training
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    for name, result in zip(names, response.results, strict=True):
        with Image.open(image_dir / name) as opened:
            x = transform(opened.convert("RGB"))[None]
        with torch.no_grad():
            probabilities = torch.softmax(model(x), dim=1)[0].numpy()
        order = np.argsort(-probabilities, kind="stable")
        assert [c.class_id for c in result.classifications] == order.tolist()  # all 3 of top 5
        assert [c.score for c in result.classifications] == pytest.approx(
            probabilities[order].tolist(), abs=1e-3
        )
