"""The training spec in plain Python, its validation into field violations, and the contract.

Shared by the gateway, which validates a spec when a job is created (no training service
needed), and the training workers, which check it again before they train.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.errors import FieldViolation, InvalidArgument
from visionmesh.common.specs._architectures import (
    TORCHVISION_ARCHITECTURES,
    TORCHVISION_IMGSZ,
    ULTRALYTICS_ARCHITECTURES,
)

__all__ = [
    "AUGMENT_RANGES",
    "FRAMEWORKS",
    "FRAMEWORK_TASKS",
    "OPTIMIZERS",
    "TASKS",
    "TORCHVISION_ARCHITECTURES",
    "TORCHVISION_AUGMENT_KEYS",
    "ULTRALYTICS_ARCHITECTURES",
    "DataLoading",
    "InputProblem",
    "InvalidSpecError",
    "SpecViolation",
    "TrainSpec",
    "check_spec",
    "ensure_valid",
    "normalized",
    "to_train_spec",
    "torchvision_imgsz_problem",
    "validate_spec",
]

Framework = Literal["ultralytics", "torchvision"]
Task = Literal["detect", "classify", "segment"]

TASKS: tuple[str, ...] = ("detect", "classify", "segment")
FRAMEWORKS: tuple[str, ...] = ("ultralytics", "torchvision")
OPTIMIZERS: tuple[str, ...] = ("auto", "SGD", "Adam", "AdamW")
FRAMEWORK_TASKS: Mapping[str, tuple[str, ...]] = {
    "ultralytics": TASKS,
    "torchvision": ("classify",),
}

# Ultralytics' numeric augmentation hyperparameters (cfg/default.yaml): fractions use the [0, 1]
# its config check enforces; scale stays <= 1 because its zoom range is (1 - scale, 1 + scale).
AUGMENT_RANGES: Mapping[str, tuple[float, float]] = {
    "hsv_h": (0.0, 1.0),
    "hsv_s": (0.0, 1.0),
    "hsv_v": (0.0, 1.0),
    "degrees": (0.0, 180.0),
    "translate": (0.0, 1.0),
    "scale": (0.0, 1.0),
    "shear": (0.0, 180.0),
    "perspective": (0.0, 1.0),
    "flipud": (0.0, 1.0),
    "fliplr": (0.0, 1.0),
    "bgr": (0.0, 1.0),
    "mosaic": (0.0, 1.0),
    "mixup": (0.0, 1.0),
    "cutmix": (0.0, 1.0),
    "copy_paste": (0.0, 1.0),
    "erasing": (0.0, 1.0),
}
# The plain PyTorch classifier implements these, with Ultralytics' classification meaning
# (training/core/classifier_augment.py): flips and erasing as probabilities, scale as the
# random resized crop's area range, hsv_* as ColorJitter's factors.
TORCHVISION_AUGMENT_KEYS: tuple[str, ...] = (
    "fliplr",
    "flipud",
    "erasing",
    "scale",
    "degrees",
    "translate",
    "hsv_h",
    "hsv_s",
    "hsv_v",
)

# Which dataset layouts each task can train on: YOLO detection reads segmentation labels too.
_DATASETS_FOR_TASK: Mapping[str, tuple[str, ...]] = {
    "detect": ("detect", "segment"),
    "segment": ("segment",),
    "classify": ("classify",),
}
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")

InputProblem = Callable[[str, int], "str | None"]
"""(torchvision architecture, imgsz) -> why it cannot take that size, or None."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataLoading:
    """How training images reach the model (the torchvision trainer honours all of it)."""

    preload: bool = False
    """Decode every image once into memory before training (Ultralytics: `cache='ram'`)."""
    num_workers: int = 0
    pin_memory: bool = False
    prefetch_factor: int | None = None
    """Batches each worker loads ahead; only meaningful (and only allowed) with workers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSpec:
    """A validated training request: what to train, on what, and how."""

    framework: Framework
    task: Task
    model: str
    """Ultralytics: a model YAML (`yolo11n.yaml`) or a local `.pt`; torchvision: `resnet18`, ..."""
    epochs: int = 100
    imgsz: int = 640
    batch: int = 16
    optimizer: str = "auto"
    lr0: float = 0.01
    patience: int = 100
    """Epochs without improvement before stopping early; 0 disables early stopping."""
    seed: int = 0
    device: str = "auto"
    augment: Mapping[str, float] = field(default_factory=dict)
    data_loading: DataLoading = field(default_factory=DataLoading)
    amp: bool = True
    """Mixed precision; only ever used on CUDA devices."""
    init_checkpoint: Path | None = None
    """Weights to start from (fine-tuning), e.g. an earlier job's best.pt."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (paths as strings) that `from_dict` reads back."""
        out = asdict(self)
        out["augment"] = dict(self.augment)
        out["init_checkpoint"] = str(self.init_checkpoint) if self.init_checkpoint else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSpec:
        """The inverse of `to_dict`; unknown keys are an error."""
        values = dict(data)
        loading = values.pop("data_loading", None) or {}
        init = values.pop("init_checkpoint", None)
        return cls(
            **values,
            data_loading=DataLoading(**loading),
            init_checkpoint=Path(init) if init else None,
        )


@dataclass(frozen=True, slots=True)
class SpecViolation:
    """One bad field: `field` is a dotted path relative to the spec (`data_loading.num_workers`)."""

    field: str
    description: str


class InvalidSpecError(ValueError):
    """A spec that `validate_spec` rejects, handed to a trainer anyway."""

    def __init__(self, violations: Sequence[SpecViolation]) -> None:
        self.violations = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


def torchvision_imgsz_problem(arch: str, imgsz: int) -> str | None:
    """Why torchvision's `arch` cannot take `imgsz` x `imgsz` images, from static data.

    The table holds each architecture's smallest accepted size and the multiple its size
    must be (e.g. a ViT's patch size), as measured with shape-only forward passes.
    """
    limits = TORCHVISION_IMGSZ.get(arch)
    if limits is None:
        return None
    smallest, multiple = limits
    if imgsz < smallest:
        return f"{arch} cannot take {imgsz}x{imgsz} images: it needs imgsz >= {smallest}"
    if imgsz % multiple:
        return f"{arch} cannot take {imgsz}x{imgsz} images: imgsz must be a multiple of {multiple}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_model(spec: TrainSpec, out: list[SpecViolation], input_problem: InputProblem) -> None:
    if spec.framework == "ultralytics":
        if spec.model.endswith(".pt"):
            # A bare name such as `yolo11n.pt` would make Ultralytics download pretrained
            # weights; only a checkpoint that is already on this machine is acceptable.
            if not Path(spec.model).is_file():
                out.append(
                    SpecViolation(
                        "model",
                        f"checkpoint {spec.model!r} is not a local file; pretrained weights are "
                        "not downloaded: name an architecture YAML (e.g. 'yolo11n.yaml') and "
                        "use init_checkpoint to fine-tune",
                    )
                )
            return
        model_task = ULTRALYTICS_ARCHITECTURES.get(spec.model)
        if model_task is None:
            out.append(
                SpecViolation(
                    "model",
                    f"unknown Ultralytics architecture {spec.model!r}; expected a model YAML "
                    "such as 'yolo11n.yaml', 'yolo11n-seg.yaml' or 'yolo11n-cls.yaml'",
                )
            )
        elif spec.task in TASKS and model_task != spec.task:
            out.append(
                SpecViolation(
                    "model",
                    f"{spec.model!r} is a {model_task} architecture but the task is {spec.task}",
                )
            )
    elif spec.framework == "torchvision":
        if spec.model not in TORCHVISION_ARCHITECTURES:
            out.append(
                SpecViolation(
                    "model",
                    f"unknown torchvision classification architecture {spec.model!r} "
                    "(e.g. 'resnet18', 'mobilenet_v3_small', 'efficientnet_b0')",
                )
            )
        elif _is_int(spec.imgsz) and spec.imgsz > 0 and spec.imgsz % 32 == 0:
            problem = torchvision_imgsz_problem(spec.model, spec.imgsz) or input_problem(
                spec.model, spec.imgsz
            )
            if problem:
                out.append(SpecViolation("imgsz", problem))


def _check_augment(spec: TrainSpec, out: list[SpecViolation]) -> None:
    allowed = TORCHVISION_AUGMENT_KEYS if spec.framework == "torchvision" else tuple(AUGMENT_RANGES)
    for key, value in spec.augment.items():
        path = f"augment.{key}"
        if key not in allowed:
            where = "the torchvision trainer" if key in AUGMENT_RANGES else "any trainer"
            out.append(
                SpecViolation(
                    path, f"unknown augmentation for {where}; allowed: {', '.join(allowed)}"
                )
            )
            continue
        low, high = AUGMENT_RANGES[key]
        if not _is_number(value) or not low <= value <= high:
            out.append(
                SpecViolation(path, f"must be a number in [{low:g}, {high:g}], got {value!r}")
            )


def _check_data_loading(loading: DataLoading, out: list[SpecViolation]) -> None:
    if not _is_int(loading.num_workers) or loading.num_workers < 0:
        out.append(SpecViolation("data_loading.num_workers", "must be an integer >= 0"))
    elif loading.prefetch_factor is not None:
        if loading.num_workers == 0:
            out.append(
                SpecViolation(
                    "data_loading.prefetch_factor",
                    "must be unset when num_workers is 0 (the main process loads the batches)",
                )
            )
        elif not _is_int(loading.prefetch_factor) or loading.prefetch_factor < 1:
            out.append(SpecViolation("data_loading.prefetch_factor", "must be an integer >= 1"))


def _no_problem(arch: str, imgsz: int) -> str | None:
    return None


def validate_spec(
    spec: TrainSpec,
    *,
    dataset_task: str | None = None,
    devices: Sequence[str] | None = None,
    input_problem: InputProblem = _no_problem,
) -> list[SpecViolation]:
    """Every problem with `spec`, or an empty list when it can be trained.

    `dataset_task` is the kind of dataset it will train on ('detect', 'classify', 'segment'),
    when known. `devices`, when given (e.g. the names from `capabilities()`), are the devices
    this machine has; otherwise only the device's form is checked. `input_problem` adds a
    check of a torchvision architecture against the image size beyond the static table
    (the training worker builds the model shape-only for that).
    """
    out: list[SpecViolation] = []
    framework_ok = spec.framework in FRAMEWORKS
    if not framework_ok:
        out.append(
            SpecViolation("framework", f"unknown framework {spec.framework!r}; one of {FRAMEWORKS}")
        )
    tasks = FRAMEWORK_TASKS.get(spec.framework, TASKS)
    task_ok = spec.task in tasks
    if not task_ok:
        out.append(
            SpecViolation(
                "task", f"task {spec.task!r} is not supported by {spec.framework}; one of {tasks}"
            )
        )
    elif dataset_task is not None and dataset_task not in _DATASETS_FOR_TASK[spec.task]:
        out.append(
            SpecViolation(
                "task",
                f"a {dataset_task} dataset cannot train a {spec.task} model; "
                f"it needs a {' or '.join(_DATASETS_FOR_TASK[spec.task])} dataset",
            )
        )
    if framework_ok and task_ok:
        _check_model(spec, out, input_problem)

    if not _is_int(spec.epochs) or spec.epochs < 1:
        out.append(SpecViolation("epochs", f"must be an integer > 0, got {spec.epochs!r}"))
    if not _is_int(spec.imgsz) or spec.imgsz < 1 or spec.imgsz % 32:
        out.append(SpecViolation("imgsz", f"must be a positive multiple of 32, got {spec.imgsz!r}"))
    if not _is_int(spec.batch) or spec.batch < 1:
        out.append(SpecViolation("batch", f"must be an integer > 0, got {spec.batch!r}"))
    if spec.optimizer not in OPTIMIZERS:
        out.append(
            SpecViolation("optimizer", f"unknown optimizer {spec.optimizer!r}; one of {OPTIMIZERS}")
        )
    if not _is_number(spec.lr0) or not 0 < spec.lr0 <= 1:
        out.append(SpecViolation("lr0", f"must be a number in (0, 1], got {spec.lr0!r}"))
    if not _is_int(spec.patience) or spec.patience < 0:
        out.append(SpecViolation("patience", f"must be an integer >= 0, got {spec.patience!r}"))
    if not _is_int(spec.seed) or spec.seed < 0:
        out.append(SpecViolation("seed", f"must be an integer >= 0, got {spec.seed!r}"))
    if not isinstance(spec.device, str) or not _DEVICE.match(spec.device):
        out.append(
            SpecViolation(
                "device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec.device!r}"
            )
        )
    elif devices is not None and spec.device != "auto":
        wanted = "cuda:0" if spec.device == "cuda" else spec.device
        if wanted not in devices:
            out.append(
                SpecViolation(
                    "device", f"{spec.device!r} is not on this machine; it has {list(devices)}"
                )
            )
    _check_augment(spec, out)
    _check_data_loading(spec.data_loading, out)
    if spec.init_checkpoint is not None and Path(spec.init_checkpoint).suffix != ".pt":
        out.append(SpecViolation("init_checkpoint", "must be a .pt checkpoint"))
    return out


def ensure_valid(
    spec: TrainSpec, *, dataset_task: str | None = None, input_problem: InputProblem = _no_problem
) -> None:
    """Raise `InvalidSpecError` listing every violation, if there are any."""
    violations = validate_spec(spec, dataset_task=dataset_task, input_problem=input_problem)
    if violations:
        raise InvalidSpecError(violations)


# -- the contract's TrainingSpec -------------------------------------------------------------

_DEFAULTS = TrainSpec(framework="ultralytics", task="detect", model="yolo11n.yaml")


def to_train_spec(
    spec: training_pb2.TrainingSpec, *, init_checkpoint: Path | None = None
) -> TrainSpec:
    """The contract's TrainingSpec as a TrainSpec, unset optional fields at their defaults."""
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
    spec: training_pb2.TrainingSpec,
    *,
    dataset_task: str = "",
    field_prefix: str = "spec.",
    input_problem: InputProblem = _no_problem,
) -> training_pb2.TrainingSpec:
    """Validates `spec` (for a dataset of `dataset_task` when given) and returns it normalised.

    Raises InvalidArgument with every violation, fields named from the request's root
    (`spec.imgsz`, `spec.data_loading.prefetch_factor`).
    """
    violations = validate_spec(
        to_train_spec(spec), dataset_task=dataset_task or None, input_problem=input_problem
    )
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
