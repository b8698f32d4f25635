"""The training spec in plain Python, and its validation into field violations.

The spec and its checks live in `visionmesh.common.specs.training`, torch-free, so the gateway
validates jobs at intake with exactly the rules the workers apply; this module re-exports
them and adds the check only a machine with torch can make: building a torchvision model
shape-only to see that it takes the requested image size.
"""

from __future__ import annotations

from collections.abc import Sequence

from visionmesh.common.specs import training as _shared
from visionmesh.common.specs.training import (
    AUGMENT_RANGES,
    FRAMEWORK_TASKS,
    FRAMEWORKS,
    OPTIMIZERS,
    TORCHVISION_AUGMENT_KEYS,
    DataLoading,
    InvalidSpecError,
    SpecViolation,
    TrainSpec,
)
from visionmesh.training.core._architectures import torchvision_input_problem

__all__ = [
    "AUGMENT_RANGES",
    "FRAMEWORKS",
    "FRAMEWORK_TASKS",
    "OPTIMIZERS",
    "TORCHVISION_AUGMENT_KEYS",
    "DataLoading",
    "InvalidSpecError",
    "SpecViolation",
    "TrainSpec",
    "ensure_valid",
    "validate_spec",
]


def validate_spec(
    spec: TrainSpec,
    *,
    dataset_task: str | None = None,
    devices: Sequence[str] | None = None,
) -> list[SpecViolation]:
    """Every problem with `spec`, or an empty list when it can be trained.

    The shared checks (see `visionmesh.common.specs.training.validate_spec`) plus a
    shape-only forward pass of torchvision models at the requested size.
    """
    return _shared.validate_spec(
        spec, dataset_task=dataset_task, devices=devices, input_problem=torchvision_input_problem
    )


def ensure_valid(spec: TrainSpec, *, dataset_task: str | None = None) -> None:
    """Raise `InvalidSpecError` listing every violation, if there are any."""
    _shared.ensure_valid(spec, dataset_task=dataset_task, input_problem=torchvision_input_problem)
