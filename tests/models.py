"""Tiny checkpoints as the model registry keeps them, and exporting them, for tests.

Random-init models of 64 px train in no time and export in seconds; `confident=True` makes
an untrained detector produce boxes above the usual confidence threshold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.classifiers import CHECKPOINT_FORMAT, build_torchvision_classifier
from visionmesh.common.specs.export import UNCONFIRMED_CAPABILITIES, check_export_spec
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.parity import ParityInputs
from visionmesh.export.core.pipeline import ExportPackage, ExportTarget, run_export

os.environ.setdefault("YOLO_OFFLINE", "1")

IMGSZ = 64
NAMES = ("circle", "square", "triangle")


def yolo_checkpoint(path: Path, yaml: str, *, confident: bool = False) -> Path:
    """A random-init Ultralytics model with our class names, saved as the registry keeps it."""
    from ultralytics import YOLO

    model = YOLO(yaml)
    inner: Any = model.model
    if "cls" in yaml:
        head = inner.model[-1]
        head.linear = torch.nn.Linear(head.linear.in_features, len(NAMES))
    else:
        inner.model[-1].nc = inner.model[-1].nc  # keep the head; only names change below
    inner.names = dict(enumerate(NAMES)) if "cls" in yaml else inner.names
    if confident:
        _spread_class_biases(inner)
    model.save(str(path))
    return path


def make_confident(checkpoint: Path) -> Path:
    """Rewrite a (briefly trained) detector's checkpoint so that it finds boxes.

    One epoch leaves every score near zero; after this, boxes clear the usual thresholds.
    """
    from ultralytics import YOLO

    model = YOLO(str(checkpoint))
    _spread_class_biases(model.model)
    model.save(str(checkpoint))
    return checkpoint


def _spread_class_biases(inner: Any) -> None:
    # An untrained head scores everything near zero; spread the class biases so boxes
    # clear the confidence threshold and overlap, which is what NMS must get right.
    generator = torch.Generator().manual_seed(0)
    for branch in inner.model[-1].cv3:
        bias = branch[-1].bias
        bias.data = torch.randn(bias.shape, generator=generator) * 1.5


def classifier_checkpoint(path: Path, *, imgsz: int = IMGSZ) -> Path:
    """A random-init torchvision resnet18 in the training service's checkpoint format."""
    model = build_torchvision_classifier("resnet18", num_classes=len(NAMES), imgsz=imgsz)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "arch": "resnet18",
            "class_names": list(NAMES),
            "imgsz": imgsz,
        },
        path,
    )
    return path


def export_target(
    spec: export_pb2.ExportSpec,
    framework: str,
    task: str,
    names: tuple[str, ...],
    *,
    imgsz: int = IMGSZ,
) -> ExportTarget:
    """What an export job of `spec` runs for a registered model version of this kind."""
    checked = check_export_spec(
        spec,
        framework=framework,
        task=task,
        model_imgsz=imgsz,
        capabilities=UNCONFIRMED_CAPABILITIES,
    )
    return ExportTarget(
        spec=checked,
        model_version_id="mv-1",
        model_name="shapes",
        model_version=3,
        framework=framework,
        task=task,
        architecture="",
        class_names=names,
        imgsz=imgsz,
    )


def export_package(
    tmp: Path,
    checkpoint: Path,
    target: ExportTarget,
    images: int | ParityInputs = 8,
) -> ExportPackage:
    """Run the export pipeline (parity included) on `images` synthetic validation images."""
    phases: list[str] = []
    package = run_export(
        target,
        checkpoint,
        tmp,
        synthetic_images(images) if isinstance(images, int) else images,
        on_phase=phases.append,
        should_stop=lambda: False,
    )
    assert phases == ["load", "export", "parity", "package"]
    return package
