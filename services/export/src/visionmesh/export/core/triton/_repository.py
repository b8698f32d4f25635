"""Triton model repositories that describe themselves and do their own pre/post-processing.

Layout under the repository root, for a model exported as `<name>`:

    <name>/config.pbtxt, <name>/<version>/model.onnx            onnxruntime_onnx
    <name>-trt/config.pbtxt, <name>-trt/<version>/model.plan    tensorrt_plan (with a plan)
    <name>-preprocess/...: model.py + processing.py             python: IMAGE bytes -> input
    <name>-postprocess/...: model.py + processing.py            python: outputs -> results
    <name>-ensemble/config.pbtxt                                IMAGE -> pre -> model -> post
    <name>-trt-ensemble/config.pbtxt                            the same over the TensorRT model

Every config carries the ModelMetadata JSON as parameter "visionmesh_metadata"; the exported
models also carry Ultralytics' metadata dict as parameter "metadata", a Python literal, which
is where Ultralytics' Triton client (`YOLO("grpc://host:port/<name>")`) reads names, stride,
imgsz and task from.

The ensemble's outputs:
- detect and segment: DETECTIONS FP32 [batch, k, 6] (x1, y1, x2, y2, score, class in original
  image pixels, best first) and NUM_DETECTIONS INT32 [batch, 1]. Images of one request find
  different numbers of boxes; a batched tensor must be rectangular, so k is the largest count
  in the request and the rows of image i after NUM_DETECTIONS[i] are zeros. Segment models
  return their boxes only (no masks).
- classify: PROBABILITIES FP32 [batch, classes], TOP_CLASSES INT32 [batch, k] and TOP_SCORES
  FP32 [batch, k], most probable first, k = min(5, classes).
Request parameters "conf", "iou" and "max_det" (detect and segment) override the metadata's
NMS defaults for that request.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from visionmesh.api.common.v1 import artifact_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.vision import PROCESSING_SOURCE
from visionmesh.export.core.triton import _pbtxt
from visionmesh.export.core.triton._pbtxt import Enum

_PYTHON_MODELS = Path(__file__).with_name("python_models")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# KServe v2 datatype (TensorInfo.datatype) -> Triton config data_type.
_DATA_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BF16": "TYPE_BF16",
    "BYTES": "TYPE_STRING",
}

DETECT_POSTPROCESS = ("yolo_detect", "yolo_segment")
CLASSIFY_POSTPROCESS = ("probabilities", "logits")
TOP_K = 5

IMAGE = "IMAGE"
TRANSFORM = "TRANSFORM"
DETECTIONS = "DETECTIONS"
NUM_DETECTIONS = "NUM_DETECTIONS"
PROBABILITIES = "PROBABILITIES"
TOP_CLASSES = "TOP_CLASSES"
TOP_SCORES = "TOP_SCORES"

# Fixed entries make a zip independent of when and where it was written.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_UNIX = 3


@dataclass(frozen=True)
class _Batching:
    """How the graph's batch dimension maps onto Triton's max_batch_size."""

    max_batch_size: int
    # Whether config dims leave out the leading batch dimension (max_batch_size > 0).
    strips_batch_dim: bool


def write_repository(
    root: Path,
    *,
    name: str,
    version: int,
    onnx_path: Path,
    metadata: export_pb2.ModelMetadata,
    ultralytics_metadata: Mapping[str, Any],
    max_batch_size: int,
    dynamic_batching: bool,
    max_queue_delay_microseconds: int,
    instance_count: int,
    plan_path: Path | None = None,
    execution_env_path: str | None = None,
) -> list[export_pb2.TritonModel]:
    """Write the model repository of one exported model under `root`; returns its models.

    `max_batch_size` is the largest batch of a dynamic-batch graph, or the graph's fixed
    batch. A graph fixed at batch B > 1 is served as is (max_batch_size 0, explicit dims) and
    gets no pre/post-processing models or ensemble: those feed the model one request's
    images at a time, which such a graph cannot take. The returned TritonModel refs carry
    only `key`, the file's path relative to `root`; every file under `root` belongs to the
    repository (processing.py next to each model.py too).
    """
    _check_arguments(
        name=name,
        version=version,
        onnx_path=onnx_path,
        plan_path=plan_path,
        max_queue_delay_microseconds=max_queue_delay_microseconds,
        instance_count=instance_count,
    )
    batching = _batching(metadata, max_batch_size)
    inputs = [_tensor_config(metadata.input, batching)]
    outputs = [_tensor_config(output, batching) for output in metadata.outputs]
    if not outputs:
        raise ValueError("metadata.outputs is empty")
    meta_json = metadata_json(metadata)
    scheduling = _scheduling(
        batching, dynamic_batching=dynamic_batching, delay=max_queue_delay_microseconds
    )
    exported_parameters = [
        _parameter("metadata", ultralytics_literal(ultralytics_metadata)),
        _parameter("visionmesh_metadata", meta_json),
    ]
    root.mkdir(parents=True, exist_ok=True)
    models: list[export_pb2.TritonModel] = []

    def exported(model: str, platform: str, source: Path, filename: str) -> None:
        config: dict[str, Any] = {
            "name": model,
            "platform": platform,
            "max_batch_size": batching.max_batch_size,
            "input": inputs,
            "output": outputs,
            **scheduling,
            # KIND_AUTO: Triton puts the instances on the GPUs when it has any, else on the
            # CPU; pinning a kind is a deployment's choice, not the export's.
            "instance_group": [{"count": instance_count, "kind": Enum("KIND_AUTO")}],
            "parameters": exported_parameters,
        }
        directory = _fresh_model_dir(root, model, version)
        shutil.copyfile(source, directory / str(version) / filename)
        models.append(_write_config(root, model, platform, version, config, filename))

    exported(name, "onnxruntime_onnx", onnx_path, "model.onnx")
    if plan_path is not None:
        exported(f"{name}-trt", "tensorrt_plan", plan_path, "model.plan")
    if batching.max_batch_size == 0:
        # A graph fixed at batch B > 1: no pre/post-processing models and no ensemble (see
        # the docstring), so the list names the exported models only.
        return models

    python_parameters = [_parameter("visionmesh_metadata", meta_json)]
    if execution_env_path is not None:
        python_parameters.append(_parameter("EXECUTION_ENV_PATH", execution_env_path))
    python_common = {
        "backend": "python",
        "max_batch_size": batching.max_batch_size,
    }
    # Decoding, resizing and NMS are numpy and OpenCV on the CPU whatever the server has.
    python_instances = {"instance_group": [{"count": instance_count, "kind": Enum("KIND_CPU")}]}
    input_name = metadata.input.name
    transform = {"name": TRANSFORM, "data_type": Enum("TYPE_FP32"), "dims": [-1]}
    results = _result_outputs(metadata)

    preprocess = f"{name}-preprocess"
    models.append(
        _write_python_model(
            root,
            preprocess,
            version,
            "preprocess.py",
            {
                "name": preprocess,
                **python_common,
                "input": [{"name": IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
                "output": [{**inputs[0]}, transform],
                **scheduling,
                **python_instances,
                "parameters": python_parameters,
            },
        )
    )
    postprocess = f"{name}-postprocess"
    models.append(
        _write_python_model(
            root,
            postprocess,
            version,
            "postprocess.py",
            {
                "name": postprocess,
                **python_common,
                "input": [*outputs, transform],
                "output": results,
                **scheduling,
                **python_instances,
                "parameters": python_parameters,
            },
        )
    )
    targets = [(f"{name}-ensemble", name)]
    if plan_path is not None:
        targets.append((f"{name}-trt-ensemble", f"{name}-trt"))
    for ensemble, target in targets:
        models.append(
            _write_ensemble(
                root,
                ensemble,
                version,
                {
                    "name": ensemble,
                    "platform": "ensemble",
                    "max_batch_size": batching.max_batch_size,
                    "input": [{"name": IMAGE, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
                    "output": results,
                    "ensemble_scheduling": {
                        "step": [
                            _step(preprocess, version, [IMAGE], [input_name, TRANSFORM]),
                            _step(target, version, [input_name], [o["name"] for o in outputs]),
                            _step(
                                postprocess,
                                version,
                                [*(o["name"] for o in outputs), TRANSFORM],
                                [o["name"] for o in results],
                            ),
                        ]
                    },
                    "parameters": [_parameter("visionmesh_metadata", meta_json)],
                },
            )
        )
    return models


def use_python_standin(root: Path, name: str, *, execution_env_path: str | None = None) -> None:
    """Serve `<name>` (an onnxruntime_onnx model) through the Python backend instead.

    For Triton builds without the ONNX Runtime backend (CPU test servers): the model then
    runs the same model.onnx with onnxruntime on the CPU, with the same inputs, outputs,
    batching and parameters, so ensembles over it work unchanged. The environment of
    `execution_env_path` (or Triton's own Python) needs numpy and onnxruntime.
    """
    config_path = root / name / "config.pbtxt"
    text = config_path.read_text()
    platform_line = 'platform: "onnxruntime_onnx"\n'
    if text.count(platform_line) != 1:
        raise ValueError(f"{config_path} is not an onnxruntime_onnx model written by this module")
    text = text.replace(platform_line, 'backend: "python"\n')
    if execution_env_path is not None:
        text += _pbtxt.dumps({"parameters": [_parameter("EXECUTION_ENV_PATH", execution_env_path)]})
    versions = sorted(
        p for p in (root / name).iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()
    )
    if not versions:
        raise FileNotFoundError(f"no <version>/model.onnx under {root / name}")
    for directory in versions:
        shutil.copyfile(_PYTHON_MODELS / "onnx_standin.py", directory / "model.py")
    config_path.write_text(text)


def zip_repository(root: Path, zip_path: Path) -> None:
    """Zip the repository (its model directories at the top level) reproducibly.

    Entries are sorted and carry fixed timestamps and permissions, so the same repository
    always gives the same bytes: a redelivered export job rewrites an identical object.
    """
    root = root.resolve()
    target = zip_path.resolve()
    if target.is_relative_to(root):
        raise ValueError(f"the zip {zip_path} cannot be written inside the repository {root}")
    files = sorted(
        (p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_DATE_TIME)
            info.create_system = _ZIP_UNIX
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=6)


def metadata_json(metadata: export_pb2.ModelMetadata) -> str:
    """ModelMetadata as the JSON the Python models read: proto field names, every field.

    Fields at their defaults are written too (pad_value 0, nms_in_graph false), so a reader
    never has to know proto3's defaults; keys are sorted so the same metadata gives the same
    text.
    """
    as_dict = json_format.MessageToDict(
        metadata,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    return json.dumps(as_dict, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def ultralytics_literal(metadata: Mapping[str, Any]) -> str:
    """Ultralytics' metadata dict as the Python literal its Triton client `literal_eval`s."""
    as_dict = dict(metadata)
    text = repr(as_dict)
    try:
        round_trip = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"Ultralytics metadata is not a Python literal: {exc}") from exc
    if round_trip != as_dict:
        raise ValueError("Ultralytics metadata does not survive literal_eval unchanged")
    return text


def _check_arguments(
    *,
    name: str,
    version: int,
    onnx_path: Path,
    plan_path: Path | None,
    max_queue_delay_microseconds: int,
    instance_count: int,
) -> None:
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' and '-'")
    if version < 1:
        raise ValueError(f"version must be positive, got {version}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be positive, got {instance_count}")
    if max_queue_delay_microseconds < 0:
        raise ValueError(
            f"max_queue_delay_microseconds must be >= 0, got {max_queue_delay_microseconds}"
        )
    for path in (onnx_path, plan_path):
        if path is not None and not path.is_file():
            raise FileNotFoundError(path)


def _batching(metadata: export_pb2.ModelMetadata, max_batch_size: int) -> _Batching:
    shape = list(metadata.input.shape)
    if len(shape) != 4:
        raise ValueError(f"metadata.input.shape must be NCHW, got {shape}")
    batch = shape[0]
    if (batch < 0) != metadata.dynamic_batch:
        raise ValueError(
            f"metadata.dynamic_batch is {metadata.dynamic_batch} but the input's batch "
            f"dimension is {batch}"
        )
    if batch < 0:
        if max_batch_size < 1:
            raise ValueError(f"a dynamic batch needs max_batch_size >= 1, got {max_batch_size}")
        return _Batching(max_batch_size=max_batch_size, strips_batch_dim=True)
    if max_batch_size != batch:
        raise ValueError(
            f"the graph's batch is fixed at {batch} but max_batch_size is {max_batch_size}"
        )
    if batch == 1:
        # Triton's batch dimension of size at most 1 is exactly the graph's fixed one.
        return _Batching(max_batch_size=1, strips_batch_dim=True)
    # A fixed batch B > 1: Triton cannot fill it from requests, so the model is served with
    # its full shape and a client sends exactly B images.
    return _Batching(max_batch_size=0, strips_batch_dim=False)


def _tensor_config(tensor: export_pb2.TensorInfo, batching: _Batching) -> dict[str, Any]:
    data_type = _DATA_TYPES.get(tensor.datatype.upper())
    if data_type is None:
        raise ValueError(f"tensor {tensor.name!r} has an unknown datatype {tensor.datatype!r}")
    if not tensor.name:
        raise ValueError("a tensor in the metadata has no name")
    dims = [int(d) for d in tensor.shape]
    if batching.strips_batch_dim:
        if not dims:
            raise ValueError(f"tensor {tensor.name!r} has no batch dimension")
        dims = dims[1:]
    return {"name": tensor.name, "data_type": Enum(data_type), "dims": dims}


def _scheduling(batching: _Batching, *, dynamic_batching: bool, delay: int) -> dict[str, Any]:
    # Triton rejects a dynamic batcher on a model without a batch dimension.
    if not dynamic_batching or batching.max_batch_size == 0:
        return {}
    return {"dynamic_batching": {"max_queue_delay_microseconds": delay}}


def _parameter(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"string_value": value}}


def _result_outputs(metadata: export_pb2.ModelMetadata) -> list[dict[str, Any]]:
    fp32, int32 = Enum("TYPE_FP32"), Enum("TYPE_INT32")
    if metadata.postprocess in DETECT_POSTPROCESS:
        return [
            {"name": DETECTIONS, "data_type": fp32, "dims": [-1, 6]},
            {"name": NUM_DETECTIONS, "data_type": int32, "dims": [1]},
        ]
    if metadata.postprocess in CLASSIFY_POSTPROCESS:
        classes = _class_count(metadata)
        k = min(TOP_K, classes)
        return [
            {"name": PROBABILITIES, "data_type": fp32, "dims": [classes]},
            {"name": TOP_CLASSES, "data_type": int32, "dims": [k]},
            {"name": TOP_SCORES, "data_type": fp32, "dims": [k]},
        ]
    raise ValueError(
        f"metadata.postprocess {metadata.postprocess!r} is not one of "
        f"{DETECT_POSTPROCESS + CLASSIFY_POSTPROCESS}"
    )


def _class_count(metadata: export_pb2.ModelMetadata) -> int:
    shape = list(metadata.outputs[0].shape)
    if metadata.class_names:
        if shape and shape[-1] > 0 and shape[-1] != len(metadata.class_names):
            raise ValueError(
                f"the classifier outputs {shape[-1]} classes but the metadata names "
                f"{len(metadata.class_names)}"
            )
        return len(metadata.class_names)
    if shape and shape[-1] > 0:
        return int(shape[-1])
    raise ValueError("a classifier needs class_names or a fixed class dimension in its output")


def _step(
    model: str, version: int, inputs: Sequence[str], outputs: Sequence[str]
) -> dict[str, Any]:
    # Tensors keep their names across the ensemble, so each map is the identity.
    return {
        "model_name": model,
        "model_version": version,
        "input_map": [{"key": tensor, "value": tensor} for tensor in inputs],
        "output_map": [{"key": tensor, "value": tensor} for tensor in outputs],
    }


def _fresh_model_dir(root: Path, model: str, version: int) -> Path:
    # A redelivered job writing into the same root replaces what an earlier attempt left.
    directory = root / model
    if directory.exists():
        shutil.rmtree(directory)
    (directory / str(version)).mkdir(parents=True)
    return directory


def _write_config(
    root: Path,
    model: str,
    platform: str,
    version: int,
    config: Mapping[str, Any],
    filename: str | None,
) -> export_pb2.TritonModel:
    config_key = f"{model}/config.pbtxt"
    (root / config_key).write_text(_pbtxt.dumps(config))
    result = export_pb2.TritonModel(
        name=model,
        platform=platform,
        version=version,
        config=artifact_pb2.ArtifactRef(key=config_key),
    )
    if filename is not None:
        result.model.CopyFrom(artifact_pb2.ArtifactRef(key=f"{model}/{version}/{filename}"))
    return result


def _write_python_model(
    root: Path, model: str, version: int, source: str, config: Mapping[str, Any]
) -> export_pb2.TritonModel:
    version_dir = _fresh_model_dir(root, model, version) / str(version)
    shutil.copyfile(_PYTHON_MODELS / source, version_dir / "model.py")
    # model.py imports it from its own directory: Triton's Python has no visionmesh.
    shutil.copyfile(PROCESSING_SOURCE, version_dir / "processing.py")
    return _write_config(root, model, "python", version, config, "model.py")


def _write_ensemble(
    root: Path, model: str, version: int, config: Mapping[str, Any]
) -> export_pb2.TritonModel:
    version_dir = _fresh_model_dir(root, model, version) / str(version)
    # Triton needs the version directory of an ensemble even though it holds no model; a file
    # keeps it in object stores and zips, which have no empty directories.
    (version_dir / "ensemble.txt").write_text(
        "An ensemble has no model file; see ../config.pbtxt for its steps.\n"
    )
    return _write_config(root, model, "ensemble", version, config, None)
