"""The batch inference spec's shared rules (gateway intake, inference service, batch worker)."""

from __future__ import annotations

import pytest
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.specs.batch_inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_IMAGE_EXTENSIONS,
    check_batch_spec,
)

Spec = inference_pb2.BatchInferenceSpec


def fields(spec: Spec, *, job_id: str = "job-1") -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        check_batch_spec(spec, tenant_id="acme", job_id=job_id)
    return [v.field for v in caught.value.field_violations]


def test_defaults_are_filled_and_keys_stay_relative() -> None:
    out = check_batch_spec(
        Spec(deployment="dets", input_prefix="inputs/day1"), tenant_id="acme", job_id="j7"
    )
    assert out.input_prefix == "inputs/day1/"
    assert out.output_prefix == "batch-inference/j7/"
    assert tuple(out.image_extensions) == DEFAULT_IMAGE_EXTENSIONS
    assert out.HasField("batch_size") and out.batch_size == DEFAULT_BATCH_SIZE
    assert check_batch_spec(out, tenant_id="acme", job_id="j7") == out


def test_given_values_are_kept_and_the_input_is_not_modified() -> None:
    spec = Spec(
        model_version_id="mv-1",
        input_zip_key="uploads/x.ZIP",
        output_prefix="results",
        image_extensions=[".tif"],
        batch_size=3,
        options=inference_pb2.PredictOptions(conf=0.5, classes=[1, 2]),
        export=export_pb2.ExportResult(),
    )
    before = Spec()
    before.CopyFrom(spec)
    out = check_batch_spec(spec, tenant_id="acme", job_id="j")
    assert spec == before
    assert out.output_prefix == "results/"
    assert list(out.image_extensions) == [".tif"]
    assert out.batch_size == 3
    assert out.options.conf == pytest.approx(0.5)


def test_without_a_job_id_an_empty_output_prefix_stays_empty() -> None:
    out = check_batch_spec(Spec(deployment="d", input_prefix="in/"), tenant_id="acme")
    assert out.output_prefix == ""


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (Spec(input_prefix="in/"), ["spec.deployment"]),
        (Spec(deployment="d", model_version_id="m", input_prefix="in/"), ["spec.model_version_id"]),
        (Spec(deployment="Bad Name", input_prefix="in/"), ["spec.deployment"]),
        (Spec(deployment="d"), ["spec.input_prefix"]),
        (Spec(deployment="d", input_prefix="in/", input_zip_key="a.zip"), ["spec.input_zip_key"]),
        (Spec(deployment="d", input_zip_key="a.tar"), ["spec.input_zip_key"]),
        (Spec(deployment="d", input_prefix="../other/"), ["spec.input_prefix"]),
        (Spec(deployment="d", input_prefix="/abs/"), ["spec.input_prefix"]),
        (Spec(deployment="d", input_zip_key="x/../../t/a.zip"), ["spec.input_zip_key"]),
        (Spec(deployment="d", input_prefix="in/", output_prefix="a//b"), ["spec.output_prefix"]),
        (Spec(deployment="d", input_prefix="in/", output_prefix="in/out"), ["spec.output_prefix"]),
        (Spec(deployment="d", input_prefix="in", output_prefix="in/"), ["spec.output_prefix"]),
        (
            Spec(deployment="d", input_prefix="in/", image_extensions=[".JPG"]),
            ["spec.image_extensions[0]"],
        ),
        (Spec(deployment="d", input_prefix="in/", batch_size=0), ["spec.batch_size"]),
        (
            Spec(deployment="d", input_prefix="in/", options=inference_pb2.PredictOptions(iou=1.5)),
            ["spec.options.iou"],
        ),
        (
            Spec(
                deployment="d", input_prefix="in/", options=inference_pb2.PredictOptions(imgsz=16)
            ),
            ["spec.options.imgsz"],
        ),
        (
            Spec(deployment="d", input_prefix="in/", export=export_pb2.ExportResult()),
            ["spec.export"],
        ),
    ],
)
def test_each_rule_names_its_field(spec: Spec, expected: list[str]) -> None:
    assert fields(spec) == expected


def test_every_violation_is_reported_at_once() -> None:
    spec = Spec(input_prefix="../x", options=inference_pb2.PredictOptions(conf=2))
    assert sorted(fields(spec)) == ["spec.deployment", "spec.input_prefix", "spec.options.conf"]


def test_output_next_to_the_input_is_fine() -> None:
    out = check_batch_spec(
        Spec(deployment="d", input_prefix="data/in/", output_prefix="data/inference/"),
        tenant_id="acme",
    )
    assert out.output_prefix == "data/inference/"
