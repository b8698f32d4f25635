"""Triton model repositories: the written configs, and the ensemble on a real tritonserver."""

from __future__ import annotations

import ast
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.vision import classifications, detections, preprocess
from visionmesh.export.core.triton import (
    metadata_json,
    ultralytics_literal,
    use_python_standin,
    write_repository,
    zip_repository,
)

if TYPE_CHECKING:
    from tests.export.triton_server import TritonServer


os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "visionmesh-tests" / "ultralytics")
)

IMGSZ = 128
CONF = 0.01
DETECT_CLASSES = 80
CLASSIFY_CLASSES = 1000
# Original sizes (h, w) unlike the model input and each other, so boxes map back through
# letterbox padding on either axis.
IMAGE_SIZES = ((96, 128), (150, 110), (128, 128))

ULTRALYTICS_METADATA = {
    "description": "Ultralytics YOLO11n model",
    "stride": 32,
    "task": "detect",
    "batch": 1,
    "imgsz": [IMGSZ, IMGSZ],
    "names": {i: str(i) for i in range(DETECT_CLASSES)},
    "args": {"batch": 1, "nms": False, "dynamic": True},
    "channels": 3,
    "end2end": False,
}


def tensor(name: str, shape: Sequence[int]) -> export_pb2.TensorInfo:
    return export_pb2.TensorInfo(name=name, datatype="FP32", shape=list(shape))


def detect_metadata(*, batch: int = -1, max_batch_size: int = 8) -> export_pb2.ModelMetadata:
    """An Ultralytics detector's metadata as the export job writes it, built by hand."""
    return export_pb2.ModelMetadata(
        model_version_id="mv-triton-test",
        framework="ultralytics",
        task="detect",
        class_names=[str(i) for i in range(DETECT_CLASSES)],
        input=tensor("images", [batch, 3, -1, -1]),
        layout="NCHW",
        input_height=IMGSZ,
        input_width=IMGSZ,
        channel_order="rgb",
        resize="letterbox",
        pad_value=114,
        scale=1 / 255,
        outputs=[tensor("output0", [batch, 4 + DETECT_CLASSES, -1])],
        postprocess="yolo_detect",
        nms=export_pb2.NmsSettings(iou=0.7, conf=CONF, max_det=300),
        dynamic_batch=batch < 0,
        max_batch_size=max_batch_size,
        opset=18,
    )


def classify_metadata() -> export_pb2.ModelMetadata:
    return export_pb2.ModelMetadata(
        model_version_id="mv-triton-test-cls",
        framework="ultralytics",
        task="classify",
        class_names=[str(i) for i in range(CLASSIFY_CLASSES)],
        input=tensor("images", [-1, 3, -1, -1]),
        layout="NCHW",
        input_height=IMGSZ,
        input_width=IMGSZ,
        channel_order="rgb",
        resize="center_crop",
        scale=1 / 255,
        outputs=[tensor("output0", [-1, CLASSIFY_CLASSES])],
        postprocess="probabilities",
        dynamic_batch=True,
        max_batch_size=8,
        opset=18,
    )


def write(
    root: Path,
    metadata: export_pb2.ModelMetadata,
    *,
    name: str = "m",
    onnx_path: Path | None = None,
    max_batch_size: int = 8,
    **overrides: Any,
) -> list[export_pb2.TritonModel]:
    if onnx_path is None:
        onnx_path = root.parent / f"{root.name}-model.onnx"
        onnx_path.write_bytes(b"onnx graph bytes")
    arguments: dict[str, Any] = {
        "name": name,
        "version": 1,
        "onnx_path": onnx_path,
        "metadata": metadata,
        "ultralytics_metadata": ULTRALYTICS_METADATA,
        "max_batch_size": max_batch_size,
        "dynamic_batching": True,
        "max_queue_delay_microseconds": 250,
        "instance_count": 2,
    }
    return write_repository(root, **{**arguments, **overrides})


def config(root: Path, model: str) -> Any:
    """A config.pbtxt parsed strictly by Triton's own ModelConfig message."""
    text = (root / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def io(tensors: Any) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in tensors]


# --- the writer ---------------------------------------------------------------------------


def test_dynamic_batch_repository_configs(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    models = write(root, detect_metadata(), execution_env_path="/envs/triton")

    assert [(m.name, m.platform, m.version) for m in models] == [
        ("m", "onnxruntime_onnx", 1),
        ("m-preprocess", "python", 1),
        ("m-postprocess", "python", 1),
        ("m-ensemble", "ensemble", 1),
    ]
    for model in models:
        assert (root / model.config.key).is_file()
        assert model.config.key == f"{model.name}/config.pbtxt"
        assert not model.model.key or (root / model.model.key).is_file()
    assert models[0].model.key == "m/1/model.onnx"
    assert (root / "m/1/model.onnx").read_bytes() == b"onnx graph bytes"

    exported = config(root, "m")
    assert exported.name == "m"
    assert exported.platform == "onnxruntime_onnx"
    assert exported.max_batch_size == 8
    assert io(exported.input) == [("images", "TYPE_FP32", [3, -1, -1])]
    assert io(exported.output) == [("output0", "TYPE_FP32", [84, -1])]
    assert exported.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in exported.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)
    ]
    assert set(exported.parameters) == {"metadata", "visionmesh_metadata"}
    assert exported.parameters["visionmesh_metadata"].string_value == metadata_json(
        detect_metadata()
    )

    pre = config(root, "m-preprocess")
    assert pre.backend == "python"
    assert pre.max_batch_size == 8
    assert io(pre.input) == [("IMAGE", "TYPE_STRING", [1])]
    assert io(pre.output) == [
        ("images", "TYPE_FP32", [3, -1, -1]),
        ("TRANSFORM", "TYPE_FP32", [-1]),
    ]
    assert pre.parameters["EXECUTION_ENV_PATH"].string_value == "/envs/triton"
    assert [g.kind for g in pre.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    for python_model in ("m-preprocess", "m-postprocess"):
        version_dir = root / python_model / "1"
        assert sorted(p.name for p in version_dir.iterdir()) == ["model.py", "processing.py"]

    post = config(root, "m-postprocess")
    assert io(post.input) == [("output0", "TYPE_FP32", [84, -1]), ("TRANSFORM", "TYPE_FP32", [-1])]
    assert io(post.output) == [
        ("DETECTIONS", "TYPE_FP32", [-1, 6]),
        ("NUM_DETECTIONS", "TYPE_INT32", [1]),
    ]

    ensemble = config(root, "m-ensemble")
    assert ensemble.platform == "ensemble"
    assert ensemble.max_batch_size == 8
    assert io(ensemble.input) == [("IMAGE", "TYPE_STRING", [1])]
    assert io(ensemble.output) == io(post.output)
    steps = [
        (s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
        for s in ensemble.ensemble_scheduling.step
    ]
    assert steps == [
        ("m-preprocess", 1, {"IMAGE": "IMAGE"}, {"images": "images", "TRANSFORM": "TRANSFORM"}),
        ("m", 1, {"images": "images"}, {"output0": "output0"}),
        (
            "m-postprocess",
            1,
            {"output0": "output0", "TRANSFORM": "TRANSFORM"},
            {"DETECTIONS": "DETECTIONS", "NUM_DETECTIONS": "NUM_DETECTIONS"},
        ),
    ]
    # Triton needs an ensemble's version directory; a file keeps it in zips and object stores.
    assert any((root / "m-ensemble" / "1").iterdir())


def test_without_execution_env_the_python_models_use_tritons_own(tmp_path: Path) -> None:
    write(tmp_path / "repo", detect_metadata())

    assert "EXECUTION_ENV_PATH" not in config(tmp_path / "repo", "m-preprocess").parameters


def test_ultralytics_metadata_is_the_literal_its_triton_client_reads(tmp_path: Path) -> None:
    write(tmp_path / "repo", detect_metadata())

    literal = config(tmp_path / "repo", "m").parameters["metadata"].string_value
    # What ultralytics.utils.triton.TritonRemoteModel does with the config's parameters.
    assert ast.literal_eval(literal) == ULTRALYTICS_METADATA
    # Ultralytics' ONNX metadata holds every value as a string; its backend literal_evals those.
    as_strings = {k: str(v) for k, v in ULTRALYTICS_METADATA.items()}
    assert ast.literal_eval(ultralytics_literal(as_strings)) == as_strings
    with pytest.raises(ValueError, match="literal"):
        ultralytics_literal({"weights": Path("/w.pt")})

    class LooksLikeAString:
        def __repr__(self) -> str:
            return "'8.3'"

    with pytest.raises(ValueError, match="unchanged"):
        ultralytics_literal({"version": LooksLikeAString()})


def test_metadata_json_keeps_default_fields_and_special_characters(tmp_path: Path) -> None:
    metadata = detect_metadata()
    metadata.class_names[:2] = ['say "hi"\n', "名前"]
    metadata.pad_value = 0
    write(tmp_path / "repo", metadata)

    text = config(tmp_path / "repo", "m").parameters["visionmesh_metadata"].string_value
    assert text == metadata_json(metadata)
    import json

    parsed = json.loads(text)
    assert parsed["class_names"][:2] == ['say "hi"\n', "名前"]
    assert parsed["pad_value"] == 0
    assert parsed["nms_in_graph"] is False


def test_fixed_batch_one_keeps_a_batch_dimension_of_one(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    models = write(root, detect_metadata(batch=1, max_batch_size=1), max_batch_size=1)

    assert [m.name for m in models] == ["m", "m-preprocess", "m-postprocess", "m-ensemble"]
    exported = config(root, "m")
    assert exported.max_batch_size == 1
    assert io(exported.input) == [("images", "TYPE_FP32", [3, -1, -1])]
    assert config(root, "m-ensemble").max_batch_size == 1


def test_fixed_batch_above_one_is_served_as_is_without_an_ensemble(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    models = write(root, detect_metadata(batch=4, max_batch_size=4), max_batch_size=4)

    assert [m.name for m in models] == ["m"]
    assert sorted(p.name for p in root.iterdir()) == ["m"]
    exported = config(root, "m")
    assert exported.max_batch_size == 0
    assert io(exported.input) == [("images", "TYPE_FP32", [4, 3, -1, -1])]
    assert io(exported.output) == [("output0", "TYPE_FP32", [4, 84, -1])]
    # Triton rejects a dynamic batcher on a model without a batch dimension.
    assert not exported.HasField("dynamic_batching")


def test_with_a_plan_the_tensorrt_model_gets_its_own_ensemble(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    models = write(root, detect_metadata(), plan_path=plan)

    by_name = {m.name: m for m in models}
    assert by_name["m-trt"].platform == "tensorrt_plan"
    assert by_name["m-trt"].model.key == "m-trt/1/model.plan"
    assert (root / "m-trt/1/model.plan").read_bytes() == b"engine bytes"
    trt = config(root, "m-trt")
    assert trt.platform == "tensorrt_plan"
    assert io(trt.input) == io(config(root, "m").input)
    assert io(trt.output) == io(config(root, "m").output)
    assert set(trt.parameters) == {"metadata", "visionmesh_metadata"}
    trt_steps = [s.model_name for s in config(root, "m-trt-ensemble").ensemble_scheduling.step]
    assert trt_steps == ["m-preprocess", "m-trt", "m-postprocess"]
    onnx_steps = [s.model_name for s in config(root, "m-ensemble").ensemble_scheduling.step]
    assert onnx_steps == ["m-preprocess", "m", "m-postprocess"]


def test_classifier_outputs_probabilities_and_top_classes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, classify_metadata())

    assert io(config(root, "m-postprocess").output) == [
        ("PROBABILITIES", "TYPE_FP32", [CLASSIFY_CLASSES]),
        ("TOP_CLASSES", "TYPE_INT32", [5]),
        ("TOP_SCORES", "TYPE_FP32", [5]),
    ]
    assert io(config(root, "m-ensemble").output) == io(config(root, "m-postprocess").output)


def test_zip_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx graph bytes")
    zips = []
    for attempt, mtime in enumerate((1_000_000_000, 1_700_000_000)):
        root = tmp_path / f"attempt{attempt}" / "repo"
        write(root, detect_metadata(), onnx_path=onnx_path)
        for path in root.rglob("*"):
            os.utime(path, (mtime, mtime))
        zip_path = tmp_path / f"attempt{attempt}.zip"
        zip_repository(root, zip_path)
        zips.append(zip_path.read_bytes())

    assert zips[0] == zips[1]
    with zipfile.ZipFile(tmp_path / "attempt0.zip") as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert archive.read("m/1/model.onnx") == b"onnx graph bytes"
    on_disk = sorted(
        p.relative_to(tmp_path / "attempt0" / "repo").as_posix()
        for p in (tmp_path / "attempt0" / "repo").rglob("*")
        if p.is_file()
    )
    assert names == on_disk
    with pytest.raises(ValueError, match="inside"):
        zip_repository(tmp_path / "attempt0" / "repo", tmp_path / "attempt0" / "repo" / "r.zip")


def test_rewriting_into_the_same_root_replaces_the_earlier_attempt(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, detect_metadata())
    (root / "m" / "1" / "left-over").write_text("from a failed attempt")
    write(root, detect_metadata())

    assert sorted(p.name for p in (root / "m" / "1").iterdir()) == ["model.onnx"]


def test_python_standin_serves_the_onnx_model_through_the_python_backend(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, detect_metadata())
    before = config(root, "m")
    use_python_standin(root, "m", execution_env_path="/envs/triton")

    after = config(root, "m")
    assert after.backend == "python"
    assert after.platform == ""
    assert io(after.input) == io(before.input)
    assert io(after.output) == io(before.output)
    assert after.max_batch_size == before.max_batch_size
    assert after.dynamic_batching == before.dynamic_batching
    assert after.parameters["EXECUTION_ENV_PATH"].string_value == "/envs/triton"
    assert after.parameters["metadata"] == before.parameters["metadata"]
    assert (root / "m/1/model.py").is_file()
    assert (root / "m/1/model.onnx").is_file()
    with pytest.raises(ValueError, match="onnxruntime_onnx"):
        use_python_standin(root, "m-preprocess")


def _without_batch_flag(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    metadata.dynamic_batch = False
    return metadata


def _with_datatype(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    metadata.outputs[0].datatype = "COMPLEX64"
    return metadata


def _with_postprocess(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    metadata.postprocess = "pose"
    return metadata


def _without_outputs(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    del metadata.outputs[:]
    return metadata


def _with_scalar_output(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    del metadata.outputs[0].shape[:]
    return metadata


def _with_unnamed_output(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    metadata.outputs[0].name = ""
    return metadata


def _with_flat_input(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    metadata.input.shape[:] = [-1, 3 * IMGSZ * IMGSZ]
    return metadata


def _same(metadata: export_pb2.ModelMetadata) -> export_pb2.ModelMetadata:
    return metadata


@pytest.mark.parametrize(
    ("change", "overrides", "message"),
    [
        (_without_batch_flag, {}, "dynamic_batch"),
        (_with_datatype, {}, "datatype"),
        (_with_postprocess, {}, "postprocess"),
        (_without_outputs, {}, "outputs is empty"),
        (_with_scalar_output, {}, "no batch dimension"),
        (_with_unnamed_output, {}, "no name"),
        (_with_flat_input, {}, "NCHW"),
        (_same, {"name": "../escape"}, "model name"),
        (_same, {"max_batch_size": 0}, "max_batch_size"),
        (_same, {"version": 0}, "version"),
        (_same, {"instance_count": 0}, "instance_count"),
        (_same, {"max_queue_delay_microseconds": -1}, "max_queue_delay"),
    ],
)
def test_inconsistent_arguments_are_refused(
    tmp_path: Path, change: Any, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write(tmp_path / "repo", change(detect_metadata()), **overrides)


def test_missing_model_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write(tmp_path / "repo", detect_metadata(), plan_path=tmp_path / "missing.plan")
    write(tmp_path / "repo", detect_metadata())
    (tmp_path / "repo" / "m" / "1" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError):
        use_python_standin(tmp_path / "repo", "m")


def test_classifier_classes_come_from_names_or_the_output_shape(tmp_path: Path) -> None:
    metadata = classify_metadata()
    del metadata.class_names[:]
    write(tmp_path / "unnamed", metadata)
    probabilities = config(tmp_path / "unnamed", "m-postprocess").output[0]
    assert list(probabilities.dims) == [CLASSIFY_CLASSES]

    metadata.class_names[:] = ["cat", "dog"]
    with pytest.raises(ValueError, match="outputs 1000 classes"):
        write(tmp_path / "mismatch", metadata)
    metadata.outputs[0].shape[:] = [-1, -1]
    write(tmp_path / "named", metadata)
    assert io(config(tmp_path / "named", "m-postprocess").output)[1:] == [
        ("TOP_CLASSES", "TYPE_INT32", [2]),
        ("TOP_SCORES", "TYPE_FP32", [2]),
    ]
    del metadata.class_names[:]
    with pytest.raises(ValueError, match="class_names"):
        write(tmp_path / "neither", metadata)


def test_text_format_scalars() -> None:
    from visionmesh.export.core.triton._pbtxt import dumps

    assert dumps({"a": True, "b": 0.5, "c": [1, 2]}) == "a: true\nb: 0.5\nc: [1, 2]\n"
    with pytest.raises(TypeError, match="bytes"):
        dumps({"a": b"raw"})


def test_a_fixed_batch_must_match_max_batch_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fixed at 4"):
        write(tmp_path / "repo", detect_metadata(batch=4), max_batch_size=8)


# --- on a real Triton server --------------------------------------------------------------

Image = npt.NDArray[np.uint8]


def synthetic_images() -> list[Image]:
    """RGB images of different sizes: noise with a few solid rectangles."""
    rng = np.random.default_rng(1)
    images = []
    for height, width in IMAGE_SIZES:
        image = (rng.random((height, width, 3)) * 60).astype(np.uint8)
        for _ in range(4):
            x, y = (int(v) for v in rng.integers(0, (width - 20, height - 20)))
            w, h = (int(v) for v in rng.integers(10, 40, size=2))
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            cv2.rectangle(image, (x, y), (x + w, y + h), color, thickness=-1)
        images.append(image)
    return images


def png(image: Image) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


@dataclass(frozen=True)
class Exported:
    onnx_path: Path
    metadata: export_pb2.ModelMetadata
    ultralytics_metadata: dict[str, str]


def export_untrained(
    model_yaml: str, directory: Path, metadata: export_pb2.ModelMetadata, images: list[Image]
) -> Exported:
    """An untrained Ultralytics model, exported to ONNX (dynamic batch) by Ultralytics.

    A freshly initialised YOLO's features fade to nothing through its depth (PyTorch's
    default init shrinks them layer by layer), so every anchor scores the same ~1e-5. The
    BatchNorm statistics are set from the test images instead (one train-mode pass), which
    gives each layer unit-scale, image-dependent features; a detector's class biases are
    then raised from Ultralytics' -11.5 prior so scores spread around a few percent.
    """
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(model_yaml)
    network = yolo.model
    assert isinstance(network, torch.nn.Module)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: exactly this batch's statistics
    batch, _ = preprocess(images, metadata_dict(metadata))
    network.train()
    with torch.no_grad():
        network(torch.from_numpy(batch))
    network.eval()
    if metadata.task == "detect":
        with torch.no_grad():
            for branch in network.model[-1].cv3:
                branch[-1].bias.normal_(-4.0, 0.5)
    checkpoint = directory / f"{Path(model_yaml).stem}.pt"
    yolo.save(checkpoint)
    onnx_path = Path(
        YOLO(checkpoint).export(format="onnx", dynamic=True, imgsz=IMGSZ, simplify=True)
    )
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    return Exported(onnx_path, metadata, props)


def metadata_dict(metadata: export_pb2.ModelMetadata) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = json.loads(metadata_json(metadata))
    return parsed


@pytest.fixture(scope="module")
def images() -> list[Image]:
    return synthetic_images()


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory, images: list[Image]) -> Exported:
    return export_untrained(
        "yolo11n.yaml", tmp_path_factory.mktemp("detector"), detect_metadata(), images
    )


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, images: list[Image]) -> Exported:
    return export_untrained(
        "yolo11n-cls.yaml", tmp_path_factory.mktemp("classifier"), classify_metadata(), images
    )


def deploy(server: TritonServer, exported: Exported, name: str, root: Path) -> str:
    """Write the repository with the ONNX model on the Python stand-in; load its ensemble."""
    write_repository(
        root,
        name=name,
        version=1,
        onnx_path=exported.onnx_path,
        metadata=exported.metadata,
        ultralytics_metadata=exported.ultralytics_metadata,
        max_batch_size=8,
        dynamic_batching=True,
        max_queue_delay_microseconds=100,
        instance_count=1,
        execution_env_path=str(server.env_path),
    )
    use_python_standin(root, name, execution_env_path=str(server.env_path))
    server.add_repository(root)
    server.load_model(f"{name}-ensemble")
    return name


@pytest.fixture(scope="module")
def served_detector(
    triton_server: TritonServer, detector: Exported, tmp_path_factory: pytest.TempPathFactory
) -> str:
    return deploy(triton_server, detector, "yolo-detect", tmp_path_factory.mktemp("detect-repo"))


@pytest.fixture(scope="module")
def served_classifier(
    triton_server: TritonServer, classifier: Exported, tmp_path_factory: pytest.TempPathFactory
) -> str:
    return deploy(
        triton_server, classifier, "yolo-classify", tmp_path_factory.mktemp("classify-repo")
    )


def infer_images(
    server: TritonServer,
    model: str,
    encoded: Sequence[bytes],
    outputs: Sequence[str],
    parameters: dict[str, Any] | None = None,
) -> dict[str, npt.NDArray[Any]]:
    import tritonclient.grpc as grpcclient

    batch = np.array([[data] for data in encoded], dtype=np.object_)
    image_input = grpcclient.InferInput("IMAGE", list(batch.shape), "BYTES")
    image_input.set_data_from_numpy(batch)
    client = server.client()
    try:
        result = client.infer(model, [image_input], parameters=parameters)
    finally:
        client.close()
    return {name: result.as_numpy(name) for name in outputs}


def triton_detections(
    server: TritonServer,
    model: str,
    encoded: Sequence[bytes],
    parameters: dict[str, Any] | None = None,
) -> list[npt.NDArray[np.float32]]:
    found = infer_images(server, model, encoded, ("DETECTIONS", "NUM_DETECTIONS"), parameters)
    counts = found["NUM_DETECTIONS"].reshape(-1)
    assert found["DETECTIONS"].shape == (len(encoded), max(counts, default=0), 6)
    padding = [found["DETECTIONS"][i, n:] for i, n in enumerate(counts)]
    assert all(not rows.any() for rows in padding)
    return [found["DETECTIONS"][i, :n] for i, n in enumerate(counts)]


def box_iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    top_left = np.maximum(a64[:, :2], b64[:, :2])
    bottom_right = np.minimum(a64[:, 2:4], b64[:, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area_a = np.prod(a64[:, 2:4] - a64[:, :2], axis=1)
    area_b = np.prod(b64[:, 2:4] - b64[:, :2], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a + area_b - inter)
    # Two identical zero-area boxes (clipped to an edge) are the same box.
    return np.where((area_a + area_b - inter) == 0, 1.0, iou)


def assert_same_detections(got: npt.NDArray[np.float32], expected: npt.NDArray[np.float32]) -> None:
    """The ParityReport rule: IoU >= 0.99, same class, |score difference| <= 1e-3, in order."""
    assert got.shape == expected.shape, f"{len(got)} boxes, expected {len(expected)}"
    assert (box_iou(got, expected) >= 0.99).all()
    np.testing.assert_array_equal(got[:, 5], expected[:, 5])
    np.testing.assert_allclose(got[:, 4], expected[:, 4], atol=1e-3, rtol=0)


def ultralytics_predict(onnx_path: Path, task: str, images: list[Image]) -> list[Any]:
    """Ultralytics' own predictor on the exported ONNX model."""
    from ultralytics import YOLO

    model = YOLO(str(onnx_path), task=task)
    # Ultralytics takes numpy images as BGR.
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in images]
    return list(model.predict(bgr, imgsz=IMGSZ, conf=CONF, verbose=False))


@pytest.mark.timeout(300)
def test_detect_ensemble_on_triton_matches_onnxruntime_and_ultralytics(
    triton_server: TritonServer, served_detector: str, detector: Exported, images: list[Image]
) -> None:
    meta = metadata_dict(detector.metadata)
    session = onnxruntime.InferenceSession(
        str(detector.onnx_path), providers=["CPUExecutionProvider"]
    )
    batch, transforms = preprocess(images, meta)
    reference = detections(session.run(None, {"images": batch}), transforms, meta)
    assert all(len(found) > 0 for found in reference), "the test model finds nothing"
    encoded = [png(image) for image in images]

    one_by_one = [
        triton_detections(triton_server, f"{served_detector}-ensemble", [e])[0] for e in encoded
    ]
    batched = triton_detections(triton_server, f"{served_detector}-ensemble", encoded)

    ultralytics = [
        r.boxes.data.numpy() for r in ultralytics_predict(detector.onnx_path, "detect", images)
    ]
    for single, together, expected, theirs in zip(
        one_by_one, batched, reference, ultralytics, strict=True
    ):
        np.testing.assert_allclose(single, expected, atol=1e-3, rtol=1e-5)
        np.testing.assert_allclose(together, expected, atol=1e-3, rtol=1e-5)
        assert_same_detections(single, theirs)

    # A request's parameters override the metadata's NMS defaults.
    stricter = triton_detections(
        triton_server,
        f"{served_detector}-ensemble",
        encoded[:1],
        parameters={"conf": 0.2, "max_det": 3},
    )[0]
    expected_stricter = detections(
        session.run(None, {"images": batch[:1]}), transforms[:1], meta, conf=0.2, max_det=3
    )[0]
    assert 0 < len(stricter) <= 3
    np.testing.assert_allclose(stricter, expected_stricter, atol=1e-3, rtol=1e-5)


@pytest.mark.timeout(300)
def test_exported_model_describes_itself_to_ultralytics_triton_client(
    triton_server: TritonServer, served_detector: str, detector: Exported, images: list[Image]
) -> None:
    from ultralytics.utils.triton import TritonRemoteModel

    client = triton_server.client()
    try:
        served = client.get_model_config(served_detector, as_json=True)["config"]
    finally:
        client.close()
    assert ast.literal_eval(served["parameters"]["metadata"]["string_value"]) == (
        detector.ultralytics_metadata
    )

    remote = TritonRemoteModel(url=triton_server.grpc_url, endpoint=served_detector, scheme="grpc")
    assert remote.metadata == detector.ultralytics_metadata
    assert ast.literal_eval(remote.metadata["names"]) == {i: str(i) for i in range(DETECT_CLASSES)}
    batch, _ = preprocess(images, metadata_dict(detector.metadata))
    session = onnxruntime.InferenceSession(
        str(detector.onnx_path), providers=["CPUExecutionProvider"]
    )
    (raw,) = remote(batch)
    np.testing.assert_allclose(raw, session.run(None, {"images": batch})[0], atol=1e-4, rtol=1e-4)


@pytest.mark.timeout(300)
def test_classify_ensemble_on_triton_matches_onnxruntime_and_ultralytics(
    triton_server: TritonServer, served_classifier: str, classifier: Exported, images: list[Image]
) -> None:
    meta = metadata_dict(classifier.metadata)
    session = onnxruntime.InferenceSession(
        str(classifier.onnx_path), providers=["CPUExecutionProvider"]
    )
    batch, _ = preprocess(images, meta)
    (probabilities,) = session.run(None, {"images": batch})
    reference = classifications([probabilities], meta, top_k=5)

    found = infer_images(
        triton_server,
        f"{served_classifier}-ensemble",
        [png(image) for image in images],
        ("PROBABILITIES", "TOP_CLASSES", "TOP_SCORES"),
    )

    np.testing.assert_allclose(found["PROBABILITIES"], probabilities, atol=1e-5, rtol=1e-4)
    assert found["TOP_CLASSES"].tolist() == [[c for c, _ in top] for top in reference]
    np.testing.assert_allclose(
        found["TOP_SCORES"], [[p for _, p in top] for top in reference], atol=1e-5, rtol=1e-4
    )
    ultralytics = ultralytics_predict(classifier.onnx_path, "classify", images)
    assert found["TOP_CLASSES"][:, 0].tolist() == [int(r.probs.top1) for r in ultralytics]


@pytest.mark.timeout(300)
def test_an_undecodable_image_fails_its_request_with_the_reason(
    triton_server: TritonServer, served_detector: str
) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="IMAGE: cannot decode"):
        infer_images(
            triton_server, f"{served_detector}-ensemble", [b"not an image"], ["DETECTIONS"]
        )
