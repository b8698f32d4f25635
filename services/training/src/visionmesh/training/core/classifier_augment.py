"""Batch augmentation for the torchvision classifier trainer, on the training device.

The keys and their meaning follow Ultralytics' classification training (`classify_augmentations`),
so one spec reads the same for both frameworks:
  - scale: a random resized crop keeping an area fraction in [1 - scale, 1] of the image, at an
    aspect ratio in [3/4, 4/3], resized back to imgsz;
  - degrees: a rotation by up to +/- degrees; translate: a shift by up to +/- that fraction;
  - hsv_v: brightness and contrast factors in [1 - hsv_v, 1 + hsv_v]; hsv_s: saturation in
    [1 - hsv_s, 1 + hsv_s]; hsv_h: a hue rotation by up to +/- hsv_h of the colour circle
    (torchvision's ColorJitter, which Ultralytics uses, with the same arguments);
  - fliplr / flipud: flip probabilities; erasing: probability of erasing one random rectangle.
The geometric ones are one affine resampling per image (a single `grid_sample` for the batch),
so they cost the same whichever are on. Every random draw comes from torch's CPU generator,
which the trainer seeds per epoch: a resumed job replays the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_AUGMENT", "augment_batch"]

# What an empty `augment` means: Ultralytics' default left-right flip, nothing else.
DEFAULT_AUGMENT: Mapping[str, float] = {"fliplr": 0.5}
_ERASING_SCALE = (0.02, 0.2)
_ASPECT_RANGE = (3 / 4, 4 / 3)
# Rec. 601 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float) -> torch.Tensor:
    return torch.empty(n).uniform_(low, high)


def _geometry(x: torch.Tensor, augment: Mapping[str, float]) -> torch.Tensor:
    scale = float(augment.get("scale", 0.0))
    degrees = float(augment.get("degrees", 0.0))
    translate = float(augment.get("translate", 0.0))
    if scale <= 0 and degrees <= 0 and translate <= 0:
        return x
    n = x.shape[0]
    # Crop size as a fraction of each side: area a, aspect r = w/h -> w = sqrt(a r), h = sqrt(a/r).
    area = _uniform(n, 1.0 - scale, 1.0)
    aspect = torch.exp(_uniform(n, *(math.log(r) for r in _ASPECT_RANGE))) if scale > 0 else None
    crop_w = torch.sqrt(area * aspect) if aspect is not None else torch.sqrt(area)
    crop_h = torch.sqrt(area / aspect) if aspect is not None else torch.sqrt(area)
    crop_w, crop_h = crop_w.clamp(max=1.0), crop_h.clamp(max=1.0)
    # Crop centre anywhere the crop fits, then the shift; in normalised [-1, 1] coordinates.
    cx = (1 - crop_w) * _uniform(n, -1.0, 1.0) + 2 * translate * _uniform(n, -1.0, 1.0)
    cy = (1 - crop_h) * _uniform(n, -1.0, 1.0) + 2 * translate * _uniform(n, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -degrees, degrees))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output pixel (u, v) samples input at centre + R(angle) @ diag(crop_w, crop_h) @ (u, v).
    theta = torch.stack(
        [
            torch.stack([cos * crop_w, -sin * crop_h, cx], dim=1),
            torch.stack([sin * crop_w, cos * crop_h, cy], dim=1),
        ],
        dim=1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    luma = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(dim=1, keepdim=True)


def _factor(n: int, spread: float, x: torch.Tensor) -> torch.Tensor:
    return _uniform(n, max(0.0, 1.0 - spread), 1.0 + spread).to(x.device, x.dtype).view(n, 1, 1, 1)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """Per-image 3x3 RGB matrices rotating hue by `angle` radians about the grey axis."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    third, root = 1.0 / 3.0, math.sqrt(1.0 / 3.0)
    a = cos + (1 - cos) * third
    b = third * (1 - cos) - root * sin
    c = third * (1 - cos) + root * sin
    return torch.stack(
        [torch.stack([a, b, c], -1), torch.stack([c, a, b], -1), torch.stack([b, c, a], -1)], -2
    )


def _colour(x: torch.Tensor, augment: Mapping[str, float]) -> torch.Tensor:
    n = x.shape[0]
    value = float(augment.get("hsv_v", 0.0))
    saturation = float(augment.get("hsv_s", 0.0))
    hue = float(augment.get("hsv_h", 0.0))
    if value > 0:
        x = (x * _factor(n, value, x)).clamp(0.0, 1.0)
        mean = _grey(x).mean(dim=(-2, -1), keepdim=True)
        x = (mean + (x - mean) * _factor(n, value, x)).clamp(0.0, 1.0)
    if saturation > 0:
        grey = _grey(x)
        x = (grey + (x - grey) * _factor(n, saturation, x)).clamp(0.0, 1.0)
    if hue > 0:
        rotation = _hue_rotation(2 * math.pi * _uniform(n, -hue, hue)).to(x.device, x.dtype)
        x = torch.einsum("nij,njhw->nihw", rotation, x).clamp(0.0, 1.0)
    return x


def _flips(x: torch.Tensor, augment: Mapping[str, float]) -> torch.Tensor:
    n = x.shape[0]
    for key, dim in (("fliplr", -1), ("flipud", -2)):
        p = float(augment.get(key, DEFAULT_AUGMENT.get(key, 0.0)))
        if p > 0:
            mask = (torch.rand(n) < p).to(x.device)[:, None, None, None]
            x = torch.where(mask, x.flip(dim), x)
    return x


def _erase(x: torch.Tensor, p: float, fill: torch.Tensor) -> torch.Tensor:
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    for i in torch.nonzero(torch.rand(n) < p).flatten().tolist():
        area = float(torch.empty(1).uniform_(*_ERASING_SCALE)) * h * w
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(3.3))))
        eh = min(h, max(1, round(math.sqrt(area * aspect))))
        ew = min(w, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - eh + 1, (1,)))
        left = int(torch.randint(0, w - ew + 1, (1,)))
        x[i, :, top : top + eh, left : left + ew] = fill
    return x


def augment_batch(
    x: torch.Tensor, augment: Mapping[str, float], *, erase_fill: torch.Tensor
) -> torch.Tensor:
    """Augment a float batch (N, 3, H, W) with values in [0, 1]; returns a new tensor.

    `erase_fill` (3, 1, 1) is what an erased rectangle holds: the dataset mean, so that after
    normalisation it reads as zero, as torchvision's RandomErasing on normalised input.
    """
    x = _colour(_geometry(x, augment), augment)
    x = _flips(x, augment)
    p_erase = float(augment.get("erasing", 0.0))
    if p_erase > 0:
        x = _erase(x.clone(), p_erase, erase_fill.to(x.device, x.dtype))
    return x
