"""The export spec's shared rules (gateway intake, export service) and FailedPrecondition fields."""

from __future__ import annotations

import subprocess
import sys

import pytest
from google.protobuf import json_format
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    from_rpc_status,
)
from visionmesh.common.specs.export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    TENSORRT_UNCONFIRMED,
    UNCONFIRMED_CAPABILITIES,
    ExportCapabilities,
    FormatSupport,
    check_export_spec,
)

GPU = ExportCapabilities(
    formats=(
        FormatSupport("onnx", available=True, library_version="1.23.2"),
        FormatSupport("tensorrt", available=True, library_version="10.13.0"),
    ),
    opsets=SUPPORTED_OPSETS,
    default_opset=DEFAULT_OPSET,
    devices=("cpu", "cuda:0"),
)


def check(
    spec: export_pb2.ExportSpec | None = None,
    *,
    framework: str = "ultralytics",
    task: str = "detect",
    model_imgsz: int = 64,
    capabilities: ExportCapabilities = UNCONFIRMED_CAPABILITIES,
) -> export_pb2.ExportSpec:
    return check_export_spec(
        spec or export_pb2.ExportSpec(),
        framework=framework,
        task=task,
        model_imgsz=model_imgsz,
        capabilities=capabilities,
    )


def invalid(spec: export_pb2.ExportSpec, **kwargs: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        check(spec, **kwargs)  # type: ignore[arg-type]
    return {v.field: v.description for v in caught.value.field_violations}


def unavailable(spec: export_pb2.ExportSpec, **kwargs: object) -> dict[str, str]:
    with pytest.raises(FailedPrecondition) as caught:
        check(spec, **kwargs)  # type: ignore[arg-type]
    return {v.field: v.description for v in caught.value.field_violations}


def test_the_rules_need_no_torch() -> None:
    code = "import sys, visionmesh.common.specs.export\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert not loaded & {"torch", "onnx", "onnxruntime", "ultralytics"}


def test_an_empty_spec_gets_every_default() -> None:
    spec = check(model_imgsz=96)
    assert list(spec.formats) == ["onnx"]
    assert spec.opset == DEFAULT_OPSET == 17
    assert spec.device == "auto"
    assert spec.imgsz == 96
    assert spec.max_batch_size == 1
    assert spec.simplify is True
    assert spec.parity.atol == pytest.approx(1e-3)
    assert spec.parity.rtol == pytest.approx(1e-3)
    assert spec.nms_settings.iou == pytest.approx(0.7)
    assert spec.nms_settings.conf == pytest.approx(0.25)
    assert spec.nms_settings.max_det == 300
    assert not spec.nms_settings.agnostic
    assert spec.triton.version == 1
    assert spec.triton.instance_count == 1
    assert spec.triton.max_queue_delay_microseconds == 100
    # The worker names the Triton model after the registry's model and version.
    assert spec.triton.model_name == ""
    assert not spec.HasField("softmax")
    assert not spec.half and not spec.nms and not spec.dynamic_batch


def test_given_values_are_kept() -> None:
    given = export_pb2.ExportSpec(
        model_version_id="mv-1",
        opset=12,
        imgsz=128,
        dynamic_batch=True,
        max_batch_size=4,
        simplify=False,
        device="cpu",
        nms=True,
        dynamic_size=True,
        parity=export_pb2.ParityTolerance(atol=0.01, rtol=0),
        triton=export_pb2.TritonOptions(
            model_name="m", version=3, instance_count=2, max_queue_delay_microseconds=0
        ),
        nms_settings=export_pb2.NmsSettings(iou=0.5, conf=0.1, max_det=50, agnostic=True),
    )
    spec = check(given)
    expected = export_pb2.ExportSpec()
    expected.CopyFrom(given)
    expected.formats.append("onnx")
    assert spec == expected


def test_the_input_spec_is_not_changed() -> None:
    given = export_pb2.ExportSpec(formats=["tensorrt"])
    check(given, capabilities=GPU)
    assert list(given.formats) == ["tensorrt"]
    assert not given.HasField("opset")


@pytest.mark.parametrize("dynamic, expected", [(True, 16), (False, 1)])
def test_max_batch_size_default_follows_dynamic_batch(dynamic: bool, expected: int) -> None:
    assert check(export_pb2.ExportSpec(dynamic_batch=dynamic)).max_batch_size == expected


@pytest.mark.parametrize(
    "formats", [["tensorrt"], ["tensorrt", "onnx"], ["onnx", "tensorrt"]], ids=str
)
def test_tensorrt_implies_onnx(formats: list[str]) -> None:
    spec = check(export_pb2.ExportSpec(formats=formats), capabilities=GPU)
    assert list(spec.formats) == ["onnx", "tensorrt"]


def test_unknown_format() -> None:
    assert "spec.formats" in invalid(export_pb2.ExportSpec(formats=["tflite"]))


def test_tensorrt_without_it_is_a_failed_precondition_with_the_reason() -> None:
    fields = unavailable(export_pb2.ExportSpec(formats=["tensorrt"]))
    assert set(fields) == {"spec.formats"}
    assert TENSORRT_UNCONFIRMED in fields["spec.formats"]


def test_tensorrt_reason_comes_from_the_capabilities() -> None:
    no_gpu = ExportCapabilities(
        formats=(
            FormatSupport("onnx", True),
            FormatSupport("tensorrt", False, reason="no CUDA device"),
        ),
        opsets=SUPPORTED_OPSETS,
        default_opset=DEFAULT_OPSET,
        devices=("cpu",),
    )
    fields = unavailable(
        export_pb2.ExportSpec(formats=["tensorrt"], half=True), capabilities=no_gpu
    )
    assert fields == {
        "spec.formats": "tensorrt is unavailable: no CUDA device",
        "spec.half": "tensorrt is unavailable: no CUDA device",
    }


def test_a_format_the_capabilities_do_not_list_is_unavailable() -> None:
    onnx_only = ExportCapabilities(
        formats=(FormatSupport("onnx", True),),
        opsets=SUPPORTED_OPSETS,
        default_opset=DEFAULT_OPSET,
        devices=("cpu", "cuda:0"),
    )
    assert "spec.formats" in unavailable(
        export_pb2.ExportSpec(formats=["tensorrt"]), capabilities=onnx_only
    )


def test_half_needs_tensorrt() -> None:
    fields = invalid(export_pb2.ExportSpec(half=True), capabilities=GPU)
    assert fields == {"spec.half": "half needs the tensorrt format; the ONNX model stays FP32"}


def test_half_with_tensorrt_available() -> None:
    spec = check(export_pb2.ExportSpec(formats=["tensorrt"], half=True), capabilities=GPU)
    assert spec.half


def test_a_request_error_is_reported_before_what_the_deployment_lacks() -> None:
    # tensorrt is unavailable (FAILED_PRECONDITION), the opset is malformed (INVALID_ARGUMENT).
    fields = invalid(export_pb2.ExportSpec(formats=["tensorrt"], opset=9))
    assert set(fields) == {"spec.opset"}


@pytest.mark.parametrize("opset", [7, 10, 21, 99])
def test_opset_outside_the_capabilities_names_the_range(opset: int) -> None:
    fields = invalid(export_pb2.ExportSpec(opset=opset))
    assert fields == {"spec.opset": f"opset {opset} is not supported; one of 11..20"}


def test_default_opset_comes_from_the_capabilities() -> None:
    older = ExportCapabilities(
        formats=(FormatSupport("onnx", True),),
        opsets=(9, 10, 11, 13),
        default_opset=13,
        devices=("cpu",),
    )
    assert check(capabilities=older).opset == 13
    assert invalid(export_pb2.ExportSpec(opset=12), capabilities=older) == {
        "spec.opset": "opset 12 is not supported; one of 9, 10, 11, 13"
    }
    assert invalid(export_pb2.ExportSpec(opset=10, nms=True), capabilities=older) == {
        "spec.opset": "nms needs opset >= 11, got 10"
    }


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_a_cuda_device_the_service_lacks(device: str) -> None:
    fields = unavailable(export_pb2.ExportSpec(device=device))
    assert set(fields) == {"spec.device"}
    assert "cpu" in fields["spec.device"]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cpu", "auto"])
def test_devices_the_service_has(device: str) -> None:
    assert check(export_pb2.ExportSpec(device=device), capabilities=GPU).device == device


def test_tensorrt_on_the_cpu_is_contradictory() -> None:
    fields = invalid(export_pb2.ExportSpec(formats=["tensorrt"], device="cpu"), capabilities=GPU)
    assert set(fields) == {"spec.device"}


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_nms_is_for_detectors(task: str) -> None:
    assert set(invalid(export_pb2.ExportSpec(nms=True), task=task)) == {"spec.nms"}


def test_nms_is_not_combined_with_tensorrt_yet() -> None:
    spec = export_pb2.ExportSpec(nms=True, formats=["tensorrt"])
    assert "not combined with the tensorrt" in invalid(spec, capabilities=GPU)["spec.nms"]
    assert check(export_pb2.ExportSpec(nms=True), capabilities=GPU).nms


@pytest.mark.parametrize("softmax", [True, False])
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_softmax_is_for_classifiers(task: str, softmax: bool) -> None:
    assert set(invalid(export_pb2.ExportSpec(softmax=softmax), task=task)) == {"spec.softmax"}


@pytest.mark.parametrize("framework", ["ultralytics", "torchvision"])
def test_softmax_defaults_to_true_for_classifiers(framework: str) -> None:
    assert check(framework=framework, task="classify").softmax is True
    kept = check(export_pb2.ExportSpec(softmax=False), framework=framework, task="classify")
    assert kept.HasField("softmax") and kept.softmax is False


def test_model_task_and_framework() -> None:
    assert set(invalid(export_pb2.ExportSpec(), task="pose")) == {"model_task"}
    assert set(invalid(export_pb2.ExportSpec(), framework="torchvision", task="detect")) == {
        "model_task"
    }
    assert set(invalid(export_pb2.ExportSpec(), framework="keras", task="detect")) == {
        "model_framework"
    }


def test_unknown_model_skips_the_checks_that_need_it() -> None:
    # A bare ValidateSpec call: no framework, task or input size to check against.
    spec = check(
        export_pb2.ExportSpec(nms=True, softmax=False), framework="", task="", model_imgsz=0
    )
    assert not spec.HasField("imgsz")
    assert spec.nms and not spec.softmax


def test_imgsz() -> None:
    assert check(export_pb2.ExportSpec(imgsz=160), model_imgsz=64).imgsz == 160
    fields = invalid(export_pb2.ExportSpec(), model_imgsz=100)
    assert set(fields) == {"spec.imgsz"} and "multiple of 32" in fields["spec.imgsz"]
    # An explicit imgsz makes the model's odd size irrelevant.
    assert check(export_pb2.ExportSpec(imgsz=96), model_imgsz=100).imgsz == 96
    assert set(invalid(export_pb2.ExportSpec(imgsz=100))) == {"spec.imgsz"}


def test_nms_settings_fill_only_unset_values() -> None:
    spec = check(export_pb2.ExportSpec(nms_settings=export_pb2.NmsSettings(conf=0.5)))
    assert spec.nms_settings.conf == pytest.approx(0.5)
    assert spec.nms_settings.iou == pytest.approx(0.7)
    assert spec.nms_settings.max_det == 300


@pytest.mark.parametrize(
    "settings, field",
    [
        (export_pb2.NmsSettings(iou=1.5), "spec.nms_settings.iou"),
        (export_pb2.NmsSettings(iou=-0.1), "spec.nms_settings.iou"),
        (export_pb2.NmsSettings(conf=2), "spec.nms_settings.conf"),
        (export_pb2.NmsSettings(conf=-1), "spec.nms_settings.conf"),
        (export_pb2.NmsSettings(max_det=-1), "spec.nms_settings.max_det"),
        (export_pb2.NmsSettings(max_det=10_001), "spec.nms_settings.max_det"),
    ],
)
def test_nms_settings_ranges(settings: export_pb2.NmsSettings, field: str) -> None:
    assert set(invalid(export_pb2.ExportSpec(nms_settings=settings))) == {field}


def test_nms_settings_at_their_limits() -> None:
    settings = export_pb2.NmsSettings(iou=1, conf=1, max_det=10_000)
    assert check(export_pb2.ExportSpec(nms_settings=settings)).nms_settings == settings


def test_every_problem_is_reported_at_once() -> None:
    fields = invalid(
        export_pb2.ExportSpec(half=True, nms=True, opset=5, softmax=True), task="segment"
    )
    assert set(fields) == {"spec.half", "spec.nms", "spec.opset", "spec.softmax"}


@pytest.mark.parametrize(
    "spec, task, capabilities",
    [
        (export_pb2.ExportSpec(), "detect", UNCONFIRMED_CAPABILITIES),
        (export_pb2.ExportSpec(), "classify", UNCONFIRMED_CAPABILITIES),
        (
            export_pb2.ExportSpec(formats=["tensorrt"], half=True, dynamic_batch=True),
            "segment",
            GPU,
        ),
        (export_pb2.ExportSpec(nms=True, device="cuda", imgsz=32), "detect", GPU),
    ],
)
def test_normalising_is_idempotent(
    spec: export_pb2.ExportSpec, task: str, capabilities: ExportCapabilities
) -> None:
    once = check(spec, task=task, capabilities=capabilities)
    assert check(once, task=task, capabilities=capabilities) == once


def test_capabilities_round_trip_the_contract() -> None:
    proto = GPU.to_proto()
    assert proto.formats[1] == export_pb2.ExportFormat(
        name="tensorrt", available=True, library_version="10.13.0"
    )
    assert list(proto.opsets) == list(range(11, 21)) and proto.default_opset == 17
    assert ExportCapabilities.from_proto(proto) == GPU
    unconfirmed = UNCONFIRMED_CAPABILITIES.to_proto()
    assert unconfirmed.formats[1].unavailable_reason == TENSORRT_UNCONFIRMED
    assert ExportCapabilities.from_proto(unconfirmed) == UNCONFIRMED_CAPABILITIES
    assert list(unconfirmed.devices) == ["cpu"]


def test_failed_precondition_names_fields_across_the_wire() -> None:
    error = FailedPrecondition.for_field("spec.formats", "tensorrt is unavailable")
    assert error.message == "spec.formats: tensorrt is unavailable"
    back = from_rpc_status(error.to_rpc_status())
    assert isinstance(back, FailedPrecondition)
    assert back.field_violations == (
        FieldViolation(field="spec.formats", description="tensorrt is unavailable"),
    )
    body = error.to_json()
    assert body["status"] == "FAILED_PRECONDITION"
    detail = body["details"][1]
    assert detail["@type"] == "type.googleapis.com/google.rpc.PreconditionFailure"
    assert detail["violations"] == [
        {"subject": "spec.formats", "description": "tensorrt is unavailable"}
    ]
    # A FailedPrecondition without fields carries no PreconditionFailure detail.
    assert len(FailedPrecondition("dataset is not READY").to_rpc_status().details) == 1


def test_normalised_spec_survives_proto_json() -> None:
    # The gateway sends the normalised spec over REST in JSON: defaults must stay explicit.
    spec = check(task="classify", capabilities=GPU)
    again = json_format.Parse(json_format.MessageToJson(spec), export_pb2.ExportSpec())
    assert again == spec and again.HasField("softmax") and again.HasField("opset")
