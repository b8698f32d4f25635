"""A reference run: the same spec trained by Ultralytics directly, without the mesh.

`python -m visionmesh.training.reference SPEC_JSON DATA_YAML WORKDIR` trains with exactly
the arguments a job would use (`fresh_train_arguments`) but no hooks, queue, storage or
events, and prints `{"seconds": ..., "metrics": {...}}` with the platform's metric names.
The parity test and benchmarks/training.py compare jobs against it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO
    from visionmesh.training.core import (
        TrainSpec,
        fresh_train_arguments,
        normalise_ultralytics_metrics,
        resolve_device,
    )

    spec = TrainSpec.from_dict(json.loads(argv[0]))
    args = fresh_train_arguments(
        spec, data=argv[1], workdir=Path(argv[2]).resolve(), device=resolve_device(spec.device)
    )
    start = time.perf_counter()
    model = YOLO(spec.model, task=spec.task)
    model.train(**args)
    elapsed = time.perf_counter() - start
    assert model.trainer is not None
    metrics = normalise_ultralytics_metrics(model.trainer.metrics)
    print(json.dumps({"seconds": elapsed, "metrics": metrics}))


if __name__ == "__main__":
    main(sys.argv[1:])
