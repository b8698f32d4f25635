"""visionmesh.common.vision against the code it reproduces: Ultralytics and torchvision.

Preprocessing must give the tensors those frameworks give, and detection post-processing
the boxes Ultralytics' predictor returns, so these tests run the real references.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch
from google.protobuf import json_format
from PIL import Image as PILImage
from PIL import ImageOps
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.vision import (
    PROCESSING_SOURCE,
    Transform,
    classifications,
    decode_image,
    detections,
    preprocess,
    segment_detections,
)

# Ultralytics reads its settings dir and may probe the network when first imported (lazily,
# inside the tests): point both somewhere harmless first.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "visionmesh-tests" / "ultralytics")
)

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Wide, tall, upscaled, odd, already the target size, and one row of pixels.
SHAPES = [(90, 160), (200, 70), (20, 30), (101, 57), (128, 128), (1, 300), (333, 517)]


def _meta(**fields: Any) -> dict[str, Any]:
    """ModelMetadata in the JSON form the export writes, from proto fields plus extras."""
    extra = {k: fields.pop(k) for k in ("nms_in_graph",) if k in fields}
    message = export_pb2.ModelMetadata(**fields)
    meta = json_format.MessageToDict(message, preserving_proto_field_name=True)
    meta.update(extra)
    return meta


def _detect_meta(height: int = 128, width: int = 128, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "task": "detect",
        "input": export_pb2.TensorInfo(name="images", datatype="FP32", shape=[1, 3, height, width]),
        "layout": "NCHW",
        "input_height": height,
        "input_width": width,
        "channel_order": "rgb",
        "resize": "letterbox",
        "pad_value": 114,
        "scale": 1 / 255,
        "postprocess": "yolo_detect",
        "nms": export_pb2.NmsSettings(iou=0.7, conf=0.25, max_det=300),
    }
    values.update(fields)
    return _meta(**values)


def _classify_meta(size: int, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "task": "classify",
        "input": export_pb2.TensorInfo(name="images", datatype="FP32", shape=[1, 3, size, size]),
        "input_height": size,
        "input_width": size,
        "channel_order": "rgb",
        "resize": "center_crop",
        "scale": 1 / 255,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
        "postprocess": "probabilities",
    }
    values.update(fields)
    return _meta(**values)


def _noise(shape: tuple[int, int], seed: int) -> Image:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def _scene(shape: tuple[int, int], seed: int) -> Image:
    """Filled rectangles on a flat background: something a detector's features respond to."""
    rng = np.random.default_rng(seed)
    h, w = shape
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(6):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = (int(rng.integers(5, max(6, w // 2))), int(rng.integers(5, max(6, h // 2))))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(image, (x, y), (x + size[0], y + size[1]), color, -1)
    return image


# --- preprocessing --------------------------------------------------------------------------


def _ultralytics_letterbox_input(images: Sequence[Image], height: int, width: int) -> Floats:
    """What Ultralytics' predictor feeds a fixed-size exported model, from RGB images."""
    from ultralytics.data.augment import LetterBox

    letterbox: Any = LetterBox(
        new_shape=(height, width), auto=False, scale_fill=False, scaleup=True, center=True
    )
    # Its loader reads BGR; BasePredictor.preprocess then stacks, goes BCHW, flips to RGB and
    # divides by 255.
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
    batch = torch.from_numpy(np.stack([letterbox(image=im) for im in bgr]))
    result: Floats = batch.permute(0, 3, 1, 2).contiguous().flip(1).float().div_(255).numpy()
    return result


@pytest.mark.parametrize("target", [(128, 128), (96, 160)])
def test_letterbox_equals_ultralytics(target: tuple[int, int]) -> None:
    height, width = target
    images = [_noise(shape, seed) for seed, shape in enumerate(SHAPES)]
    meta = _detect_meta(height, width)
    for image in images:
        ours, transforms = preprocess([image], meta)
        assert ours.dtype == np.float32
        assert ours.shape == (1, 3, height, width)
        np.testing.assert_array_equal(ours, _ultralytics_letterbox_input([image], height, width))
        h0, w0 = image.shape[:2]
        assert (transforms[0].orig_height, transforms[0].orig_width) == (h0, w0)


def test_letterbox_pad_value_and_bgr_channel_order() -> None:
    image = _noise((50, 128), seed=3)
    rgb, _ = preprocess([image], _detect_meta(pad_value=0))
    bgr, _ = preprocess([image], _detect_meta(pad_value=0, channel_order="bgr"))
    np.testing.assert_array_equal(bgr, rgb[:, ::-1])
    # 50 rows letterboxed to 128: 39 rows of padding above, 39 below.
    assert np.all(rgb[0, :, :39] == 0)
    assert np.all(rgb[0, :, -39:] == 0)
    grey, _ = preprocess([image], _detect_meta(pad_value=114))
    assert np.all(grey[0, :, :39] == np.float32(114) / np.float32(255))


@pytest.mark.parametrize("size", [64, (48, 80)])
def test_center_crop_equals_ultralytics_classify_transforms(size: int | tuple[int, int]) -> None:
    from ultralytics.data.augment import classify_transforms

    height, width = (size, size) if isinstance(size, int) else size
    reference = classify_transforms(size)
    meta = _classify_meta(height, input_width=width)
    for seed, shape in enumerate(SHAPES):
        image = _noise(shape, seed)
        ours, _ = preprocess([image], meta)
        expected = reference(PILImage.fromarray(image)).unsqueeze(0).numpy()
        assert ours.shape == expected.shape == (1, 3, height, width)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)


def test_resize_equals_torchvision_classifier_input() -> None:
    from torchvision import transforms

    # The torchvision classifier trainer's input: its _decode_transform (Resize, PILToTensor)
    # and _to_input (/255, ImageNet mean and std).
    decode = transforms.Compose(
        [transforms.Resize((64, 64), antialias=True), transforms.PILToTensor()]
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    meta = _classify_meta(
        64, resize="resize", mean=IMAGENET_MEAN, std=IMAGENET_STD, postprocess="logits"
    )
    images = [_noise(shape, seed) for seed, shape in enumerate(SHAPES)]
    ours, transforms_ = preprocess(images, meta)
    uint8 = torch.stack([decode(PILImage.fromarray(image)) for image in images])
    expected = ((uint8.float() / 255.0 - mean) / std).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert [(t.resized_height, t.resized_width, t.pad_x, t.pad_y) for t in transforms_] == [
        (64, 64, 0, 0)
    ] * len(images)


def test_preprocess_rejects_bad_input() -> None:
    meta = _detect_meta()
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        preprocess([np.zeros((10, 10), dtype=np.uint8)], meta)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        preprocess([np.zeros((10, 10, 3), dtype=np.float32)], meta)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="resize"):
        preprocess([_noise((10, 10), 0)], {**meta, "resize": "squash"})
    with pytest.raises(ValueError, match="scale"):
        preprocess([_noise((10, 10), 0)], {k: v for k, v in meta.items() if k != "scale"})
    batch, transforms = preprocess([], meta)
    assert batch.shape == (0, 3, 128, 128)
    assert transforms == []


def test_transform_round_trips_through_a_float32_tensor() -> None:
    _, transforms = preprocess([_noise((333, 517), 0), _noise((20, 30), 1)], _detect_meta())
    tensor = np.asarray([t.to_list() for t in transforms], dtype=np.float32)
    assert tensor.shape == (2, Transform.SIZE)
    assert [Transform.from_list(row) for row in tensor] == transforms
    with pytest.raises(ValueError, match="6 values"):
        Transform.from_list([1.0, 2.0])


# --- detection post-processing --------------------------------------------------------------


def _ultralytics_detections(
    pred: Floats,
    input_shape: tuple[int, int],
    orig_shapes: Sequence[tuple[int, int]],
    *,
    nc: int = 0,
    end2end: bool = False,
    **options: Any,
) -> list[Floats]:
    """DetectionPredictor.postprocess: non_max_suppression, then scale_boxes per image."""
    from ultralytics.utils import nms, ops

    found = nms.non_max_suppression(
        torch.from_numpy(pred.copy()), multi_label=False, nc=nc, end2end=end2end, **options
    )
    results = []
    for rows, shape in zip(found, orig_shapes, strict=True):
        rows[:, :4] = ops.scale_boxes(input_shape, rows[:, :4], shape)
        results.append(rows.numpy())
    return results


def _random_raw_output(batch: int, channels: int, anchors: int, seed: int) -> Floats:
    rng = np.random.default_rng(seed)
    pred = np.empty((batch, channels, anchors), dtype=np.float32)
    pred[:, 0:2] = rng.uniform(0, 128, (batch, 2, anchors))
    pred[:, 2:4] = rng.uniform(2, 80, (batch, 2, anchors))
    pred[:, 4:] = rng.random((batch, channels - 4, anchors)) ** 3
    return pred


def _transforms(shapes: Sequence[tuple[int, int]], meta: Mapping[str, Any]) -> list[Transform]:
    return preprocess([np.zeros((*s, 3), dtype=np.uint8) for s in shapes], meta)[1]


NMS_CASES: list[dict[str, Any]] = [
    {"conf_thres": 0.25, "iou_thres": 0.7, "agnostic": False, "classes": None, "max_det": 300},
    {"conf_thres": 0.1, "iou_thres": 0.5, "agnostic": True, "classes": None, "max_det": 300},
    {"conf_thres": 0.25, "iou_thres": 0.45, "agnostic": False, "classes": [0, 3], "max_det": 300},
    {"conf_thres": 0.05, "iou_thres": 0.7, "agnostic": False, "classes": None, "max_det": 7},
    {"conf_thres": 0.0, "iou_thres": 0.6, "agnostic": False, "classes": None, "max_det": 300},
]


@pytest.mark.parametrize("case", NMS_CASES)
def test_nms_and_box_mapping_equal_ultralytics(case: dict[str, Any]) -> None:
    shapes = [(90, 160), (200, 70), (333, 517)]
    meta = _detect_meta(class_names=[f"c{i}" for i in range(6)])
    pred = _random_raw_output(len(shapes), 4 + 6, 600, seed=len(str(case)))
    ours = detections(
        [pred],
        _transforms(shapes, meta),
        meta,
        conf=case["conf_thres"],
        iou=case["iou_thres"],
        agnostic=case["agnostic"],
        classes=case["classes"],
        max_det=case["max_det"],
    )
    expected = _ultralytics_detections(pred, (128, 128), shapes, **case)
    assert [len(e) for e in expected] != [0] * len(shapes)
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_array_equal(mine, theirs)


def test_nms_defaults_come_from_the_metadata() -> None:
    meta = _detect_meta(nms=export_pb2.NmsSettings(iou=0.5, conf=0.3, max_det=5, agnostic=True))
    pred = _random_raw_output(1, 4 + 3, 400, seed=7)
    ours = detections([pred], _transforms([(128, 128)], meta), meta)
    expected = _ultralytics_detections(
        pred, (128, 128), [(128, 128)], conf_thres=0.3, iou_thres=0.5, agnostic=True, max_det=5
    )
    assert len(ours[0]) == 5
    np.testing.assert_array_equal(ours[0], expected[0])


def test_nms_keeps_at_most_30000_candidates_like_ultralytics() -> None:
    meta = _detect_meta(nms=export_pb2.NmsSettings(iou=0.7, conf=0.0, max_det=300))
    pred = _random_raw_output(1, 4 + 1, 31000, seed=11)
    ours = detections([pred], _transforms([(128, 128)], meta), meta)
    expected = _ultralytics_detections(
        pred, (128, 128), [(128, 128)], conf_thres=0.0, iou_thres=0.7, max_det=300
    )
    np.testing.assert_array_equal(ours[0], expected[0])


def _crafted_output() -> Floats:
    """Seven boxes on a 100 x 100 input (x, y, w, h, scores of classes 0-2)."""
    boxes = [
        (50, 50, 40, 40, 0.9, 0.0, 0.0),  # A
        (52, 50, 40, 40, 0.8, 0.0, 0.0),  # B: IoU 0.905 with A, same class
        (51, 50, 40, 40, 0.0, 0.85, 0.0),  # C: IoU 0.95 with A, another class
        (10, 10, 10, 10, 0.0, 0.0, 0.3),  # D: alone
        (90, 90, 10, 10, 0.0, 0.0, 0.2),  # E: below conf 0.25
        (15, 10, 20, 10, 0.0, 0.0, 0.28),  # F: IoU with D exactly 0.5
        # G: never kept; 7 anchors, as Ultralytics takes a [1, 7, 6] output for in-graph NMS.
        (70, 10, 5, 5, 0.01, 0.0, 0.0),
    ]
    return np.asarray(boxes, dtype=np.float32).T[None].copy()


@pytest.mark.parametrize(
    ("options", "expected_scores"),
    [
        ({}, [0.9, 0.85, 0.3]),
        ({"iou": 0.5}, [0.9, 0.85, 0.3, 0.28]),  # IoU 0.5 is not above 0.5
        ({"agnostic": True}, [0.9, 0.3]),
        ({"classes": [2]}, [0.3]),
        ({"classes": [2], "conf": 0.1, "iou": 0.5}, [0.3, 0.28, 0.2]),
        ({"max_det": 1}, [0.9]),
    ],
)
def test_nms_on_crafted_boxes(options: dict[str, Any], expected_scores: list[float]) -> None:
    meta = _detect_meta(100, 100, nms=export_pb2.NmsSettings(iou=0.45, conf=0.25, max_det=300))
    pred = _crafted_output()
    ours = detections([pred], _transforms([(100, 100)], meta), meta, **options)[0]
    np.testing.assert_allclose(ours[:, 4], expected_scores, rtol=1e-6)
    names = {"conf": "conf_thres", "iou": "iou_thres"}
    reference_options: dict[str, Any] = {"conf_thres": 0.25, "iou_thres": 0.45, "max_det": 300}
    reference_options.update({names.get(k, k): v for k, v in options.items()})
    expected = _ultralytics_detections(pred, (100, 100), [(100, 100)], **reference_options)
    np.testing.assert_array_equal(ours, expected[0])


def test_detections_maps_boxes_to_original_pixels() -> None:
    # 50 x 100 letterboxed to 128: gain 1.28, 32 rows of padding on top.
    meta = _detect_meta()
    transform = _transforms([(50, 100)], meta)[0]
    assert transform == Transform(50, 100, 64, 128, 0, 32)
    pred = np.zeros((1, 5, 2), dtype=np.float32)
    pred[0, :, 0] = (64, 64, 64, 32, 0.9)  # x 32-96, y 48-80 -> 25-75, 12.5-37.5
    pred[0, :, 1] = (10, 40, 40, 40, 0.8)  # x -10-30 clipped to 0, y 20-60 -> 0-21.875
    ours = detections([pred], [transform], meta)[0]
    np.testing.assert_allclose(
        ours, [[25, 12.5, 75, 37.5, 0.9, 0], [0, 0, 23.4375, 21.875, 0.8, 0]], rtol=1e-6
    )


def test_segment_detections_return_mask_coefficients() -> None:
    shapes = [(90, 160), (200, 70)]
    nc, nm = 5, 32
    meta = _detect_meta(
        task="segment", postprocess="yolo_segment", class_names=[f"c{i}" for i in range(nc)]
    )
    pred = _random_raw_output(len(shapes), 4 + nc + nm, 500, seed=5)
    pred[:, 4 + nc :] = np.random.default_rng(6).normal(size=(len(shapes), nm, 500))
    protos = np.zeros((len(shapes), nm, 32, 32), dtype=np.float32)
    transforms = _transforms(shapes, meta)
    ours = segment_detections([pred, protos], transforms, meta)
    expected = _ultralytics_detections(
        pred, (128, 128), shapes, nc=nc, conf_thres=0.25, iou_thres=0.7, max_det=300
    )
    for (boxes, coefficients), theirs in zip(ours, expected, strict=True):
        assert len(boxes) > 0
        np.testing.assert_array_equal(boxes, theirs[:, :6])
        np.testing.assert_array_equal(coefficients, theirs[:, 6:])
    # Without class names the prototypes' channel count says how many channels are masks.
    unnamed = {k: v for k, v in meta.items() if k != "class_names"}
    boxes_only = detections([pred, protos], transforms, unnamed)
    for boxes, (named_boxes, _) in zip(boxes_only, ours, strict=True):
        np.testing.assert_array_equal(boxes, named_boxes)


def test_in_graph_nms_output_is_filtered_like_ultralytics_end2end() -> None:
    shapes = [(90, 160), (200, 70)]
    meta = _detect_meta(nms_in_graph=True, nms=export_pb2.NmsSettings(conf=0.25, max_det=300))
    rng = np.random.default_rng(9)
    pred = np.zeros((len(shapes), 300, 6), dtype=np.float32)
    for image in range(len(shapes)):
        count = 40
        xy = rng.uniform(0, 100, (count, 2))
        pred[image, :count, :2] = xy
        pred[image, :count, 2:4] = xy + rng.uniform(2, 40, (count, 2))
        pred[image, :count, 4] = np.sort(rng.random(count))[::-1]
        pred[image, :count, 5] = rng.integers(0, 4, count)
    transforms = _transforms(shapes, meta)
    for options in ({}, {"conf": 0.5, "classes": [1, 2]}, {"max_det": 3}):
        ours = detections([pred], transforms, meta, **options)
        expected = _ultralytics_detections(
            pred,
            (128, 128),
            shapes,
            end2end=True,
            conf_thres=options.get("conf", 0.25),
            iou_thres=0.7,
            classes=options.get("classes"),
            max_det=options.get("max_det", 300),
        )
        for mine, theirs in zip(ours, expected, strict=True):
            assert len(mine) > 0
            np.testing.assert_array_equal(mine, theirs)


def test_detections_reject_inconsistent_input() -> None:
    meta = _detect_meta(class_names=["a", "b"])
    pred = _random_raw_output(1, 4 + 3, 10, seed=0)
    with pytest.raises(ValueError, match="3 class channels but the metadata 2 names"):
        detections([pred], _transforms([(128, 128)], meta), meta)
    with pytest.raises(ValueError, match="1 images but 2 transforms"):
        detections([pred], _transforms([(128, 128)] * 2, meta), {**meta, "class_names": []})
    with pytest.raises(ValueError, match="postprocess"):
        detections([pred], _transforms([(128, 128)], meta), {**meta, "postprocess": "logits"})
    with pytest.raises(ValueError, match="max_det"):
        detections([pred], _transforms([(128, 128)], meta), {**meta, "nms": {}, "class_names": []})


# --- classification -------------------------------------------------------------------------


def test_classifications_top_k() -> None:
    logits = np.asarray([[1.0, 3.0, 3.0, -2.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    ranked = classifications([logits], {"postprocess": "logits"}, top_k=3)
    softmax = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    # Equal probabilities rank by the lower class id.
    assert [[c for c, _ in row] for row in ranked] == [[1, 2, 0], [0, 1, 2]]
    for row, probabilities in zip(ranked, softmax, strict=True):
        for class_id, probability in row:
            assert probability == pytest.approx(float(probabilities[class_id]), abs=1e-7)
    as_given = classifications([softmax], {"postprocess": "probabilities"}, top_k=10)
    assert [c for c, _ in as_given[0]] == [1, 2, 0, 3]
    assert as_given[0][0][1] == pytest.approx(float(softmax[0, 1]))
    with pytest.raises(ValueError, match="postprocess"):
        classifications([logits], {"postprocess": "yolo_detect"})


# --- end to end against Ultralytics' predictor ----------------------------------------------


def _calibrate_batch_norm(model: torch.nn.Module, batch: torch.Tensor) -> None:
    """Give an untrained model varied outputs: its BatchNorm statistics from one batch.

    Freshly built, its activations shrink layer by layer until every anchor scores the same,
    which would make box matching meaningless.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, its statistics
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()


def _iou(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else float(np.allclose(a[:4], b[:4]))


def _assert_boxes_match(ours: Floats, theirs: Floats) -> None:
    """Same detections: one-to-one, IoU >= 0.99, same class, |score difference| <= 1e-3."""
    assert len(ours) == len(theirs)
    unmatched = list(range(len(ours)))
    for row in theirs:
        match = next(
            (
                i
                for i in unmatched
                if ours[i, 5] == row[5]
                and abs(ours[i, 4] - row[4]) <= 1e-3
                and _iou(ours[i], row) >= 0.99
            ),
            None,
        )
        assert match is not None, f"no match for {row}"
        unmatched.remove(match)


@pytest.mark.timeout(240)
def test_detect_end_to_end_equals_ultralytics_predictor_on_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)  # the exporter writes next to the (YAML) model: here
    torch.manual_seed(0)
    yolo = YOLO("yolo11n.yaml")
    model: Any = yolo.model  # a DetectionModel; Ultralytics types the attribute loosely
    images = [_scene(shape, seed) for seed, shape in enumerate([(90, 160), (200, 70), (128, 96)])]
    names = [model.names[i] for i in range(len(model.names))]
    meta = _detect_meta(class_names=names)
    batch, transforms = preprocess(images, meta)
    _calibrate_batch_norm(model, torch.from_numpy(batch))
    with torch.no_grad():
        # Class scores near 0.3 rather than the initial 1e-5, so that many boxes pass conf.
        for branch in model.model[-1].cv3:
            branch[-1].bias.fill_(-1.0)
    onnx_path = yolo.export(format="onnx", imgsz=128, simplify=False)
    conf = 0.25

    predictor = YOLO(onnx_path, task="detect")
    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
    results: Any = predictor.predict(bgr, imgsz=128, conf=conf, iou=0.7, verbose=False)
    theirs = [r.boxes.data.numpy() for r in results]
    assert all(len(t) > 5 for t in theirs)

    # The same ONNX model run on our tensors: the same detections, bit for bit.
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(None, {"images": batch[i : i + 1]})[0] for i in range(3)])
    for mine, reference in zip(detections([raw], transforms, meta), theirs, strict=True):
        np.testing.assert_array_equal(mine, reference)

    # The PyTorch model on our tensors.
    with torch.no_grad():
        out = model(torch.from_numpy(batch))
    raw_torch = (out[0] if isinstance(out, tuple | list) else out).numpy()
    for mine, reference in zip(detections([raw_torch], transforms, meta), theirs, strict=True):
        _assert_boxes_match(mine, reference)


@pytest.mark.timeout(240)
def test_classify_end_to_end_equals_ultralytics_predictor_on_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    yolo = YOLO("yolo11n-cls.yaml")
    model: Any = yolo.model
    images = [_scene(shape, seed) for seed, shape in enumerate([(90, 160), (200, 70), (64, 64)])]
    meta = _classify_meta(64)
    batch, _ = preprocess(images, meta)
    _calibrate_batch_norm(model, torch.from_numpy(batch))
    onnx_path = yolo.export(format="onnx", imgsz=64, simplify=False)

    bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
    results: Any = YOLO(onnx_path, task="classify").predict(bgr, imgsz=64, verbose=False)
    theirs = np.stack([r.probs.data.numpy() for r in results])

    # The same ONNX model run on our tensors: the same probabilities.
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(None, {"images": batch[i : i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(raw, theirs, rtol=0, atol=1e-6)

    with torch.no_grad():
        out = model(torch.from_numpy(batch))
    probabilities = (out[0] if isinstance(out, tuple | list) else out).numpy()
    ranked = classifications([probabilities], meta, top_k=5)
    for row, reference in zip(ranked, theirs, strict=True):
        assert row[0][0] == int(reference.argmax())
        for class_id, probability in row:
            assert probability == pytest.approx(float(reference[class_id]), abs=1e-4)


# --- decoding -------------------------------------------------------------------------------


def _encode(image: PILImage.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _ultralytics_read(data: bytes, tmp_path: Path, suffix: str) -> Image:
    """Ultralytics' loader on the same bytes as a file, converted to RGB."""
    from ultralytics.utils.patches import imread

    path = tmp_path / f"image{suffix}"
    path.write_bytes(data)
    bgr = imread(str(path))
    assert bgr is not None
    return np.ascontiguousarray(bgr[..., ::-1])


def test_decode_png_and_jpeg(tmp_path: Path) -> None:
    rgb = _noise((30, 50), seed=1)
    png = decode_image(_encode(PILImage.fromarray(rgb), "PNG"))
    assert png.dtype == np.uint8
    np.testing.assert_array_equal(png, rgb)
    jpeg_bytes = _encode(PILImage.fromarray(_scene((60, 80), seed=2)), "JPEG", quality=90)
    jpeg = decode_image(jpeg_bytes)
    assert jpeg.shape == (60, 80, 3)
    np.testing.assert_array_equal(jpeg, _ultralytics_read(jpeg_bytes, tmp_path, ".jpg"))


def test_decode_grayscale_rgba_palette_and_16_bit(tmp_path: Path) -> None:
    grey = _noise((20, 30), seed=3)[..., 0]
    decoded = decode_image(_encode(PILImage.fromarray(grey, "L"), "PNG"))
    np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=2))

    rgba = np.dstack([_noise((20, 30), seed=4), np.full((20, 30), 7, dtype=np.uint8)])
    decoded = decode_image(_encode(PILImage.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(decoded, rgba[..., :3])  # alpha dropped, as Ultralytics does

    palette = PILImage.fromarray(_scene((20, 30), seed=5)).convert("P")
    decoded = decode_image(_encode(palette, "PNG"))
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))

    deep = np.random.default_rng(6).integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", deep)
    assert ok
    data = encoded.tobytes()
    np.testing.assert_array_equal(decode_image(data), _ultralytics_read(data, tmp_path, ".png"))
    np.testing.assert_array_equal(decode_image(data), (deep[..., ::-1] >> 8).astype(np.uint8))


def test_decode_applies_exif_orientation(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = PILImage.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _encode(PILImage.fromarray(stored), "JPEG", exif=exif, quality=95)
    decoded = decode_image(data)
    assert decoded.shape == (40, 20, 3)
    np.testing.assert_array_equal(decoded, _ultralytics_read(data, tmp_path, ".jpg"))
    upright = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))).convert("RGB"))
    assert np.abs(decoded.astype(int) - upright.astype(int)).max() <= 2
    assert decoded[5, 10, 0] > 200 and decoded[35, 10, 2] > 200  # left half now on top


def test_decode_falls_back_to_pillow() -> None:
    rgb = _noise((20, 30), seed=7)
    tga = _encode(PILImage.fromarray(rgb), "TGA")  # a format OpenCV does not read
    np.testing.assert_array_equal(decode_image(tga), rgb)


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_decode_rejects_undecodable_bytes(data: bytes) -> None:
    # As in the export worker, where Ultralytics has replaced PIL.Image.open with a wrapper
    # that raises other errors than Pillow's.
    import ultralytics.utils.patches  # noqa: F401

    with pytest.raises(ValueError, match="decode"):
        decode_image(data)


# --- self-containment -----------------------------------------------------------------------

ALLOWED_THIRD_PARTY = {"numpy", "cv2", "PIL"}


def test_processing_imports_only_stdlib_numpy_opencv_and_pillow() -> None:
    tree = ast.parse(PROCESSING_SOURCE.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in processing.py"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported, "no imports found: is PROCESSING_SOURCE the right file?"
    assert imported - sys.stdlib_module_names - ALLOWED_THIRD_PARTY == set()


def test_processing_runs_as_a_copied_file(tmp_path: Path) -> None:
    """As next to a Triton model.py: a copy imported by path, outside the visionmesh package."""
    copy = tmp_path / "processing.py"
    shutil.copy(PROCESSING_SOURCE, copy)
    spec = importlib.util.spec_from_file_location("copied_processing", copy)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module's annotations there
    try:
        spec.loader.exec_module(module)
        image = _noise((90, 160), seed=8)
        meta = _detect_meta()
        batch, transforms = module.preprocess([image], meta)
        np.testing.assert_array_equal(batch, preprocess([image], meta)[0])
        assert transforms[0].to_list() == preprocess([image], meta)[1][0].to_list()
    finally:
        del sys.modules[spec.name]
