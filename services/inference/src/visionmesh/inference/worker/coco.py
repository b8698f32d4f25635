"""COCO-format detections of a batch inference job, built from its ImageResults in input order.

The file follows COCO's instances layout (`images`, `annotations`, `categories`), as
Ultralytics' `save_json` writes for a dataset that is not COCO itself: category ids are
class id + 1 (COCO keeps 0 free), boxes are `[x, y, width, height]` in original image
pixels, and each annotation carries its `score` (the results format). Segment models add
`segmentation` as one flattened polygon `[x1, y1, x2, y2, ...]` and the polygon's `area`.

Classifiers have no COCO form (COCO describes objects in images, not image labels): their
jobs write the JSON Lines only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from visionmesh.api.inference.v1 import inference_pb2

COCO_FILE = "coco.json"
COCO_TASKS = ("detect", "segment")


def category_id(class_id: int) -> int:
    """The COCO category id of a model class id (1-based, as COCO and Ultralytics do)."""
    return class_id + 1


def polygon_area(points: Sequence[inference_pb2.Point]) -> float:
    """The shoelace area of a simple polygon, in square pixels."""
    twice = 0.0
    for i, point in enumerate(points):
        following = points[(i + 1) % len(points)]
        twice += point.x * following.y - following.x * point.y
    return abs(twice) / 2.0


class CocoDetections:
    """Collects detections image by image; `to_json` gives the coco.json bytes.

    Images that could not be used (ImageResult.error) are left out: COCO images need a
    width and height, and the JSON Lines already say why each one failed.
    """

    def __init__(self, *, class_names: Sequence[str], task: str) -> None:
        if task not in COCO_TASKS:
            raise ValueError(f"COCO detections need a detect or segment model, not {task!r}")
        self._class_names = list(class_names)
        self._segment = task == "segment"
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._count = 0

    def add(self, result: inference_pb2.ImageResult) -> None:
        """The next image in input order (its id is its 1-based position, errors counted)."""
        self._count += 1
        if result.HasField("error"):
            return
        image_id = self._count
        self._images.append(
            {
                "id": image_id,
                "file_name": result.key,
                "width": result.width,
                "height": result.height,
            }
        )
        for detection in result.detections:
            box = detection.box
            width, height = box.x2 - box.x1, box.y2 - box.y1
            annotation: dict[str, Any] = {
                "id": len(self._annotations) + 1,
                "image_id": image_id,
                "category_id": category_id(detection.class_id),
                "bbox": [_round(box.x1), _round(box.y1), _round(width), _round(height)],
                "area": _round(width * height),
                "iscrowd": 0,
                "score": round(float(detection.score), 5),
            }
            if self._segment:
                polygon = detection.polygon
                annotation["segmentation"] = (
                    [[_round(v) for point in polygon for v in (point.x, point.y)]]
                    if len(polygon) >= 3
                    else []
                )
                if len(polygon) >= 3:
                    annotation["area"] = _round(polygon_area(polygon))
            self._annotations.append(annotation)

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": {
                "description": "visionmesh batch inference detections",
                "category_ids": "class id + 1",
            },
            "images": self._images,
            "annotations": self._annotations,
            "categories": [
                {"id": category_id(class_id), "name": name, "supercategory": ""}
                for class_id, name in enumerate(self._class_names)
            ],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


def _round(value: float) -> float:
    # float32 proto fields carry noise past the millipixel; COCO tools print 2-3 decimals.
    return round(float(value), 3)
