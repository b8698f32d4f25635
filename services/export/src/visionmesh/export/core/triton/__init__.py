"""Triton model repositories: the exported model, Python pre/post-processing and an ensemble."""

from __future__ import annotations

from visionmesh.export.core.triton._repository import (
    CLASSIFY_POSTPROCESS,
    DETECT_POSTPROCESS,
    DETECTIONS,
    IMAGE,
    NUM_DETECTIONS,
    PROBABILITIES,
    TOP_CLASSES,
    TOP_K,
    TOP_SCORES,
    TRANSFORM,
    metadata_json,
    ultralytics_literal,
    use_python_standin,
    write_repository,
    zip_repository,
)

__all__ = [
    "CLASSIFY_POSTPROCESS",
    "DETECTIONS",
    "DETECT_POSTPROCESS",
    "IMAGE",
    "NUM_DETECTIONS",
    "PROBABILITIES",
    "TOP_CLASSES",
    "TOP_K",
    "TOP_SCORES",
    "TRANSFORM",
    "metadata_json",
    "ultralytics_literal",
    "use_python_standin",
    "write_repository",
    "zip_repository",
]
