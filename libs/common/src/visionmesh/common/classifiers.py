"""torchvision classifiers as visionmesh trains and stores them, for every service that runs one.

Training builds and saves them; export and embedding load them back from the registry's
checkpoints. torch and torchvision are imported on first use: the gateway has neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "visionmesh.classifier/1"


def _builder_kwargs(arch: str, imgsz: int) -> dict[str, Any]:
    # Architectures whose constructors need telling about the input or that return auxiliary
    # outputs by default; the trainer wants one logits tensor from every model.
    if arch.startswith("vit_"):
        return {"image_size": imgsz}
    if arch.startswith("maxvit"):
        return {"input_size": (imgsz, imgsz)}
    if arch in {"googlenet", "inception_v3"}:
        return {"aux_logits": False, "init_weights": True}
    return {}


def build_torchvision_classifier(arch: str, *, num_classes: int, imgsz: int) -> nn.Module:
    """A randomly initialised torchvision classifier with `num_classes` outputs."""
    import torchvision

    return torchvision.models.get_model(
        arch, weights=None, num_classes=num_classes, **_builder_kwargs(arch, imgsz)
    )


@dataclass(frozen=True)
class StoredClassifier:
    """A classifier checkpoint's model (eval mode, CPU) and what it was trained with."""

    model: nn.Module
    arch: str
    class_names: tuple[str, ...]
    imgsz: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict; ValueError when the file is not a visionmesh classifier."""
    import torch

    # weights_only: a checkpoint from the registry is data, never code to run.
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a visionmesh classifier checkpoint")
    return ckpt


def load_classifier(path: Path) -> StoredClassifier:
    """Rebuilds the classifier in a checkpoint written by visionmesh's classifier trainer."""
    ckpt = read_checkpoint(path)
    names = tuple(str(name) for name in ckpt["class_names"])
    imgsz = int(ckpt["imgsz"])
    model = build_torchvision_classifier(ckpt["arch"], num_classes=len(names), imgsz=imgsz)
    model.load_state_dict(ckpt["model_state"])
    norm = ckpt.get("normalisation") or {}
    mean = tuple(float(v) for v in norm.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in norm.get("std", IMAGENET_STD))
    return StoredClassifier(
        model=model.eval(),
        arch=str(ckpt["arch"]),
        class_names=names,
        imgsz=imgsz,
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
    )
