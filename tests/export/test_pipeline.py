"""The export pipeline on real checkpoints: ONNX that describes itself, verified parity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.parity import check_parity, onnx_runner
from visionmesh.export.core.pipeline import (
    ParityFailed,
    Stopped,
    run_export,
)
from visionmesh.export.core.source import SourceError, load_source

from tests.models import IMGSZ, NAMES
from tests.models import classifier_checkpoint as _classifier_checkpoint
from tests.models import export_package as _export
from tests.models import export_target as _target
from tests.models import yolo_checkpoint as _yolo_checkpoint

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="module")
def detect_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _yolo_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "detect.pt", "yolo11n.yaml", confident=True
    )


@pytest.mark.timeout(300)
def test_detect_export_with_in_graph_nms_is_verified_image_by_image(
    tmp_path: Path, detect_checkpoint: Path
) -> None:
    from ultralytics import YOLO

    spec = export_pb2.ExportSpec(
        dynamic_batch=True,
        max_batch_size=8,
        nms=True,
        nms_settings=export_pb2.NmsSettings(conf=0.4),
    )
    target = _target(spec, "ultralytics", "detect", ())
    package = _export(tmp_path, detect_checkpoint, target)
    report = package.parity
    assert report.passed, report.failure
    assert report.images == 8 and report.image_source == "synthetic"
    # The heads were made confident: real boxes were compared, in the raw graph and in the
    # NMS graph, for a batch of 8 different images at once.
    assert report.boxes_reference > 20
    assert report.boxes_matched == report.boxes_reference == report.boxes_exported
    assert report.min_box_iou >= 0.99 and report.max_score_diff <= 1e-3
    assert report.graph_nms_matched == report.graph_nms_reference == report.boxes_reference
    assert report.batch_size == 8 and report.batch_max_abs_diff < 1e-3

    graph = onnx.load(package.path("model.onnx"))
    (output,) = graph.graph.output
    dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
    assert dims[1:] == [300, 6] and isinstance(dims[0], str)
    (graph_input,) = graph.graph.input
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:] == [3, IMGSZ, IMGSZ]

    metadata = json.loads(package.path("metadata.json").read_text())
    assert metadata["nms_in_graph"] is True and metadata["resize"] == "letterbox"
    assert metadata["postprocess"] == "yolo_detect" and metadata["nms"]["conf"] == pytest.approx(
        0.4
    )
    assert json.loads(package.path("parity.json").read_text())["onnx"]["passed"] is True
    names = {model.name: model.platform for model in package.triton_models}
    assert names["shapes-v3"] == "onnxruntime_onnx" and "ensemble" in names.values()
    assert package.path("triton.zip").stat().st_size > 0

    # Ultralytics' own loader reads the file's metadata: names, and that NMS is inside.
    loaded = YOLO(str(package.path("model.onnx")), task="detect")
    image = synthetic_images(1).images[0]
    results: Any = loaded.predict(image[..., ::-1], imgsz=IMGSZ, conf=0.4, verbose=False)
    assert loaded.names == dict(enumerate(loaded.names.values())) and len(loaded.names) == 80
    assert len(results[0].boxes) > 0


@pytest.mark.timeout(300)
def test_a_classifier_of_each_framework_exports_with_top1_parity(tmp_path: Path) -> None:
    from ultralytics import YOLO

    ultra = _yolo_checkpoint(tmp_path / "cls.pt", "yolo11n-cls.yaml")
    package = _export(
        tmp_path / "u", ultra, _target(export_pb2.ExportSpec(), "ultralytics", "classify", NAMES)
    )
    assert package.parity.passed and package.parity.top1_agreed == 8
    assert (
        package.metadata.resize == "center_crop" and package.metadata.postprocess == "probabilities"
    )
    assert YOLO(str(package.path("model.onnx")), task="classify").names == dict(enumerate(NAMES))

    tv = _classifier_checkpoint(tmp_path / "tv.pt")
    spec = export_pb2.ExportSpec(dynamic_batch=True, softmax=False)
    package = _export(tmp_path / "t", tv, _target(spec, "torchvision", "classify", NAMES))
    assert package.parity.passed and package.parity.top1_agreed == 8
    assert package.metadata.postprocess == "logits" and package.metadata.resize == "resize"
    assert list(package.metadata.mean) == pytest.approx([0.485, 0.456, 0.406])
    # The default ends the graph in a softmax; parity compares it with the same in PyTorch.
    package = _export(
        tmp_path / "s",
        tv,
        _target(export_pb2.ExportSpec(), "torchvision", "classify", NAMES),
        images=2,
    )
    assert package.parity.passed and package.metadata.postprocess == "probabilities"
    props = {p.key: p.value for p in onnx.load(package.path("model.onnx")).metadata_props}
    assert props["task"] == "classify" and "square" in props["names"]


@pytest.mark.timeout(300)
def test_segment_export_and_a_fixed_batch(tmp_path: Path) -> None:
    checkpoint = _yolo_checkpoint(tmp_path / "seg.pt", "yolo11n-seg.yaml")
    spec = export_pb2.ExportSpec(max_batch_size=2)  # fixed batch of 2, no dynamic axis
    package = _export(tmp_path, checkpoint, _target(spec, "ultralytics", "segment", ()), images=5)
    assert package.parity.passed, package.parity.failure
    assert [o.name for o in package.parity.outputs] == ["output0", "output1"]
    assert package.metadata.input.shape[:2] == [2, 3] and not package.metadata.dynamic_batch
    assert package.metadata.postprocess == "yolo_segment"


def test_a_wrong_exported_model_fails_the_check_with_its_numbers(
    tmp_path: Path, detect_checkpoint: Path
) -> None:
    target = _target(export_pb2.ExportSpec(dynamic_batch=True), "ultralytics", "detect", ())
    package = _export(tmp_path, detect_checkpoint, target, images=2)
    source = load_source(
        detect_checkpoint, framework="ultralytics", task="detect", class_names=(), imgsz=IMGSZ
    )
    exact = onnx_runner(package.path("model.onnx"))

    def off_by_a_little(batch: np.ndarray) -> list[np.ndarray]:
        return [out + 0.01 for out in exact(batch)]

    meta: dict[str, Any] = {
        "resize": "letterbox",
        "input_height": IMGSZ,
        "input_width": IMGSZ,
        "scale": 1 / 255,
        "pad_value": 114,
        "channel_order": "rgb",
        "postprocess": "yolo_detect",
        "task": "detect",
        "nms": {"iou": 0.7, "conf": 0.25, "max_det": 300},
    }
    report = check_parity(
        source, target.spec, meta, synthetic_images(2), off_by_a_little, output_names=["output0"]
    )
    assert not report.passed
    assert "output0: max |diff| 0.01" in report.failure
    assert report.outputs[0].max_abs_diff == pytest.approx(0.01, abs=1e-4)


def test_zero_tolerance_fails_the_export_and_stop_ends_it(
    tmp_path: Path, detect_checkpoint: Path
) -> None:
    spec = export_pb2.ExportSpec(parity=export_pb2.ParityTolerance(atol=0, rtol=0))
    target = _target(spec, "ultralytics", "detect", ())
    target.spec.parity.atol = 0.0
    with pytest.raises(ParityFailed, match="parity check failed: output0: max"):
        _export(tmp_path / "a", detect_checkpoint, target, images=2)
    with pytest.raises(Stopped):
        run_export(
            target,
            detect_checkpoint,
            tmp_path / "b",
            synthetic_images(1),
            on_phase=lambda _: None,
            should_stop=lambda: True,
        )


def test_a_checkpoint_that_is_not_what_the_registry_says_is_refused(
    tmp_path: Path, detect_checkpoint: Path
) -> None:
    with pytest.raises(SourceError, match="is a detect model, the registry says classify"):
        load_source(
            detect_checkpoint, framework="ultralytics", task="classify", class_names=(), imgsz=IMGSZ
        )
    with pytest.raises(SourceError, match="class names differ"):
        load_source(
            detect_checkpoint,
            framework="ultralytics",
            task="detect",
            class_names=("a",),
            imgsz=IMGSZ,
        )
    with pytest.raises(SourceError, match="cannot load the torchvision checkpoint"):
        load_source(
            detect_checkpoint, framework="torchvision", task="classify", class_names=(), imgsz=IMGSZ
        )


@pytest.mark.timeout(400)
def test_the_packaged_repository_serves_detections_equal_to_the_parity_reference(
    tmp_path: Path, detect_checkpoint: Path, triton_server: Any
) -> None:
    """The package a job uploads, loaded into a real Triton server over its repository API."""
    import shutil

    import cv2
    import tritonclient.grpc as grpcclient
    from visionmesh.common.vision import detections, preprocess
    from visionmesh.export.core.metadata import metadata_dict
    from visionmesh.export.core.parity import match_boxes
    from visionmesh.export.core.triton import use_python_standin

    spec = export_pb2.ExportSpec(
        dynamic_batch=True, max_batch_size=4, nms_settings=export_pb2.NmsSettings(conf=0.4)
    )
    package = _export(
        tmp_path / "work", detect_checkpoint, _target(spec, "ultralytics", "detect", ())
    )
    repository = tmp_path / "repository"
    shutil.copytree(package.path("triton"), repository)
    env = str(triton_server.env_path)
    # Triton here has no ONNX Runtime backend: the model runs on the Python stand-in, and
    # the Python models get the server's numpy<2 environment (a deployment's own setting).
    use_python_standin(repository, "shapes-v3", execution_env_path=env)
    for step in ("preprocess", "postprocess"):
        config = repository / f"shapes-v3-{step}" / "config.pbtxt"
        config.write_text(
            config.read_text()
            + f'\nparameters {{ key: "EXECUTION_ENV_PATH" value {{ string_value: "{env}" }} }}\n'
        )
    triton_server.add_repository(repository)
    triton_server.load_model("shapes-v3-ensemble")

    images = synthetic_images(3, seed=7).images
    encoded = [cv2.imencode(".png", image[..., ::-1])[1].tobytes() for image in images]
    batch = np.array([[data] for data in encoded], dtype=np.object_)
    image_input = grpcclient.InferInput("IMAGE", list(batch.shape), "BYTES")
    image_input.set_data_from_numpy(batch)
    client = triton_server.client()
    try:
        result = client.infer("shapes-v3-ensemble", [image_input])
    finally:
        client.close()
    counts = result.as_numpy("NUM_DETECTIONS").reshape(-1)
    served = [result.as_numpy("DETECTIONS")[i, :n] for i, n in enumerate(counts)]

    meta = metadata_dict(package.metadata)
    source = load_source(
        detect_checkpoint, framework="ultralytics", task="detect", class_names=(), imgsz=IMGSZ
    )
    x, transforms = preprocess(images, meta)
    reference = detections(
        [t.numpy() for t in source.forward(torch.from_numpy(x))], transforms, meta
    )
    assert sum(len(r) for r in reference) > 5
    for want, got in zip(reference, served, strict=True):
        pairs, missing, extra = match_boxes(want, got)
        assert not missing and not extra and len(pairs) == len(want)


def test_dynamic_size_frees_height_and_width_and_still_checks_parity(tmp_path: Path) -> None:
    checkpoint = _classifier_checkpoint(tmp_path / "tv.pt")
    spec = export_pb2.ExportSpec(dynamic_batch=True, dynamic_size=True)
    package = _export(
        tmp_path / "d", checkpoint, _target(spec, "torchvision", "classify", NAMES), 2
    )
    assert package.parity.passed
    (graph_input,) = onnx.load(package.path("model.onnx")).graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]
    assert list(package.metadata.input.shape) == [-1, 3, -1, -1]
    runner = onnx_runner(package.path("model.onnx"))
    (probabilities,) = runner(np.zeros((1, 3, 96, 128), np.float32))
    assert probabilities.shape == (1, len(NAMES))


def test_tensorrt_is_refused_with_the_reason_where_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from visionmesh.export.core import tensorrt

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorrt" else real_find_spec(name, *a),
    )
    assert tensorrt.tensorrt_support().reason == "tensorrt is not installed"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    support = tensorrt.tensorrt_support()
    assert not support.available and support.reason == "no CUDA device"
