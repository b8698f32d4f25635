"""A parity reference for exports: Ultralytics' own predict on the .pt and on the .onnx.

`python scripts/onnx_predict_reference.py CHECKPOINT_PT MODEL_ONNX IMAGE_DIR IMGSZ CONF`
runs `YOLO(path).predict` on every image of IMAGE_DIR with both files and prints
`{"arguments": {...}, "pt": {image: [[x1, y1, x2, y2, score, class], ...]}, "onnx": {...}}`
(boxes in original-image pixels). It imports nothing from visionmesh on purpose: the
exported file must work in Ultralytics as it is, with only what the file itself says.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def arguments(imgsz: int, conf: float) -> dict:
    return {"imgsz": imgsz, "conf": conf, "device": "cpu", "verbose": False, "save": False}


def predict(model_path: str, images: list[Path], args: dict) -> dict[str, list[list[float]]]:
    from ultralytics import YOLO

    model = YOLO(model_path, task="detect")
    boxes: dict[str, list[list[float]]] = {}
    for image in images:
        results: Any = model.predict(str(image), **args)
        result = results[0]
        rows = result.boxes.data.tolist() if result.boxes is not None else []
        boxes[image.name] = [[float(v) for v in row] for row in rows]
    return boxes


def main(argv: list[str]) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    pt, onnx_path, image_dir, imgsz, conf = argv
    images = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in {".jpg", ".png"})
    args = arguments(int(imgsz), float(conf))
    print(
        json.dumps(
            {
                "arguments": args,
                "pt": predict(pt, images, args),
                "onnx": predict(onnx_path, images, args),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
