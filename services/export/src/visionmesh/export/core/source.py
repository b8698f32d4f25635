"""The model a job exports, loaded from its registry checkpoint, and how it sees images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from visionmesh.common.classifiers import load_classifier


class SourceError(Exception):
    """The checkpoint is not what the registry says it is (framework, task, classes)."""


@dataclass
class SourceModel:
    """A checkpoint ready to export: the torch module in eval mode on the CPU and its facts.

    `forward` returns the outputs the exported graph must reproduce, in graph order: one
    tensor for detect ([N, 4 + classes, anchors]) and classify ([N, classes]), two for
    segment (predictions with mask coefficients, and mask prototypes).
    """

    framework: str
    task: str
    class_names: tuple[str, ...]
    imgsz: int
    stride: int
    module: torch.nn.Module
    checkpoint: Path
    architecture: str = ""
    end2end: bool = False
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    yolo: Any = field(default=None, repr=False)
    """The ultralytics.YOLO wrapper (Ultralytics models only): its exporter writes the ONNX."""

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.module(images)
        if self.framework == "ultralytics" and isinstance(out, tuple | list):
            out = out[0]  # eval mode: (predictions, training-time extras)
        tensors = list(out) if isinstance(out, tuple | list) else [out]
        return [tensor.float() for tensor in tensors]


def load_source(
    checkpoint: Path,
    *,
    framework: str,
    task: str,
    class_names: Sequence[str],
    imgsz: int,
    architecture: str = "",
) -> SourceModel:
    """Loads the checkpoint and checks it against what the registry recorded for it."""
    if framework == "torchvision":
        try:
            stored = load_classifier(checkpoint)
        except Exception as exc:  # torch.load and state dicts raise many kinds for a bad file
            raise SourceError(f"cannot load the torchvision checkpoint: {exc}") from exc
        source = SourceModel(
            framework=framework,
            task="classify",
            class_names=stored.class_names,
            imgsz=stored.imgsz,
            stride=32,
            module=stored.model.float().eval(),
            checkpoint=checkpoint,
            architecture=stored.arch,
            mean=stored.mean,
            std=stored.std,
        )
    elif framework == "ultralytics":
        from ultralytics import YOLO

        try:
            yolo = YOLO(str(checkpoint), task=task or None)
        except Exception as exc:  # Ultralytics raises many kinds for a bad file
            raise SourceError(f"cannot load the Ultralytics checkpoint: {exc}") from exc
        model: Any = yolo.model  # typed as str | Module | None by Ultralytics
        names = model.names
        ordered = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
        source = SourceModel(
            framework=framework,
            task=str(yolo.task),
            class_names=tuple(str(name) for name in ordered),
            imgsz=imgsz or int(model.args.get("imgsz", 640)),
            stride=int(max(int(s) for s in model.stride)),
            module=model.float().eval(),
            checkpoint=checkpoint,
            architecture=architecture,
            end2end=bool(getattr(model, "end2end", False)),
            yolo=yolo,
        )
    else:
        raise SourceError(f"unknown framework {framework!r}")
    if task and source.task != task:
        raise SourceError(f"the checkpoint is a {source.task} model, the registry says {task}")
    if class_names and tuple(class_names) != source.class_names:
        raise SourceError(
            f"the checkpoint's {len(source.class_names)} class names differ from the "
            f"registry's {len(class_names)}"
        )
    return source
