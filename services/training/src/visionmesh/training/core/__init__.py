"""Transport-free training core: specs, capabilities, the Ultralytics and PyTorch trainers."""

from __future__ import annotations

from visionmesh.training.core.callbacks import (
    DEFAULT_PROGRESS_EVERY,
    EpochResult,
    ProgressUpdate,
    TrainerHooks,
    TrainResult,
)
from visionmesh.training.core.capabilities import (
    Capabilities,
    DeviceInfo,
    capabilities,
    list_devices,
    resolve_device,
)
from visionmesh.training.core.classifier_trainer import (
    load_classifier,
    predict_classifier,
    train_classifier,
)
from visionmesh.training.core.curves import plot_training_curves
from visionmesh.training.core.spec import (
    AUGMENT_RANGES,
    FRAMEWORK_TASKS,
    FRAMEWORKS,
    OPTIMIZERS,
    TORCHVISION_AUGMENT_KEYS,
    DataLoading,
    InvalidSpecError,
    SpecViolation,
    TrainSpec,
    ensure_valid,
    validate_spec,
)
from visionmesh.training.core.ultralytics_trainer import (
    fresh_train_arguments,
    normalise_ultralytics_metrics,
    train_ultralytics,
)

__all__ = [
    "AUGMENT_RANGES",
    "DEFAULT_PROGRESS_EVERY",
    "FRAMEWORKS",
    "FRAMEWORK_TASKS",
    "OPTIMIZERS",
    "TORCHVISION_AUGMENT_KEYS",
    "Capabilities",
    "DataLoading",
    "DeviceInfo",
    "EpochResult",
    "InvalidSpecError",
    "ProgressUpdate",
    "SpecViolation",
    "TrainResult",
    "TrainSpec",
    "TrainerHooks",
    "capabilities",
    "ensure_valid",
    "fresh_train_arguments",
    "list_devices",
    "load_classifier",
    "normalise_ultralytics_metrics",
    "plot_training_curves",
    "predict_classifier",
    "resolve_device",
    "train_classifier",
    "train_ultralytics",
    "validate_spec",
]
