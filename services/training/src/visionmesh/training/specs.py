"""The contract's TrainingSpec <-> the core's TrainSpec, with defaults and validation."""

from __future__ import annotations

from pathlib import Path

from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.errors import FieldViolation, InvalidArgument
from visionmesh.training.core import DataLoading, TrainSpec, validate_spec

_DEFAULTS = TrainSpec(framework="ultralytics", task="detect", model="yolo11n.yaml")


def to_train_spec(
    spec: training_pb2.TrainingSpec, *, init_checkpoint: Path | None = None
) -> TrainSpec:
    loading = spec.data_loading
    return TrainSpec(
        framework=spec.framework,  # type: ignore[arg-type]  # checked by validate_spec
        task=spec.task,  # type: ignore[arg-type]
        model=spec.model,
        epochs=spec.epochs,
        imgsz=spec.imgsz,
        batch=spec.batch if spec.HasField("batch") else _DEFAULTS.batch,
        optimizer=spec.optimizer or _DEFAULTS.optimizer,
        lr0=spec.lr0 if spec.HasField("lr0") else _DEFAULTS.lr0,
        patience=spec.patience if spec.HasField("patience") else _DEFAULTS.patience,
        seed=spec.seed,
        device=spec.device or _DEFAULTS.device,
        augment=dict(spec.augment),
        data_loading=DataLoading(
            preload=loading.preload,
            num_workers=loading.num_workers,
            pin_memory=loading.pin_memory,
            prefetch_factor=loading.prefetch_factor
            if loading.HasField("prefetch_factor")
            else None,
        ),
        amp=spec.amp,
        init_checkpoint=init_checkpoint,
    )


def normalized(spec: training_pb2.TrainingSpec) -> training_pb2.TrainingSpec:
    """`spec` with every default made explicit: exactly what a worker will run."""
    core = to_train_spec(spec)
    filled = training_pb2.TrainingSpec()
    filled.CopyFrom(spec)
    filled.batch = core.batch
    filled.optimizer = core.optimizer
    filled.lr0 = core.lr0
    filled.patience = core.patience
    filled.device = core.device
    return filled


def check_spec(
    spec: training_pb2.TrainingSpec, *, dataset_task: str = "", field_prefix: str = "spec."
) -> training_pb2.TrainingSpec:
    """Validates `spec` (for a dataset of `dataset_task` when given) and returns it normalised.

    Raises InvalidArgument with every violation, fields named from the request's root
    (`spec.imgsz`, `spec.data_loading.prefetch_factor`).
    """
    violations = validate_spec(to_train_spec(spec), dataset_task=dataset_task or None)
    if violations:
        raise InvalidArgument(
            "invalid training spec: "
            + "; ".join(f"{field_prefix}{v.field}: {v.description}" for v in violations),
            field_violations=[
                FieldViolation(field=f"{field_prefix}{v.field}", description=v.description)
                for v in violations
            ],
        )
    return normalized(spec)
