"""A parity reference for serving: Ultralytics' own predict on the .pt checkpoint.

`python scripts/ultralytics_predict_reference.py CHECKPOINT_PT IMAGE_DIR IMGSZ CONF`
runs `YOLO(CHECKPOINT_PT).predict` on every .png/.jpg of IMAGE_DIR and prints
`{"arguments": {...}, "task": ..., "images": {name: {...}}}` where each image has
"boxes" ([[x1, y1, x2, y2, score, class], ...] in original-image pixels) and, for segment
models, "polygons" (`Results.masks.xy`, one [[x, y], ...] per box), or for classifiers
"top1", "top1conf" and "probs". It imports nothing from visionmesh on purpose: a serving
mistake must show up as a difference, not be copied into the reference.

`rect=False`: an exported model has a fixed square input, so the checkpoint is given the
same square letterbox (Ultralytics' default for .pt files pads only to a stride multiple).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def arguments(imgsz: int, conf: float) -> dict[str, Any]:
    return {
        "imgsz": imgsz,
        "conf": conf,
        "device": "cpu",
        "rect": False,
        "retina_masks": False,
        "verbose": False,
        "save": False,
    }


def describe(result: Any) -> dict[str, Any]:
    if result.probs is not None:
        probs = result.probs.data.tolist()
        return {
            "top1": int(result.probs.top1),
            "top1conf": float(result.probs.top1conf),
            "probs": [float(p) for p in probs],
        }
    out: dict[str, Any] = {"boxes": [[float(v) for v in row] for row in result.boxes.data.tolist()]}
    if result.masks is not None:
        out["polygons"] = [polygon.tolist() for polygon in result.masks.xy]
    elif result.boxes is not None and getattr(result, "masks", None) is None:
        out["polygons"] = None
    return out


def main(argv: list[str]) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    checkpoint, image_dir, imgsz, conf = argv
    args = arguments(int(imgsz), float(conf))
    model = YOLO(checkpoint)
    images = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in {".jpg", ".png"})
    described = {}
    for image in images:
        (result,) = model.predict(str(image), **args)
        described[image.name] = describe(result)
    print(json.dumps({"arguments": args, "task": model.task, "images": described}))


if __name__ == "__main__":
    main(sys.argv[1:])
