"""The export spec's rules: validation against what a deployment can export, and its defaults.

Shared by the gateway, which checks a spec when an export job is created (with the export
service's capabilities when it answers, else `UNCONFIRMED_CAPABILITIES`), and the export
service, which answers ValidateSpec and checks each job again before it runs. Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.errors import FailedPrecondition, FieldViolation, InvalidArgument

__all__ = [
    "DEFAULT_MAX_BATCH_DYNAMIC",
    "DEFAULT_NMS",
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "EXPORT_FRAMEWORKS",
    "EXPORT_FRAMEWORK_TASKS",
    "EXPORT_TASKS",
    "NMS_MIN_OPSET",
    "SUPPORTED_OPSETS",
    "TENSORRT_UNCONFIRMED",
    "UNCONFIRMED_CAPABILITIES",
    "ExportCapabilities",
    "FormatSupport",
    "check_export_spec",
]

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "tensorrt")
"""Every format, in the order a normalised `spec.formats` lists them."""
EXPORT_TASKS: tuple[str, ...] = ("detect", "classify", "segment")
EXPORT_FRAMEWORKS: tuple[str, ...] = ("ultralytics", "torchvision")
EXPORT_FRAMEWORK_TASKS: Mapping[str, tuple[str, ...]] = {
    "ultralytics": EXPORT_TASKS,
    "torchvision": ("classify",),
}

# torch 2.14's TorchScript ONNX exporter (the one Ultralytics and the export worker use)
# writes opsets 7..20 (torch.onnx._constants: ONNX_MIN_OPSET, ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
# and onnxruntime 1.31 runs them all; below 11 the exporter lacks ops the models need
# (Resize with scales for the upsampling in YOLO necks, NonMaxSuppression for in-graph NMS).
SUPPORTED_OPSETS: tuple[int, ...] = tuple(range(11, 21))
DEFAULT_OPSET = 17
"""Ultralytics' and torch's own default for the TorchScript exporter."""
NMS_MIN_OPSET = 11
"""NonMaxSuppression (and TopK with a dynamic k) enter the ONNX operator set at 11."""

DEFAULT_MAX_BATCH_DYNAMIC = 16
DEFAULT_NMS = export_pb2.NmsSettings(iou=0.7, conf=0.25, max_det=300)
"""Ultralytics predict's defaults."""
_MAX_DET_LIMIT = 10_000
_DEFAULT_TOLERANCE = 1e-3
_DEFAULT_TRITON_QUEUE_DELAY_US = 100

TENSORRT_UNCONFIRMED = "no export service answered, so TensorRT could not be confirmed"


@dataclass(frozen=True, slots=True)
class FormatSupport:
    """One export format and whether this deployment can produce it."""

    name: str
    available: bool
    reason: str = ""
    """Why not, when unavailable."""
    library_version: str = ""
    """Version of the library producing it; empty when unavailable or unknown."""


@dataclass(frozen=True, slots=True)
class ExportCapabilities:
    """What an export deployment can do: the contract's GetCapabilitiesResponse."""

    formats: tuple[FormatSupport, ...]
    opsets: tuple[int, ...]
    default_opset: int
    devices: tuple[str, ...]

    def format(self, name: str) -> FormatSupport:
        """The named format's support; a format this deployment does not list is unavailable."""
        for support in self.formats:
            if support.name == name:
                return support
        return FormatSupport(name, available=False, reason=f"{name} is not offered here")

    def to_proto(self) -> export_pb2.GetCapabilitiesResponse:
        return export_pb2.GetCapabilitiesResponse(
            formats=[
                export_pb2.ExportFormat(
                    name=f.name,
                    available=f.available,
                    unavailable_reason=f.reason,
                    library_version=f.library_version,
                )
                for f in self.formats
            ],
            opsets=self.opsets,
            default_opset=self.default_opset,
            devices=self.devices,
        )

    @classmethod
    def from_proto(cls, response: export_pb2.GetCapabilitiesResponse) -> ExportCapabilities:
        return cls(
            formats=tuple(
                FormatSupport(
                    name=f.name,
                    available=f.available,
                    reason=f.unavailable_reason,
                    library_version=f.library_version,
                )
                for f in response.formats
            ),
            opsets=tuple(response.opsets),
            default_opset=response.default_opset,
            devices=tuple(response.devices),
        )


UNCONFIRMED_CAPABILITIES = ExportCapabilities(
    formats=(
        FormatSupport("onnx", available=True),
        FormatSupport("tensorrt", available=False, reason=TENSORRT_UNCONFIRMED),
    ),
    opsets=SUPPORTED_OPSETS,
    default_opset=DEFAULT_OPSET,
    devices=("cpu",),
)
"""What the gateway assumes when no export service answers: ONNX on the CPU, nothing more."""


def _opset_range(opsets: tuple[int, ...]) -> str:
    ordered = sorted(opsets)
    if ordered and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(str(o) for o in ordered)


class _Problems:
    """Violations found so far: request errors and what this deployment cannot do."""

    def __init__(self) -> None:
        self.invalid: list[FieldViolation] = []
        self.unavailable: list[FieldViolation] = []

    def bad(self, field: str, description: str) -> None:
        self.invalid.append(FieldViolation(field=field, description=description))

    def cannot(self, field: str, description: str) -> None:
        self.unavailable.append(FieldViolation(field=field, description=description))

    def raise_any(self) -> None:
        # A malformed request is reported first: fixing it may change what is asked of
        # the deployment.
        if self.invalid:
            raise InvalidArgument(
                "invalid export spec: " + _summary(self.invalid), field_violations=self.invalid
            )
        if self.unavailable:
            raise FailedPrecondition(
                "this deployment cannot export that: " + _summary(self.unavailable),
                field_violations=self.unavailable,
            )


def _summary(violations: list[FieldViolation]) -> str:
    return "; ".join(f"{v.field}: {v.description}" for v in violations)


def _check_model(framework: str, task: str, problems: _Problems) -> None:
    if framework and framework not in EXPORT_FRAMEWORKS:
        problems.bad(
            "model_framework",
            f"cannot export {framework!r} models; one of {', '.join(EXPORT_FRAMEWORKS)}",
        )
    if not task:
        return
    tasks = EXPORT_FRAMEWORK_TASKS.get(framework, EXPORT_TASKS)
    if task not in tasks:
        owner = f"{framework} " if framework in EXPORT_FRAMEWORKS else ""
        problems.bad(
            "model_task", f"cannot export {owner}{task!r} models; one of {', '.join(tasks)}"
        )


def _formats(
    spec: export_pb2.ExportSpec, capabilities: ExportCapabilities, problems: _Problems
) -> list[str]:
    asked = set(spec.formats) or {"onnx"}
    unknown = sorted(asked - set(EXPORT_FORMATS))
    if unknown:
        problems.bad(
            "spec.formats",
            f"unknown format {', '.join(map(repr, unknown))}; one of {', '.join(EXPORT_FORMATS)}",
        )
    if "tensorrt" in asked:
        asked.add("onnx")
    formats = [name for name in EXPORT_FORMATS if name in asked]
    for name in formats:
        support = capabilities.format(name)
        if not support.available:
            problems.cannot("spec.formats", f"{name} is unavailable: {support.reason}")
    return formats


def _device(
    spec: export_pb2.ExportSpec,
    formats: list[str],
    capabilities: ExportCapabilities,
    problems: _Problems,
) -> str:
    device = spec.device or "auto"
    if device in ("auto", "cpu"):
        if device == "cpu" and "tensorrt" in formats:
            problems.bad("spec.device", "the tensorrt format needs a cuda device, not 'cpu'")
        return device
    wanted = "cuda:0" if device == "cuda" else device
    if wanted not in capabilities.devices:
        problems.cannot(
            "spec.device",
            f"{device!r} is not a device of the export service; it has "
            f"{', '.join(capabilities.devices) or 'none'}",
        )
    return device


def _opset(
    spec: export_pb2.ExportSpec, capabilities: ExportCapabilities, problems: _Problems
) -> int:
    opset = spec.opset if spec.HasField("opset") else capabilities.default_opset
    if opset not in capabilities.opsets:
        problems.bad(
            "spec.opset",
            f"opset {opset} is not supported; one of {_opset_range(capabilities.opsets)}",
        )
    elif spec.nms and opset < NMS_MIN_OPSET:
        problems.bad("spec.opset", f"nms needs opset >= {NMS_MIN_OPSET}, got {opset}")
    return opset


def _imgsz(spec: export_pb2.ExportSpec, model_imgsz: int, problems: _Problems) -> int | None:
    if spec.HasField("imgsz"):
        if spec.imgsz <= 0 or spec.imgsz % 32:
            problems.bad("spec.imgsz", f"must be a positive multiple of 32, got {spec.imgsz}")
        return spec.imgsz
    if model_imgsz <= 0:
        # Unknown here (a bare ValidateSpec call); the worker knows the model's and fills it.
        return None
    if model_imgsz % 32:
        problems.bad(
            "spec.imgsz",
            f"the model was trained at {model_imgsz} px, not a multiple of 32: "
            "set imgsz to a multiple of 32",
        )
    return model_imgsz


def _nms_settings(spec: export_pb2.ExportSpec, problems: _Problems) -> export_pb2.NmsSettings:
    given = spec.nms_settings
    settings = export_pb2.NmsSettings(
        iou=given.iou or DEFAULT_NMS.iou,
        conf=given.conf or DEFAULT_NMS.conf,
        max_det=given.max_det or DEFAULT_NMS.max_det,
        agnostic=given.agnostic,
    )
    for name in ("iou", "conf"):
        value = getattr(settings, name)
        if not 0 < value <= 1:
            problems.bad(f"spec.nms_settings.{name}", f"must be in (0, 1], got {value:g}")
    if not 1 <= settings.max_det <= _MAX_DET_LIMIT:
        problems.bad(
            "spec.nms_settings.max_det",
            f"must be in 1..{_MAX_DET_LIMIT}, got {settings.max_det}",
        )
    return settings


def check_export_spec(
    spec: export_pb2.ExportSpec,
    *,
    framework: str,
    task: str,
    model_imgsz: int,
    capabilities: ExportCapabilities,
) -> export_pb2.ExportSpec:
    """Checks `spec` for a `framework`/`task` model trained at `model_imgsz` px and returns a
    normalised copy: every default filled in, so it is exactly what a worker runs.

    An empty `framework` or `task`, or a `model_imgsz` of 0, means unknown (a bare
    ValidateSpec call): the checks and defaults that need it are skipped. Raises
    InvalidArgument for a malformed request (fields named from the request's root:
    `spec.opset`, `model_task`), else FailedPrecondition naming the fields that
    `capabilities` cannot honour (`spec.formats` for TensorRT without it). Normalising a
    normalised spec returns it unchanged.
    """
    problems = _Problems()
    _check_model(framework, task, problems)
    out = export_pb2.ExportSpec()
    out.CopyFrom(spec)

    formats = _formats(spec, capabilities, problems)
    out.ClearField("formats")
    out.formats.extend(formats)
    tensorrt = "tensorrt" in formats
    if spec.half:
        if not tensorrt:
            problems.bad("spec.half", "half needs the tensorrt format; the ONNX model stays FP32")
        elif not capabilities.format("tensorrt").available:
            problems.cannot(
                "spec.half", f"tensorrt is unavailable: {capabilities.format('tensorrt').reason}"
            )
    out.device = _device(spec, formats, capabilities, problems)
    out.opset = _opset(spec, capabilities, problems)

    if spec.nms and task and task != "detect":
        problems.bad("spec.nms", f"in-graph NMS is for detect models; this is a {task} model")
    if spec.nms and tensorrt:
        # The engine would carry TensorRT's NMS plugin, not yet verified against the
        # reference NMS on a GPU: refused here rather than failed after queueing.
        problems.bad("spec.nms", "in-graph NMS is not combined with the tensorrt format yet")
    if task == "classify":
        out.softmax = spec.softmax if spec.HasField("softmax") else True
    elif task and spec.HasField("softmax"):
        problems.bad("spec.softmax", f"softmax is for classify models; this is a {task} model")

    imgsz = _imgsz(spec, model_imgsz, problems)
    if imgsz is not None:
        out.imgsz = imgsz
    if not spec.HasField("max_batch_size"):
        out.max_batch_size = DEFAULT_MAX_BATCH_DYNAMIC if spec.dynamic_batch else 1
    out.nms_settings.CopyFrom(_nms_settings(spec, problems))

    if not spec.parity.HasField("atol"):
        out.parity.atol = _DEFAULT_TOLERANCE
    if not spec.parity.HasField("rtol"):
        out.parity.rtol = _DEFAULT_TOLERANCE
    if not spec.HasField("simplify"):
        out.simplify = True
    triton = out.triton
    if not triton.HasField("version"):
        triton.version = 1
    if not triton.HasField("instance_count"):
        triton.instance_count = 1
    if not triton.HasField("max_queue_delay_microseconds"):
        triton.max_queue_delay_microseconds = _DEFAULT_TRITON_QUEUE_DELAY_US

    problems.raise_any()
    return out
