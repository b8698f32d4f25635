"""In-graph NMS: onnxruntime runs of append_nms graphs against Ultralytics' own NMS."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision  # noqa: F401  (imported, it is the NMS Ultralytics' reference runs)
from onnx import TensorProto, helper
from visionmesh.export.core.nms_graph import MAX_NMS, append_nms

# Ultralytics reads its settings dir and probes the network once, when first imported (lazily,
# below): point both somewhere harmless before any test can trigger that import.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "visionmesh-tests" / "ultralytics")
)

Array = npt.NDArray[np.float32]

NUM_CLASSES = 3
RAW_INPUT = "output0_raw"
# onnxruntime 1.31 runs ai.onnx opsets up to 26; the installed onnx knows newer ones.
NEWEST_OPSET = min(26, onnx.defs.onnx_opset_version())


def reference_nms(
    raw: Array, *, conf: float, iou: float, max_det: int, agnostic: bool
) -> list[Array]:
    """Ultralytics' non_max_suppression on `raw` [B, 4 + nc, N]: one [n, 6] array per image.

    With torchvision imported, Ultralytics runs torchvision.ops.nms, which like onnxruntime's
    NonMaxSuppression visits equal scores in anchor order; its own fallback does not.
    """
    from ultralytics.utils.nms import non_max_suppression

    per_image = non_max_suppression(
        torch.from_numpy(raw),
        conf_thres=conf,
        iou_thres=iou,
        agnostic=agnostic,
        multi_label=False,
        max_det=max_det,
    )
    return [detections.numpy() for detections in per_image]


def assert_matches_reference(rows: Array, reference: Sequence[Array], max_det: int) -> None:
    """`rows` [B, max_det, 6] hold each image's reference detections, then zero rows."""
    assert rows.shape == (len(reference), max_det, 6)
    for image, expected in enumerate(reference):
        count = len(expected)
        got = rows[image, :count]
        np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=0, atol=1e-4)
        np.testing.assert_allclose(got[:, 4], expected[:, 4], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got[:, 5], expected[:, 5])
        assert not rows[image, count:].any(), f"image {image}: rows after its detections"


def identity_head(
    *, batch: int | str = "batch", opset: int = 17, classes: int = NUM_CLASSES
) -> onnx.ModelProto:
    """`output0_raw` -> Identity -> `output0`, standing in for an exported detect model."""
    shape = [batch, 4 + classes, "anchors"]
    graph = helper.make_graph(
        [helper.make_node("Identity", [RAW_INPUT], ["output0"])],
        "head",
        [helper.make_tensor_value_info(RAW_INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", opset)])
    helper.set_model_props(model, {"task": "detect", "names": "{0: 'a', 1: 'b', 2: 'c'}"})
    return model


def run(model: onnx.ModelProto, feeds: dict[str, Array]) -> Array:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (rows,) = session.run(["output0"], feeds)
    return np.asarray(rows, dtype=np.float32)


def crafted_batch() -> Array:
    """Four images, nine anchors each, with conf 0.25 and iou 0.45 in mind.

    Image 0: two same-class boxes at IoU 0.8 (one goes), a different-class box over them (kept
    only when class-aware), a distant box, a box scoring exactly conf and one just below it.
    Image 1: six disjoint boxes, so max_det truncates. Image 2: nothing above conf.
    Image 3: one box, whose classes 1 and 2 tie (the lower index wins).
    """
    anchors = 9
    raw = np.zeros((4, 4 + NUM_CLASSES, anchors), dtype=np.float32)
    raw[:, :4] = np.array([50, 50, 10, 10], dtype=np.float32)[None, :, None]
    raw[:, 4:] = 0.01

    def put(image: int, anchor: int, xywh: Sequence[float], scores: Sequence[float]) -> None:
        raw[image, :4, anchor] = xywh
        raw[image, 4:, anchor] = scores

    put(0, 0, (20, 20, 20, 20), (0.90, 0.10, 0.05))
    put(0, 1, (21, 20, 20, 20), (0.80, 0.10, 0.05))  # IoU 0.9 with anchor 0, same class
    put(0, 2, (20, 21, 20, 20), (0.10, 0.70, 0.05))  # over anchor 0, another class
    put(0, 3, (80, 80, 16, 12), (0.05, 0.10, 0.60))
    put(0, 4, (60, 20, 10, 10), (0.25, 0.10, 0.05))  # exactly conf: not a candidate
    put(0, 5, (60, 60, 10, 10), (0.10, 0.2499, 0.05))
    for anchor in range(6):
        put(1, anchor, (10 + 20 * anchor, 100, 12, 8), (0.3 + 0.1 * anchor, 0.2, 0.1))
    put(2, 0, (30, 30, 10, 10), (0.25, 0.25, 0.25))
    put(3, 7, (40, 40, 30, 20), (0.1, 0.55, 0.55))
    return raw


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("max_det", [2, 4, 100])
def test_crafted_batch_matches_ultralytics(agnostic: bool, max_det: int) -> None:
    raw = crafted_batch()
    model = append_nms(
        identity_head(),
        num_classes=NUM_CLASSES,
        iou=0.45,
        conf=0.25,
        max_det=max_det,
        agnostic=agnostic,
    )
    reference = reference_nms(raw, conf=0.25, iou=0.45, max_det=max_det, agnostic=agnostic)

    rows = run(model, {RAW_INPUT: raw})

    assert_matches_reference(rows, reference, max_det)
    counts = [len(detections) for detections in reference]
    # The crafted cases are exercised: images differ in count, one is empty, class-awareness
    # keeps the different-class overlap, and a small max_det truncates image 1.
    assert counts[2] == 0 and counts[3] == 1
    assert counts[0] == min(max_det, 2 if agnostic else 3)
    assert counts[1] == min(max_det, 6)
    assert rows[3, 0, 5] == 1.0


@pytest.mark.parametrize("opset", range(11, NEWEST_OPSET + 1))
def test_every_opset_gives_the_same_rows(opset: int) -> None:
    raw = crafted_batch()
    model = append_nms(
        identity_head(opset=opset),
        num_classes=NUM_CLASSES,
        iou=0.45,
        conf=0.25,
        max_det=5,
        agnostic=False,
    )
    reference = reference_nms(raw, conf=0.25, iou=0.45, max_det=5, agnostic=False)

    assert_matches_reference(run(model, {RAW_INPUT: raw}), reference, 5)


def random_batch(rng: np.random.Generator, batch: int, anchors: int, classes: int) -> Array:
    """Boxes crowded into a 96 px square, so most overlap several others."""
    raw = np.empty((batch, 4 + classes, anchors), dtype=np.float32)
    raw[:, 0:2] = rng.uniform(0, 96, (batch, 2, anchors))
    raw[:, 2:4] = rng.uniform(4, 48, (batch, 2, anchors))
    raw[:, 4:] = rng.uniform(0, 1, (batch, classes, anchors)) ** 3
    return raw


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize(("seed", "batch", "max_det"), [(0, 1, 300), (1, 3, 25), (2, 6, 60)])
def test_random_batches_match_ultralytics(
    seed: int, batch: int, max_det: int, agnostic: bool
) -> None:
    classes = 5
    raw = random_batch(np.random.default_rng(seed), batch, 600, classes)
    model = append_nms(
        identity_head(classes=classes),
        num_classes=classes,
        iou=0.5,
        conf=0.1,
        max_det=max_det,
        agnostic=agnostic,
    )
    reference = reference_nms(raw, conf=0.1, iou=0.5, max_det=max_det, agnostic=agnostic)

    assert_matches_reference(run(model, {RAW_INPUT: raw}), reference, max_det)
    assert all(len(detections) > 0 for detections in reference)


def test_only_the_best_max_nms_candidates_enter_nms() -> None:
    # One image: Ultralytics' NMS gives up on the rest of a batch after 2 s + 0.05 s per image.
    past_cut = 500
    anchors = MAX_NMS + past_cut
    rng = np.random.default_rng(4)
    raw = np.zeros((1, 4 + NUM_CLASSES, anchors), dtype=np.float32)
    # Distinct scores, one class each: Ultralytics cuts with an unstable sort, so equal scores
    # at the cut could fall either way. The anchors are in descending score order.
    scores = np.linspace(0.9, 0.1, anchors, dtype=np.float32)
    raw[0, 4 + rng.integers(0, NUM_CLASSES, anchors), np.arange(anchors)] = scores
    # The best MAX_NMS crowd a 200 px square and mostly suppress each other; the rest sit apart
    # on a grid, where each would survive NMS if it took part.
    raw[0, 0:2, :MAX_NMS] = rng.uniform(0, 200, (2, MAX_NMS))
    raw[0, 2:4, :MAX_NMS] = rng.uniform(20, 60, (2, MAX_NMS))
    grid = np.arange(past_cut)
    raw[0, 0, MAX_NMS:] = 1000 + 50 * (grid % 25)
    raw[0, 1, MAX_NMS:] = 1000 + 50 * (grid // 25)
    raw[0, 2:4, MAX_NMS:] = 20
    model = append_nms(
        identity_head(), num_classes=NUM_CLASSES, iou=0.5, conf=0.0, max_det=3000, agnostic=False
    )
    reference = reference_nms(raw, conf=0.0, iou=0.5, max_det=3000, agnostic=False)

    assert_matches_reference(run(model, {RAW_INPUT: raw}), reference, 3000)
    assert 0 < len(reference[0]) < 3000


@pytest.mark.parametrize("agnostic", [False, True])
def test_equal_scores_are_ranked_in_anchor_order_like_ultralytics(agnostic: bool) -> None:
    classes = 4
    raw = random_batch(np.random.default_rng(3), 3, 400, classes)
    raw[:, 4:] = np.round(raw[:, 4:] * 8) / 8  # a handful of distinct scores, each many times
    model = append_nms(
        identity_head(classes=classes),
        num_classes=classes,
        iou=0.5,
        conf=0.1,
        max_det=80,
        agnostic=agnostic,
    )
    reference = reference_nms(raw, conf=0.1, iou=0.5, max_det=80, agnostic=agnostic)

    assert_matches_reference(run(model, {RAW_INPUT: raw}), reference, 80)


def test_fixed_batch_keeps_its_size_in_the_output_shape() -> None:
    model = append_nms(
        identity_head(batch=4),
        num_classes=NUM_CLASSES,
        iou=0.45,
        conf=0.25,
        max_det=7,
        agnostic=False,
    )
    (output,) = model.graph.output
    dims = [dim.dim_value for dim in output.type.tensor_type.shape.dim]
    assert dims == [4, 7, 6]
    raw = crafted_batch()
    reference = reference_nms(raw, conf=0.25, iou=0.45, max_det=7, agnostic=False)
    assert_matches_reference(run(model, {RAW_INPUT: raw}), reference, 7)


def test_result_is_a_valid_model_that_keeps_the_original_header() -> None:
    original = identity_head(opset=13)
    original.doc_string = "exported head"
    before = original.SerializeToString()

    model = append_nms(
        original, num_classes=NUM_CLASSES, iou=0.45, conf=0.25, max_det=300, agnostic=False
    )

    onnx.checker.check_model(model, full_check=True)
    assert original.SerializeToString() == before, "the argument was modified"
    assert [(p.key, p.value) for p in model.metadata_props] == [
        (p.key, p.value) for p in original.metadata_props
    ]
    assert model.ir_version == original.ir_version
    assert list(model.opset_import) == list(original.opset_import)
    assert list(model.graph.input) == list(original.graph.input)
    (output,) = model.graph.output
    assert output.name == "output0"
    assert output.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value, dims[2].dim_value) == ("batch", 300, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 4}, "channels"),
        ({"conf": 1.5}, "conf"),
        ({"iou": -0.1}, "iou"),
        ({"max_det": 0}, "max_det"),
    ],
)
def test_rejects_arguments_that_do_not_fit(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "num_classes": NUM_CLASSES,
        "iou": 0.45,
        "conf": 0.25,
        "max_det": 10,
        "agnostic": False,
    }
    with pytest.raises(ValueError, match=message):
        append_nms(identity_head(), **{**arguments, **kwargs})


def test_rejects_opsets_without_batched_nms_ops() -> None:
    with pytest.raises(ValueError, match="opset"):
        append_nms(
            identity_head(opset=10),
            num_classes=NUM_CLASSES,
            iou=0.45,
            conf=0.25,
            max_det=10,
            agnostic=False,
        )


# --- a real Ultralytics export --------------------------------------------------------------

IMGSZ = 128


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yolo11n from its YAML, made to give image-dependent, spread-out scores.

    Untrained, its activations vanish through the default BatchNorm statistics and every anchor
    scores the same ~1e-5 whatever the image. BatchNorm statistics taken from one batch of noise
    and a damped class head give scores that differ per image and per anchor, mostly 0.27-0.4.
    """
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolo11n.yaml")
    network: Any = yolo.model  # a DetectionModel; Ultralytics types the attribute loosely
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    network.train()
    with torch.no_grad():
        network(torch.rand(8, 3, IMGSZ, IMGSZ))
        for branch in network.model[-1].cv3:
            branch[-1].weight.mul_(0.02)
            branch[-1].bias.fill_(-1.0)
    network.eval()
    checkpoint = tmp_path_factory.mktemp("detector") / "detector.pt"
    yolo.save(checkpoint)
    return checkpoint


def export_onnx(checkpoint: Path, directory: Path, opset: int) -> onnx.ModelProto:
    """Ultralytics' own ONNX export (dynamic batch); it writes next to the checkpoint."""
    from ultralytics import YOLO

    local = directory / checkpoint.name
    shutil.copy(checkpoint, local)
    exported = YOLO(str(local)).export(
        format="onnx", imgsz=IMGSZ, dynamic=True, simplify=False, opset=opset
    )
    return onnx.load(exported)


def sample_images() -> Array:
    """Four different images: noise with brighter, still noisy, rectangles in different places."""
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 1, (4, 3, IMGSZ, IMGSZ)).astype(np.float32) * 0.5
    for image in range(4):
        for _ in range(2 + image):
            x, y = rng.integers(0, IMGSZ - 40, 2)
            w, h = rng.integers(12, 40, 2)
            images[image, :, y : y + h, x : x + w] += rng.uniform(0, 0.5, (3, 1, 1))
    return images


@pytest.mark.timeout(240)
@pytest.mark.parametrize("opset", [12, 17, 20])
def test_real_export_every_image_gets_its_own_detections(
    detector_checkpoint: Path, tmp_path: Path, opset: int
) -> None:
    raw_model = export_onnx(detector_checkpoint, tmp_path, opset)
    max_det, iou = 100, 0.5
    images = sample_images()
    raw = run_raw(raw_model, images)
    # At least half of every image's anchors are candidates: plenty to suppress, never none.
    best_scores = raw[:, 4:].max(axis=1)
    conf = float(np.quantile(best_scores, 0.5, axis=1).min())
    model = append_nms(
        raw_model,
        num_classes=raw.shape[1] - 4,
        iou=iou,
        conf=conf,
        max_det=max_det,
        agnostic=False,
    )
    onnx.checker.check_model(model)
    assert model.metadata_props == raw_model.metadata_props
    reference = reference_nms(raw, conf=conf, iou=iou, max_det=max_det, agnostic=False)

    rows = run(model, {"images": images})

    assert_matches_reference(rows, reference, max_det)
    assert all(len(detections) > 0 for detections in reference)
    assert len({len(detections) for detections in reference}) > 1, "images should differ"
    for image in range(len(images)):
        alone = run(model, {"images": images[image : image + 1]})
        np.testing.assert_allclose(alone[0], rows[image], rtol=0, atol=1e-4)


def run_raw(model: onnx.ModelProto, images: Array) -> Array:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (raw,) = session.run(["output0"], {"images": images})
    return np.asarray(raw, dtype=np.float32)
