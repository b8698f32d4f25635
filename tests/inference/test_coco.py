"""COCO detections of a batch job: boxes as [x, y, w, h], 1-based categories, polygons."""

from __future__ import annotations

import json

import pytest
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.inference.worker.coco import CocoDetections, polygon_area

NAMES = ("circle", "square", "triangle")


def _detection(class_id: int, score: float, box: tuple[float, float, float, float]) -> dict:
    x1, y1, x2, y2 = box
    return {
        "class_id": class_id,
        "class_name": NAMES[class_id],
        "score": score,
        "box": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
    }


def test_boxes_become_xywh_with_1_based_categories_and_errors_are_left_out() -> None:
    coco = CocoDetections(class_names=NAMES, task="detect")
    coco.add(
        inference_pb2.ImageResult(
            key="in/a.jpg",
            width=640,
            height=480,
            detections=[
                _detection(2, 0.9, (10.5, 20.25, 110.5, 70.25)),
                _detection(0, 0.4, (0, 0, 5, 8)),
            ],
        )
    )
    coco.add(
        inference_pb2.ImageResult(
            key="in/broken.jpg",
            error=inference_pb2.ImageError(field="images[1]", reason="UNDECODABLE"),
        )
    )
    coco.add(inference_pb2.ImageResult(key="in/c.png", width=32, height=16))
    document = json.loads(coco.to_json())

    assert document["categories"] == [
        {"id": 1, "name": "circle", "supercategory": ""},
        {"id": 2, "name": "square", "supercategory": ""},
        {"id": 3, "name": "triangle", "supercategory": ""},
    ]
    # Image ids are input positions: the broken second image keeps its number unused.
    assert document["images"] == [
        {"id": 1, "file_name": "in/a.jpg", "width": 640, "height": 480},
        {"id": 3, "file_name": "in/c.png", "width": 32, "height": 16},
    ]
    first, second = document["annotations"]
    assert first == {
        "id": 1,
        "image_id": 1,
        "category_id": 3,
        "bbox": [10.5, 20.25, 100.0, 50.0],
        "area": 5000.0,
        "iscrowd": 0,
        "score": 0.9,
    }
    assert second["id"] == 2 and second["category_id"] == 1
    assert second["bbox"] == [0.0, 0.0, 5.0, 8.0] and second["area"] == 40.0
    assert "segmentation" not in first


def test_segment_masks_are_flattened_polygons_with_their_own_area() -> None:
    coco = CocoDetections(class_names=NAMES, task="segment")
    square = [(10.0, 10.0), (30.0, 10.0), (30.0, 30.0), (10.0, 30.0)]
    detection = _detection(1, 0.75, (10, 10, 30, 30)) | {
        "polygon": [{"x": x, "y": y} for x, y in square]
    }
    sliver = _detection(0, 0.5, (1, 1, 2, 2)) | {"polygon": [{"x": 1.0, "y": 1.0}]}
    coco.add(
        inference_pb2.ImageResult(key="a.jpg", width=64, height=64, detections=[detection, sliver])
    )
    annotation, degenerate = coco.to_dict()["annotations"]
    assert annotation["segmentation"] == [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    assert annotation["area"] == 400.0
    assert annotation["bbox"] == [10.0, 10.0, 20.0, 20.0]
    # Fewer than three points outline nothing: no polygon, the box's area.
    assert degenerate["segmentation"] == [] and degenerate["area"] == 1.0


def test_polygon_area_is_orientation_free() -> None:
    triangle = [inference_pb2.Point(x=x, y=y) for x, y in ((0, 0), (4, 0), (0, 3))]
    assert polygon_area(triangle) == 6.0
    assert polygon_area(list(reversed(triangle))) == 6.0


def test_classifiers_have_no_coco_form() -> None:
    with pytest.raises(ValueError, match="detect or segment"):
        CocoDetections(class_names=NAMES, task="classify")
