"""One export, start to finish on local disk: load, export, verify, package.

Nothing leaves the work directory here; the worker uploads the package only after every
check passed, so a failed or cancelled export leaves nothing behind in the object store.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from google.protobuf import json_format
from visionmesh.api.export.v1 import export_pb2
from visionmesh.export.core.metadata import metadata_dict, metadata_json, model_metadata
from visionmesh.export.core.nms_graph import append_nms
from visionmesh.export.core.onnx_export import (
    INPUT_NAME,
    as_exported,
    export_onnx,
    output_names,
    pin_output_shapes,
    read_metadata,
    write_metadata,
)
from visionmesh.export.core.parity import ParityInputs, check_parity, onnx_runner
from visionmesh.export.core.source import SourceModel, load_source
from visionmesh.export.core.tensorrt import TensorRtError, build_engine, engine_runner
from visionmesh.export.core.triton import write_repository, zip_repository

PHASES = ("load", "export", "parity", "package", "upload")
"""Progress phases of an export job, in order (the worker reports "upload")."""

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
METADATA_FILE = "metadata.json"
PARITY_FILE = "parity.json"
TRITON_DIR = "triton"
TRITON_ZIP = "triton.zip"


class ParityFailed(Exception):
    """The exported model does not compute what the PyTorch model computes."""

    def __init__(self, report: export_pb2.ParityReport) -> None:
        super().__init__(f"{report.format} parity check failed: {report.failure}")
        self.report = report


class Stopped(Exception):
    """The job was cancelled or the worker is stopping; nothing was produced."""


@dataclass(frozen=True)
class ExportTarget:
    """What the registry knows about the model version being exported."""

    spec: export_pb2.ExportSpec
    model_version_id: str
    model_name: str
    model_version: int
    framework: str
    task: str
    architecture: str
    class_names: tuple[str, ...]
    imgsz: int


@dataclass
class ExportPackage:
    """The files of a finished export under `root`, and what describes them."""

    root: Path
    spec: export_pb2.ExportSpec
    metadata: export_pb2.ModelMetadata
    parity: export_pb2.ParityReport
    triton_models: list[export_pb2.TritonModel]
    tensorrt_parity: export_pb2.ParityReport | None = None
    tensorrt_build: export_pb2.TensorRtBuild | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    def files(self) -> list[Path]:
        """Every file of the package, the Triton repository folder included, sorted."""
        return sorted(p for p in self.root.rglob("*") if p.is_file())


def triton_model_name(target: ExportTarget) -> str:
    name = target.spec.triton.model_name or f"{target.model_name}-v{target.model_version}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def run_export(
    target: ExportTarget,
    checkpoint: Path,
    workdir: Path,
    inputs: ParityInputs,
    *,
    on_phase: Callable[[str], None],
    should_stop: Callable[[], bool],
) -> ExportPackage:
    """Exports `checkpoint` per `target.spec` into `workdir / "package"`."""
    spec = target.spec
    seconds: dict[str, float] = {}
    package = workdir / "package"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)

    def phase(name: str) -> None:
        if should_stop():
            raise Stopped
        on_phase(name)
        seconds[name] = time.perf_counter()

    phase("load")
    source = load_source(
        checkpoint,
        framework=target.framework,
        task=target.task,
        class_names=target.class_names,
        imgsz=target.imgsz,
        architecture=target.architecture,
    )
    phase("export")
    names = output_names(source.task)
    nms = spec.nms and source.task == "detect" and not source.end2end
    raw_path = workdir / "raw.onnx" if nms else package / ONNX_FILE
    export_onnx(source, spec, raw_path)
    _pin_outputs(raw_path, spec, source)
    if nms:
        _write_nms_graph(raw_path, package / ONNX_FILE, source, spec)
    final = onnx.load(package / ONNX_FILE)
    metadata = model_metadata(
        source,
        spec,
        final,
        model_version_id=target.model_version_id,
        nms_in_graph=nms or (source.end2end and source.task == "detect"),
    )
    ultralytics_metadata = read_metadata(final)
    phase("parity")
    meta = metadata_dict(metadata)
    source = as_exported(source, spec)
    report = check_parity(
        source,
        spec,
        # The graph checked first is the one before any appended NMS.
        {**meta, "nms_in_graph": source.end2end and source.task == "detect"},
        inputs,
        onnx_runner(raw_path),
        output_names=names,
        nms_graph=onnx_runner(package / ONNX_FILE) if nms else None,
    )
    if not report.passed:
        raise ParityFailed(report)
    result = ExportPackage(
        root=package, spec=spec, metadata=metadata, parity=report, triton_models=[]
    )
    if "tensorrt" in spec.formats:
        phase("tensorrt")
        _tensorrt(result, source, spec, meta, inputs, package / ONNX_FILE, names)
    phase("package")
    (package / METADATA_FILE).write_text(metadata_json(metadata))
    (package / PARITY_FILE).write_text(_parity_json(result))
    result.triton_models = write_repository(
        package / TRITON_DIR,
        name=triton_model_name(target),
        version=spec.triton.version,
        onnx_path=package / ONNX_FILE,
        metadata=metadata,
        ultralytics_metadata=ultralytics_metadata,
        max_batch_size=spec.max_batch_size,
        dynamic_batching=spec.dynamic_batch,
        max_queue_delay_microseconds=spec.triton.max_queue_delay_microseconds,
        instance_count=spec.triton.instance_count,
        plan_path=package / PLAN_FILE if result.tensorrt_build is not None else None,
    )
    zip_repository(package / TRITON_DIR, package / TRITON_ZIP)
    if should_stop():
        raise Stopped
    ends = [*list(seconds.values())[1:], time.perf_counter()]
    result.seconds = {
        name: end - start for (name, start), end in zip(seconds.items(), ends, strict=True)
    }
    return result


def _pin_outputs(path: Path, spec: export_pb2.ExportSpec, source: SourceModel) -> None:
    """Measures the output shapes with ONNX Runtime and writes them into the graph."""
    import numpy as np

    batch = 1 if spec.dynamic_batch else spec.max_batch_size
    outputs = onnx_runner(path)(np.zeros((batch, 3, spec.imgsz, spec.imgsz), np.float32))
    shapes = {
        name: out.shape for name, out in zip(output_names(source.task), outputs, strict=False)
    }
    if not spec.dynamic_size:
        pin_output_shapes(path, shapes, batch_dynamic=spec.dynamic_batch)


def _write_nms_graph(
    raw_path: Path, path: Path, source: SourceModel, spec: export_pb2.ExportSpec
) -> None:
    settings = spec.nms_settings
    graph = append_nms(
        onnx.load(raw_path),
        num_classes=len(source.class_names),
        iou=settings.iou,
        conf=settings.conf,
        max_det=settings.max_det,
        agnostic=settings.agnostic,
    )
    # Ultralytics' loader treats a graph whose args say nms=True as end-to-end: output0
    # is then read as final detections, exactly the layout append_nms writes.
    metadata = read_metadata(graph)
    metadata["args"] = {**(metadata.get("args") or {}), "nms": True}
    write_metadata(graph, metadata)
    onnx.save(graph, path)


def _tensorrt(
    result: ExportPackage,
    source: SourceModel,
    spec: export_pb2.ExportSpec,
    meta: dict[str, object],
    inputs: ParityInputs,
    onnx_path: Path,
    names: tuple[str, ...],
) -> None:
    if result.metadata.nms_in_graph:
        # The engine would carry NonMaxSuppression, whose TensorRT plugin this build has
        # not been verified with on a GPU; refuse rather than ship an unchecked engine.
        raise TensorRtError("TensorRT engines of graphs with in-graph NMS are not built yet")
    device = int(spec.device.split(":")[1]) if spec.device.startswith("cuda:") else 0
    batch = spec.max_batch_size
    profile = (1, max(1, batch // 2), batch) if spec.dynamic_batch else (batch, batch, batch)
    build = build_engine(
        onnx_path,
        result.root / PLAN_FILE,
        input_name=INPUT_NAME,
        input_shape=(3, spec.imgsz, spec.imgsz),
        batch_profile=profile,
        fp16=spec.half,
        device=device,
    )
    result.tensorrt_build = build
    # FP16 kernels cannot meet FP32 tolerances element-wise; the detections must still match.
    tolerance = export_pb2.ParityTolerance(atol=1e-1, rtol=1e-1) if spec.half else spec.parity
    checked = export_pb2.ExportSpec()
    checked.CopyFrom(spec)
    checked.parity.CopyFrom(tolerance)
    report = check_parity(
        source,
        checked,
        meta,
        inputs,
        engine_runner(result.root / PLAN_FILE, device=device),
        output_names=names,
        format_name="tensorrt",
    )
    result.tensorrt_parity = report
    if not report.passed:
        raise ParityFailed(report)


def _parity_json(result: ExportPackage) -> str:
    def as_dict(report: export_pb2.ParityReport) -> dict[str, object]:
        return json_format.MessageToDict(
            report, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    document: dict[str, object] = {"onnx": as_dict(result.parity)}
    if result.tensorrt_parity is not None:
        document["tensorrt"] = as_dict(result.tensorrt_parity)
    return json.dumps(document, indent=2, sort_keys=True)
