"""The contract's TrainingSpec <-> the core's TrainSpec, with defaults and validation.

Shared with the gateway (`visionmesh.common.specs.training`); the training service adds the
torch-only check of torchvision image sizes.
"""

from __future__ import annotations

from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.specs import training as _shared
from visionmesh.common.specs.training import normalized, to_train_spec
from visionmesh.training.core._architectures import torchvision_input_problem

__all__ = ["check_spec", "normalized", "to_train_spec"]


def check_spec(
    spec: training_pb2.TrainingSpec, *, dataset_task: str = "", field_prefix: str = "spec."
) -> training_pb2.TrainingSpec:
    """Validates `spec` (for a dataset of `dataset_task` when given) and returns it normalised.

    Raises InvalidArgument with every violation, fields named from the request's root
    (`spec.imgsz`, `spec.data_loading.prefetch_factor`).
    """
    return _shared.check_spec(
        spec,
        dataset_task=dataset_task,
        field_prefix=field_prefix,
        input_problem=torchvision_input_problem,
    )
