"""A parity reference: Ultralytics trained directly, with its arguments written out here.

`python scripts/ultralytics_reference.py SPEC_JSON DATA_YAML WORKDIR` trains
`YOLO(spec["model"])` with the arguments below and prints
`{"seconds": ..., "arguments": {...}, "metrics": {...}}` (Ultralytics' own metric keys).
It imports nothing from visionmesh on purpose: a wrong argument mapping in the platform
must show up as a parity failure, not be copied into the reference.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def arguments(spec: dict, data: str, workdir: Path) -> dict:
    """What a CPU training job with this spec asks of Ultralytics, spelled out."""
    return {
        "data": data,
        "epochs": spec["epochs"],
        "imgsz": spec["imgsz"],
        "batch": spec["batch"],
        "optimizer": spec.get("optimizer", "auto"),
        "lr0": spec.get("lr0", 0.01),
        "patience": spec.get("patience", 100),
        "seed": spec.get("seed", 0),
        "deterministic": True,
        "device": "cpu",
        "amp": False,
        "workers": 0,
        "cache": False,
        "plots": False,
        "val": True,
        "pretrained": False,
        "project": str(workdir),
        "name": "run",
        "exist_ok": True,
        "verbose": False,
    }


def main(argv: list[str]) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    spec = json.loads(argv[0])
    args = arguments(spec, argv[1], Path(argv[2]).resolve())
    start = time.perf_counter()
    model = YOLO(spec["model"], task=spec["task"])
    model.train(**args)
    elapsed = time.perf_counter() - start
    assert model.trainer is not None
    metrics = {key: float(value) for key, value in model.trainer.metrics.items()}
    print(json.dumps({"seconds": elapsed, "arguments": args, "metrics": metrics}))


if __name__ == "__main__":
    main(sys.argv[1:])
