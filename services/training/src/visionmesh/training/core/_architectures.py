"""Catalogue of trainable architectures: Ultralytics model YAMLs and torchvision classifiers."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from visionmesh.common.classifiers import build_torchvision_classifier

__all__ = [
    "TASKS",
    "build_torchvision_classifier",
    "torchvision_architectures",
    "torchvision_input_problem",
    "ultralytics_architectures",
]

TASKS: tuple[str, ...] = ("detect", "classify", "segment")

# Heads of the model families the YOLO class trains without extra downloads. YOLO-World and
# YOLOE need CLIP text encoders fetched at build time, RT-DETR its own trainer: left out.
_HEAD_TASKS: Mapping[str, str] = {
    "Detect": "detect",
    "v10Detect": "detect",
    "Segment": "segment",
    "Segment26": "segment",
    "Classify": "classify",
}
_SCALED_STEM = re.compile(r"^(.*?\d+)([a-z]?)(.*)$")


def _ultralytics_models_dir() -> Path | None:
    # Found without importing ultralytics: the import is slow and reads its settings file.
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "cfg" / "models"


@functools.cache
def ultralytics_architectures() -> Mapping[str, str]:
    """Model YAML names the installed Ultralytics can build (e.g. `yolo11n.yaml`) -> their task."""
    root = _ultralytics_models_dir()
    if root is None:
        return {}
    names: dict[str, str] = {}
    for path in sorted(root.rglob("*.yaml")):
        cfg = yaml.safe_load(path.read_text()) or {}
        layers = [*(cfg.get("backbone") or []), *(cfg.get("head") or [])]
        task = _HEAD_TASKS.get(str(layers[-1][2])) if layers else None
        if task is None:
            continue
        scales = list((cfg.get("scales") or {}).keys())
        match = _SCALED_STEM.match(path.stem)
        # `yolo11.yaml` with scales n..x is asked for as `yolo11n.yaml`; Ultralytics strips the
        # scale letter to find the file. Files named per scale (`yolov10n.yaml`) stay as they are.
        if scales and match and not match.group(2):
            for scale in scales:
                names[f"{match.group(1)}{scale}{match.group(3)}.yaml"] = task
        else:
            names[f"{path.stem}.yaml"] = task
    return dict(sorted(names.items()))


@functools.cache
def torchvision_architectures() -> tuple[str, ...]:
    """torchvision's image-classification architectures (`resnet18`, `convnext_tiny`, ...)."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


@functools.lru_cache(maxsize=256)
def torchvision_input_problem(arch: str, imgsz: int) -> str | None:
    """Why `arch` cannot take `imgsz` x `imgsz` images, or None when it can.

    Builds the model on the meta device and runs a shape-only forward pass: no memory, no
    compute, but every "input too small" or "not a multiple of the patch size" error surfaces.
    """
    import torch

    with torch.device("meta"):
        try:
            model = build_torchvision_classifier(arch, num_classes=2, imgsz=imgsz).eval()
        except Exception:  # some initialisers copy data, which meta tensors lack: cannot check here
            return None
        try:
            out = model(torch.empty(2, 3, imgsz, imgsz))
        except Exception as exc:  # any forward error other than a meta limitation is about the size
            if "meta" in str(exc).lower():
                return None
            return f"{arch} cannot take {imgsz}x{imgsz} images: {exc}".strip()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, 2):
        return f"{arch} does not return one logits tensor at {imgsz}x{imgsz}"
    return None
