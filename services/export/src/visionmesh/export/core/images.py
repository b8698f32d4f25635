"""The parity check's images: the model's own validation images when known, else synthetic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from visionmesh.common.datasets import MaterialisedDataset
from visionmesh.common.vision import decode_image
from visionmesh.export.core.parity import ParityInputs

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_SPLIT_PREFERENCE = ("val", "valid", "validation", "test", "train")


def validation_images(dataset: MaterialisedDataset, count: int) -> ParityInputs | None:
    """Up to `count` images of the first split found of val, test, train; None if none."""
    manifest = dataset.manifest
    for name in _SPLIT_PREFERENCE:
        split = manifest.split(name)
        if split is None:
            continue
        folders = [folder.rstrip("/") + "/" if folder else "" for folder in split.images]
        paths = sorted(
            entry.path
            for entry in manifest.files
            if Path(entry.path).suffix.lower() in _IMAGE_SUFFIXES
            and any(entry.path.startswith(folder) for folder in folders)
        )
        images = []
        for path in paths:
            try:
                images.append(decode_image((dataset.root / path).read_bytes()))
            except ValueError:
                continue  # the gateway checked them; a broken one is simply not used
            if len(images) == count:
                break
        if images:
            return ParityInputs(images=images, source="validation")
    return None


def synthetic_images(count: int, *, seed: int = 0) -> ParityInputs:
    """Seeded images of several sizes and aspect ratios with filled shapes on noise."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        height, width = int(rng.integers(96, 480)), int(rng.integers(96, 480))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(1 + index % 4):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x1, y1 = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
            x2 = int(rng.integers(x1 + 8, width))
            y2 = int(rng.integers(y1 + 8, height))
            if index % 2:
                cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness=-1)
            else:
                centre = ((x1 + x2) // 2, (y1 + y2) // 2)
                cv2.circle(image, centre, max(4, min(x2 - x1, y2 - y1) // 2), color, -1)
        images.append(image)
    return ParityInputs(images=images, source="synthetic")
