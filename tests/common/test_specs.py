"""Torch-free training spec validation shared by the gateway and the training workers."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.specs import training as shared
from visionmesh.common.specs._architectures import (
    TORCHVISION_ARCHITECTURES,
    TORCHVISION_IMGSZ,
    ULTRALYTICS_ARCHITECTURES,
)

HEAVY = ("torch", "torchvision", "ultralytics")
YOLO = shared.TrainSpec(framework="ultralytics", task="detect", model="yolo11n.yaml", imgsz=64)
TORCHVISION = shared.TrainSpec(framework="torchvision", task="classify", model="resnet18", imgsz=64)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return {name.split(".")[0] for name in result.stdout.split()}


@pytest.mark.parametrize(
    "statement",
    [
        "import visionmesh.common.specs.training",
        # The gateway validates specs at intake: it must not need the training stack.
        "import visionmesh.gateway.app",
    ],
)
def test_validation_needs_no_torch(statement: str) -> None:
    assert not _loaded_after(statement) & set(HEAVY)


def test_static_catalogues_match_the_installed_libraries() -> None:
    """Stale after an Ultralytics or torchvision upgrade: run scripts/gen_spec_architectures.py."""
    from visionmesh.training.core._architectures import (
        torchvision_architectures,
        ultralytics_architectures,
    )

    assert dict(ULTRALYTICS_ARCHITECTURES) == dict(ultralytics_architectures())
    assert torchvision_architectures() == TORCHVISION_ARCHITECTURES
    assert set(TORCHVISION_IMGSZ) <= set(TORCHVISION_ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(TORCHVISION_IMGSZ))
def test_static_image_size_limits_match_a_shape_only_forward_pass(arch: str) -> None:
    from visionmesh.training.core._architectures import torchvision_input_problem

    smallest, multiple = TORCHVISION_IMGSZ[arch]
    assert torchvision_input_problem(arch, smallest) is None
    assert shared.torchvision_imgsz_problem(arch, smallest) is None
    if smallest > 32:
        assert torchvision_input_problem(arch, smallest - 32) is not None
        assert shared.torchvision_imgsz_problem(arch, smallest - 32) is not None
    if multiple > 32:
        assert torchvision_input_problem(arch, smallest + 32) is not None
        assert shared.torchvision_imgsz_problem(arch, smallest + 32) is not None


def test_training_reexports_the_shared_spec() -> None:
    from visionmesh.training import specs
    from visionmesh.training.core import spec

    assert spec.TrainSpec is shared.TrainSpec and spec.SpecViolation is shared.SpecViolation
    assert spec.InvalidSpecError is shared.InvalidSpecError
    assert specs.to_train_spec is shared.to_train_spec and specs.normalized is shared.normalized
    bad = dataclasses.replace(TORCHVISION, model="inception_v3")
    assert [v.field for v in spec.validate_spec(bad)] == ["imgsz"]
    assert [v.field for v in shared.validate_spec(bad)] == ["imgsz"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (dataclasses.replace(YOLO, framework="keras"), "framework"),  # type: ignore[arg-type]
        (dataclasses.replace(YOLO, task="pose"), "task"),  # type: ignore[arg-type]
        (dataclasses.replace(YOLO, model="yolo99n.yaml"), "model"),
        (dataclasses.replace(YOLO, model="yolo11n.pt"), "model"),
        (dataclasses.replace(YOLO, model="yolo11n-cls.yaml"), "model"),
        (dataclasses.replace(TORCHVISION, model="resnet7"), "model"),
        (dataclasses.replace(TORCHVISION, model="inception_v3", imgsz=64), "imgsz"),
        (dataclasses.replace(TORCHVISION, model="alexnet", imgsz=32), "imgsz"),
        (dataclasses.replace(YOLO, imgsz=100), "imgsz"),
        (dataclasses.replace(YOLO, lr0=float("nan")), "lr0"),
        (dataclasses.replace(YOLO, augment={"fliplr": 1.5}), "augment.fliplr"),
        (
            dataclasses.replace(YOLO, data_loading=shared.DataLoading(prefetch_factor=2)),
            "data_loading.prefetch_factor",
        ),
    ],
)
def test_each_bad_field_is_named(spec: shared.TrainSpec, field: str) -> None:
    assert [v.field for v in shared.validate_spec(spec)] == [field]


def test_valid_specs_pass() -> None:
    assert shared.validate_spec(YOLO) == []
    assert shared.validate_spec(TORCHVISION) == []
    assert (
        shared.validate_spec(dataclasses.replace(TORCHVISION, model="inception_v3", imgsz=96)) == []
    )


def test_check_spec_names_fields_from_the_request_root_and_fills_defaults() -> None:
    spec = training_pb2.TrainingSpec(
        framework="ultralytics", task="detect", model="yolo11n.yaml", epochs=3, imgsz=64
    )
    filled = shared.check_spec(spec, dataset_task="detect")
    assert (filled.batch, filled.optimizer, filled.patience, filled.device) == (
        16,
        "auto",
        100,
        "auto",
    )
    assert filled.lr0 == pytest.approx(0.01)
    spec.imgsz = 100
    with pytest.raises(InvalidArgument) as caught:
        shared.check_spec(spec, dataset_task="classify")
    assert sorted(v.field for v in caught.value.field_violations) == ["spec.imgsz", "spec.task"]
