"""DINOv2 embedders: transformers' Dinov2Model from a local directory, CLS token after the norm.

Nothing downloads: a model is a directory written by `save_pretrained` (config.json and the
weights), found by name under the models root of the settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from visionmesh.common.classifiers import IMAGENET_MEAN, IMAGENET_STD
from visionmesh.common.errors import FailedPrecondition, NotFound
from visionmesh.embedding.core.embedders import EmbedderInfo, Image, TorchEmbedder

if TYPE_CHECKING:
    import torch

__all__ = [
    "DINOV2_CROP",
    "DINOV2_RESIZE",
    "Dinov2Embedder",
    "describe_dinov2",
    "dinov2_embedder",
    "dinov2_preprocess",
    "discover_dinov2",
    "load_dinov2",
]

DINOV2_RESIZE = 256
"""DINOv2's evaluation transform resizes the shorter side to this (bicubic)..."""
DINOV2_CROP = 224
"""...then centre-crops a square of this side."""

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def discover_dinov2(root: Path) -> dict[str, Path]:
    """DINOv2 models under `root` by name: each subdirectory whose config.json is a dinov2 one."""
    if not root.is_dir():
        return {}
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        config = _read_config(child) if child.is_dir() else None
        if config is not None and config.get("model_type") == "dinov2":
            found[child.name] = child
    return found


def describe_dinov2(name: str, path: Path) -> EmbedderInfo:
    """The capabilities entry of a DINOv2 directory, read from its config without the weights."""
    config = _read_config(path)
    if config is None or config.get("model_type") != "dinov2":
        raise FailedPrecondition(f"{path} holds no DINOv2 model (config.json of model_type dinov2)")
    return _info(name, config)


def _info(name: str, config: dict[str, Any]) -> EmbedderInfo:
    dim = int(config["hidden_size"])
    return EmbedderInfo(
        name=name,
        dim=dim,
        family="dinov2",
        imgsz=DINOV2_CROP,
        description=(
            f"DINOv2 ViT ({dim}-d, {config.get('num_hidden_layers', '?')} layers, "
            f"patch {config.get('patch_size', '?')}): CLS token after the final layer norm"
        ),
    )


def dinov2_preprocess(images: Sequence[Image]) -> npt.NDArray[np.float32]:
    """DINOv2's evaluation transform as torchvision composes it, on the CPU with Pillow.

    Resize(256, BICUBIC) (shorter side to 256, the longer one truncated as torchvision
    does), CenterCrop(224), ToTensor, Normalize(ImageNet mean, std).
    """
    from PIL import Image as PILImage

    crops: list[npt.NDArray[np.uint8]] = []
    for image in images:
        height, width = image.shape[:2]
        if width <= height:
            new_w, new_h = DINOV2_RESIZE, int(DINOV2_RESIZE * height / width)
        else:
            new_w, new_h = int(DINOV2_RESIZE * width / height), DINOV2_RESIZE
        resized = np.asarray(
            PILImage.fromarray(np.ascontiguousarray(image)).resize(
                (new_w, new_h), PILImage.Resampling.BICUBIC
            ),
            dtype=np.uint8,
        )
        top = round((new_h - DINOV2_CROP) / 2.0)
        left = round((new_w - DINOV2_CROP) / 2.0)
        crops.append(resized[top : top + DINOV2_CROP, left : left + DINOV2_CROP])
    if not crops:
        return np.zeros((0, 3, DINOV2_CROP, DINOV2_CROP), dtype=np.float32)
    x = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray((x - _MEAN) / _STD, dtype=np.float32)


class _ClsToken:
    """Dinov2Model's pooler output: the CLS token after the final layer norm."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.model(pixel_values=pixel_values).pooler_output
        return pooled


class Dinov2Embedder(TorchEmbedder):
    """A DINOv2 ViT: the CLS token after the final layer norm, 224 px centre crops."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        config: dict[str, Any],
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        info = _info(name, config)
        super().__init__(
            model,
            name=name,
            dim=info.dim,
            family="dinov2",
            imgsz=info.imgsz,
            description=info.description,
            device=device,
            batch_size=batch_size,
        )
        self._cls = _ClsToken(self.module)

    def preprocess(self, images: Sequence[Image]) -> npt.NDArray[np.float32]:
        return dinov2_preprocess(images)

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        return self._cls(batch)


def load_dinov2(
    path: Path, *, name: str | None = None, device: str = "auto", batch_size: int = 32
) -> Dinov2Embedder:
    """The DINOv2 model saved in directory `path` (by `save_pretrained`); never downloads.

    NotFound when the directory is missing, FailedPrecondition when it holds no DINOv2 model.
    """
    if not path.is_dir():
        raise NotFound(
            f"no DINOv2 model directory at {path}",
            resource_type="embedding model",
            resource_id=name or path.name,
        )
    config = _read_config(path)
    if config is None or config.get("model_type") != "dinov2":
        raise FailedPrecondition(f"{path} holds no DINOv2 model (config.json of model_type dinov2)")
    from transformers import Dinov2Model

    try:
        model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot load the DINOv2 model in {path}: {exc}") from exc
    return Dinov2Embedder(
        model, name=name or path.name, config=config, device=device, batch_size=batch_size
    )


def dinov2_embedder(
    name: str, root: Path, *, device: str = "auto", batch_size: int = 32
) -> Dinov2Embedder:
    """The DINOv2 model called `name` under the models root; NotFound lists those present."""
    found = discover_dinov2(root)
    if name not in found:
        present = ", ".join(sorted(found)) or "none"
        raise NotFound(
            f"embedding model {name!r} not found (DINOv2 models present: {present})",
            resource_type="embedding model",
            resource_id=name,
        )
    return load_dinov2(found[name], name=name, device=device, batch_size=batch_size)
