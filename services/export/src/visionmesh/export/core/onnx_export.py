"""Checkpoint to ONNX: Ultralytics' own exporter for its models, torch.onnx for torchvision.

Either way the file describes itself: the metadata Ultralytics' loader reads (names,
imgsz, stride, task, batch, args, ...) is in the model's metadata_props, so
`YOLO("model.onnx")` and the tools built on it find the class names without guessing.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import shutil
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.export.core.source import SourceModel

INPUT_NAME = "images"
# The exporters' own names; ONNX Runtime, Triton configs and Ultralytics' loader use them.
OUTPUT_NAMES = {"segment": ("output0", "output1")}
_MAX_IR_VERSION = 10  # ONNX Runtime releases lag onnx's IR; Ultralytics caps it the same way
# Keys of Ultralytics' metadata whose values it writes with str() and reads back with
# ast.literal_eval (nn/backends/base.py).
_LITERAL_KEYS = {"stride", "batch", "imgsz", "names", "kpt_shape", "args", "channels", "end2end"}


class ExportError(Exception):
    """The exporter could not write a usable graph for this model and spec."""


def output_names(task: str) -> tuple[str, ...]:
    return OUTPUT_NAMES.get(task, ("output0",))


def export_onnx(source: SourceModel, spec: export_pb2.ExportSpec, path: Path) -> Path:
    """Writes the FP32 ONNX model for `spec` to `path` (without in-graph NMS)."""
    try:
        if source.framework == "ultralytics":
            _export_ultralytics(source, spec, path)
        else:
            _export_torchvision(source, spec, path)
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise whatever torch.onnx raises
        raise ExportError(f"ONNX export failed: {exc}") from exc
    model = onnx.load(path)
    _pin_dims(model, spec)
    model.ir_version = min(model.ir_version, _MAX_IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _export_ultralytics(source: SourceModel, spec: export_pb2.ExportSpec, path: Path) -> None:
    dynamic = spec.dynamic_batch or spec.dynamic_size
    # The exporter writes next to the checkpoint it was loaded from.
    written = source.yolo.export(
        format="onnx",
        imgsz=spec.imgsz,
        opset=spec.opset,
        dynamic=dynamic,
        simplify=spec.simplify,
        batch=1 if dynamic else spec.max_batch_size,
        nms=False,
        device="cpu",
        verbose=False,
    )
    if not written or not Path(written).exists():
        raise ExportError("Ultralytics' exporter wrote no ONNX file")
    if Path(written).resolve() != path.resolve():
        shutil.move(written, path)


class _WithSoftmax(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def as_exported(source: SourceModel, spec: export_pb2.ExportSpec) -> SourceModel:
    """The PyTorch model computing what the exported graph computes (its parity reference)."""
    if source.framework == "torchvision" and spec.softmax:
        return dataclasses.replace(source, module=_WithSoftmax(source.module).eval())
    return source


def _export_torchvision(source: SourceModel, spec: export_pb2.ExportSpec, path: Path) -> None:
    model = as_exported(source, spec).module
    batch = 1 if spec.dynamic_batch else spec.max_batch_size
    sample = torch.zeros(batch, 3, spec.imgsz, spec.imgsz)
    axes: dict[str, dict[int, str]] = {}
    if spec.dynamic_batch:
        axes = {INPUT_NAME: {0: "batch"}, "output0": {0: "batch"}}
    if spec.dynamic_size:
        axes.setdefault(INPUT_NAME, {}).update({2: "height", 3: "width"})
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (sample,),
            str(path),
            opset_version=spec.opset,
            input_names=[INPUT_NAME],
            output_names=["output0"],
            dynamic_axes=axes or None,
            dynamo=False,
        )
    graph = onnx.load(path)
    if spec.simplify:
        import onnxslim

        graph = onnxslim.slim(graph)
    metadata = torchvision_metadata(source, spec)
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=str(value))
    onnx.save(graph, path)


def torchvision_metadata(source: SourceModel, spec: export_pb2.ExportSpec) -> dict[str, Any]:
    """Ultralytics' metadata keys for a torchvision classifier, so its loader reads it too."""
    from importlib.metadata import version

    return {
        "description": f"visionmesh {source.architecture} classifier (torchvision)",
        "author": "visionmesh",
        "date": datetime.now(UTC).isoformat(),
        "version": version("visionmesh-export"),
        "license": "",
        "docs": "",
        "stride": source.stride,
        "task": "classify",
        "batch": 1 if spec.dynamic_batch else spec.max_batch_size,
        "imgsz": [spec.imgsz, spec.imgsz],
        "names": dict(enumerate(source.class_names)),
        "args": {
            "batch": spec.max_batch_size,
            "half": False,
            "dynamic": spec.dynamic_batch,
            "nms": False,
        },
        "channels": 3,
        "end2end": False,
    }


def _pin_dims(model: onnx.ModelProto, spec: export_pb2.ExportSpec) -> None:
    """Only the axes the spec asks to be dynamic stay symbolic on the input.

    Ultralytics' dynamic=True frees batch, height and width together; a dynamic batch
    with a fixed image size is what serving wants (Triton's dynamic batcher, TensorRT
    profiles), so the input is pinned back to imgsz x imgsz.
    """
    (graph_input,) = [i for i in model.graph.input if i.name == INPUT_NAME]
    dims = graph_input.type.tensor_type.shape.dim
    pins = {}
    if not spec.dynamic_batch:
        pins[0] = spec.max_batch_size
    if not spec.dynamic_size:
        pins[2] = pins[3] = spec.imgsz
    for axis, value in pins.items():
        if dims[axis].dim_value != value:
            dims[axis].Clear()
            dims[axis].dim_value = value


def pin_output_shapes(path: Path, shapes: Mapping[str, Sequence[int]], batch_dynamic: bool) -> None:
    """Writes the measured output shapes into the graph (batch symbolic when dynamic)."""
    model = onnx.load(path)
    for output in model.graph.output:
        shape = shapes.get(output.name)
        if shape is None:
            continue
        dims = output.type.tensor_type.shape.dim
        for axis, size in enumerate(shape):
            if axis >= len(dims) or (axis == 0 and batch_dynamic):
                continue
            if dims[axis].dim_value != size:
                dims[axis].Clear()
                dims[axis].dim_value = int(size)
    onnx.save(model, path)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The metadata_props as Ultralytics' loader reads them (literals parsed)."""
    metadata: dict[str, Any] = {}
    for prop in model.metadata_props:
        value: Any = prop.value
        if prop.key in _LITERAL_KEYS:
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(prop.value)
        metadata[prop.key] = value
    return metadata


def write_metadata(model: onnx.ModelProto, metadata: Mapping[str, Any]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=str(value))


def tensor_infos(model: onnx.ModelProto, names: Sequence[str] | None = None) -> list[Any]:
    """(name, datatype, shape) of the graph's outputs (or of `names`), -1 for symbolic dims."""
    infos = []
    values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for name in names or [o.name for o in model.graph.output]:
        value = values[name]
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
        ]
        elem = value.type.tensor_type.elem_type
        infos.append(
            export_pb2.TensorInfo(name=name, datatype=_KSERVE_TYPES.get(elem, "FP32"), shape=dims)
        )
    return infos


_KSERVE_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.UINT8: "UINT8",
}
