"""Our own classifiers as embedders: the pooled penultimate features of a registered version.

A classification model version, Ultralytics classify or torchvision, is loaded from the
checkpoint the registry keeps and its classification layer is cut off, the way a retrieval
head is usually cut: what is left ends in the pooled features the last linear layer reads.
Images are preprocessed exactly as the model's evaluation transform does, by the shared
`visionmesh.common.vision.processing` code that exported models use too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from visionmesh.common.classifiers import load_classifier
from visionmesh.common.errors import FailedPrecondition
from visionmesh.common.vision import processing
from visionmesh.embedding.core.embedders import Image, TorchEmbedder

__all__ = [
    "BackboneEmbedder",
    "Framework",
    "cut_torchvision_head",
    "cut_ultralytics_head",
    "load_backbone",
]

Framework = Literal["torchvision", "ultralytics"]


def cut_torchvision_head(model: nn.Module, *, num_classes: int | None = None) -> int:
    """Replace a torchvision classifier's classification layer by the identity, in place.

    Returns the embedding size. In every torchvision classifier the classification layer is
    the last `nn.Linear` registered (`fc`, `classifier[-1]`, `head`, `heads.head`), so the
    model then ends in what that layer read: the pooled features (after the hidden layers of
    VGG, AlexNet, MobileNetV3 and MaxViT heads). SqueezeNet classifies with a 1x1 convolution
    over the feature map instead; its cut output is that map average-pooled.
    """
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Sequential) and isinstance(classifier[1], nn.Conv2d):
        # SqueezeNet: Dropout, Conv2d(512, classes, 1), ReLU, AdaptiveAvgPool2d((1, 1)).
        conv = classifier[1]
        model.classifier = nn.Sequential(classifier[0], nn.AdaptiveAvgPool2d((1, 1)))
        return int(conv.in_channels)
    last: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise FailedPrecondition(f"{type(model).__name__} has no linear classification layer")
    path, linear = last
    if num_classes is not None and linear.out_features != num_classes:
        raise FailedPrecondition(
            f"the last linear layer of {type(model).__name__} ({path}) has "
            f"{linear.out_features} outputs, not the {num_classes} classes: not its classifier"
        )
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, nn.Identity())
    return int(linear.in_features)


class _PooledClassify(nn.Module):
    """Ultralytics' Classify head without its linear layer: conv, pool, flatten.

    It keeps the routing attributes (`f`, `i`, `type`) Ultralytics' forward reads from each
    layer, so the model's own forward runs the backbone as it always does.
    """

    def __init__(self, head: Any) -> None:
        super().__init__()
        self.conv = head.conv
        self.pool = head.pool
        for attribute in ("f", "i", "type", "np"):
            if hasattr(head, attribute):
                setattr(self, attribute, getattr(head, attribute))

    def forward(self, x: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(x, list):
            x = torch.cat(x, 1)
        pooled: torch.Tensor = self.pool(self.conv(x)).flatten(1)
        return pooled


def cut_ultralytics_head(model: nn.Module) -> int:
    """Replace the Classify head of an Ultralytics ClassificationModel, in place.

    The model then returns the pooled features its head's linear layer reads (dropout is
    the identity in evaluation). Returns the embedding size.
    """
    from ultralytics.nn.modules.head import Classify

    layers: Any = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) else None
    if not isinstance(head, Classify):
        raise FailedPrecondition(
            f"the Ultralytics model ends in {type(head).__name__}, not a Classify head: "
            "only classification models embed"
        )
    layers[-1] = _PooledClassify(head)
    return int(head.linear.in_features)


class BackboneEmbedder(TorchEmbedder):
    """A registered classifier with its classification layer cut: pooled penultimate features."""

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        dim: int,
        imgsz: int,
        preprocessing: dict[str, Any],
        model_version_id: str,
        description: str,
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        super().__init__(
            module,
            name=name,
            dim=dim,
            family="backbone",
            imgsz=imgsz,
            description=description,
            model_version_id=model_version_id,
            device=device,
            batch_size=batch_size,
        )
        self._preprocessing = preprocessing

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The ModelMetadata-shaped dict `processing.preprocess` reads for this model."""
        return dict(self._preprocessing)

    def preprocess(self, images: Sequence[Image]) -> npt.NDArray[np.float32]:
        batch, _ = processing.preprocess(images, self._preprocessing)
        return batch


def _preprocessing(
    resize: str, imgsz: int, mean: Sequence[float], std: Sequence[float]
) -> dict[str, Any]:
    return {
        "input_height": imgsz,
        "input_width": imgsz,
        "resize": resize,
        "channel_order": "rgb",
        "scale": 1 / 255,
        "mean": list(mean),
        "std": list(std),
    }


def load_backbone(
    checkpoint: Path,
    *,
    framework: str,
    name: str,
    model_version_id: str,
    imgsz: int | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> BackboneEmbedder:
    """The embedder of a classification model version, from the checkpoint the registry keeps.

    `imgsz` defaults to the size stored in the checkpoint (torchvision) or its training
    arguments (Ultralytics); pass the registry's to be sure. FailedPrecondition when the
    file does not load as a classifier of `framework`.
    """
    if framework == "torchvision":
        try:
            stored = load_classifier(checkpoint)
        except Exception as exc:  # torch.load and state dicts raise many kinds for a bad file
            raise FailedPrecondition(
                f"model version {model_version_id}: cannot load its torchvision checkpoint: {exc}"
            ) from exc
        module = stored.model
        dim = cut_torchvision_head(module, num_classes=len(stored.class_names))
        size = imgsz or stored.imgsz
        # The classifier trainer evaluates on a plain (imgsz, imgsz) resize of the PIL
        # image, normalised with the mean and std stored in the checkpoint.
        preprocessing = _preprocessing("resize", size, stored.mean, stored.std)
        description = f"{stored.arch} classifier ({len(stored.class_names)} classes), torchvision"
    elif framework == "ultralytics":
        from ultralytics import YOLO

        try:
            yolo = YOLO(str(checkpoint), task="classify")
        except Exception as exc:  # Ultralytics raises many kinds for a bad file
            raise FailedPrecondition(
                f"model version {model_version_id}: cannot load its Ultralytics checkpoint: {exc}"
            ) from exc
        loaded = yolo.model  # typed as str | Module | None by Ultralytics
        if not isinstance(loaded, nn.Module):
            raise FailedPrecondition(f"model version {model_version_id}: no model in checkpoint")
        module = loaded
        dim = cut_ultralytics_head(module)
        args: Any = getattr(module, "args", None) or {}
        size = imgsz or int(args.get("imgsz", 224) if isinstance(args, dict) else 224)
        # Ultralytics' classify_transforms: resize the short side, centre crop, no mean/std.
        preprocessing = _preprocessing("center_crop", size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        names = getattr(module, "names", None) or {}
        spec: Any = getattr(module, "yaml", None) or {}
        # The architecture's YAML name; YOLO.model_name would be the checkpoint's local path.
        arch = Path(str(spec.get("yaml_file") or "YOLO")).stem if isinstance(spec, dict) else "YOLO"
        description = f"{arch} classifier ({len(names)} classes), Ultralytics"
    else:
        raise FailedPrecondition(
            f"model version {model_version_id}: framework {framework!r} is not torchvision or "
            "ultralytics"
        )
    return BackboneEmbedder(
        module,
        name=name,
        dim=dim,
        imgsz=size,
        preprocessing=preprocessing,
        model_version_id=model_version_id,
        description=f"{description}: pooled penultimate features, {dim}-d",
        device=device,
        batch_size=batch_size,
    )
