"""Image pre- and post-processing for exported models, driven by their ModelMetadata.

`processing.py` is self-contained (standard library, numpy, OpenCV, Pillow) so that it can be
copied verbatim next to Triton Python-backend models: `PROCESSING_SOURCE` is its path.
"""

from __future__ import annotations

from pathlib import Path

from visionmesh.common.vision.processing import (
    Transform,
    classifications,
    decode_image,
    detections,
    preprocess,
    segment_detections,
)

PROCESSING_SOURCE: Path = Path(__file__).with_name("processing.py")

__all__ = [
    "PROCESSING_SOURCE",
    "Transform",
    "classifications",
    "decode_image",
    "detections",
    "preprocess",
    "segment_detections",
]
