"""Export benchmark: wall time per format, parity figures, ONNX Runtime vs PyTorch latency.

For yolo11n at 640 (detect, random init from its YAML: no weights download here) and a
resnet18 classifier at 224, each exported by the same pipeline an export job runs
(`run_export`: load, export, parity check on 8 synthetic images, Triton package):
  wall time    seconds per phase, for ONNX, ONNX with in-graph NMS (detect), and TensorRT
               where a CUDA GPU and TensorRT exist (skipped with the reason otherwise);
  parity       max |ONNX - PyTorch| per output, boxes matched, top-1 agreement;
  latency      the exported model in ONNX Runtime vs PyTorch eager on the same input, batch
               1 and 8, median of N runs after warm-up, same machine, same run (ratio < 1
               means ONNX Runtime is faster).

    uv run python benchmarks/export.py [--runs 20] [--threads 0] [--models yolo11n,resnet18]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.classifiers import CHECKPOINT_FORMAT, build_torchvision_classifier
from visionmesh.common.specs.export import check_export_spec
from visionmesh.export.core.capabilities import export_capabilities
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.parity import onnx_runner
from visionmesh.export.core.pipeline import ExportPackage, ExportTarget, run_export
from visionmesh.export.core.source import load_source

os.environ.setdefault("YOLO_OFFLINE", "1")


def _checkpoint(model: str, imgsz: int, path: Path) -> tuple[Path, str, str]:
    if model == "resnet18":
        net = build_torchvision_classifier("resnet18", num_classes=10, imgsz=imgsz)
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "model_state": net.state_dict(),
                "arch": "resnet18",
                "class_names": [f"class{i}" for i in range(10)],
                "imgsz": imgsz,
            },
            path,
        )
        return path, "torchvision", "classify"
    from ultralytics import YOLO

    YOLO(f"{model}.yaml").save(str(path))
    return path, "ultralytics", "detect"


def _export(
    checkpoint: Path, framework: str, task: str, imgsz: int, spec: export_pb2.ExportSpec, tmp: Path
) -> tuple[ExportPackage, float]:
    checked = check_export_spec(
        spec, framework=framework, task=task, model_imgsz=imgsz, capabilities=export_capabilities()
    )
    target = ExportTarget(
        spec=checked,
        model_version_id="bench",
        model_name="bench",
        model_version=1,
        framework=framework,
        task=task,
        architecture="",
        class_names=(),
        imgsz=imgsz,
    )
    start = time.perf_counter()
    package = run_export(
        target,
        checkpoint,
        tmp,
        synthetic_images(8),
        on_phase=lambda _: None,
        should_stop=lambda: False,
    )
    return package, time.perf_counter() - start


def _median_ms(run: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _latency(
    package: ExportPackage,
    checkpoint: Path,
    framework: str,
    task: str,
    imgsz: int,
    runs: int,
    threads: int,
) -> None:
    source = load_source(checkpoint, framework=framework, task=task, class_names=(), imgsz=imgsz)
    session = onnx_runner(package.path("model.onnx"), threads=threads)
    if threads:
        torch.set_num_threads(threads)
    for batch in (1, 8):
        x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
        tensor = torch.from_numpy(x)
        ort_ms = _median_ms(functools.partial(session, x), runs)
        torch_ms = _median_ms(functools.partial(source.forward, tensor), runs)
        print(
            f"    latency batch {batch}: onnxruntime {ort_ms:.1f} ms, "
            f"pytorch eager {torch_ms:.1f} ms, ratio {ort_ms / torch_ms:.2f}"
        )


def _report(name: str, package: ExportPackage, seconds: float) -> None:
    parity = package.parity
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in package.seconds.items())
    size_mb = package.path("model.onnx").stat().st_size / 1e6
    print(f"  {name}: {seconds:.1f} s ({phases}); onnx {size_mb:.1f} MB")
    diffs = ", ".join(f"{o.name} {o.max_abs_diff:.2e}" for o in parity.outputs)
    extra = (
        f"top-1 agreed {parity.top1_agreed}/{parity.images}"
        if package.metadata.task == "classify"
        else f"boxes matched {parity.boxes_matched}/{parity.boxes_reference}"
        + (
            f", in-graph NMS matched {parity.graph_nms_matched}/{parity.graph_nms_reference}"
            if package.spec.nms
            else ""
        )
    )
    print(
        f"    parity: max |diff| {diffs}; batch vs single {parity.batch_max_abs_diff:.2e}; {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime / torch threads (0 = default)"
    )
    parser.add_argument("--models", default="yolo11n,resnet18")
    args = parser.parse_args()
    tensorrt = next(f for f in export_capabilities().formats if f.name == "tensorrt")
    trt = tensorrt.library_version if tensorrt.available else f"unavailable ({tensorrt.reason})"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; TensorRT: {trt}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for model in args.models.split(","):
            imgsz = 224 if model == "resnet18" else 640
            checkpoint, framework, task = _checkpoint(model, imgsz, tmp / f"{model}.pt")
            print(f"{model} @ {imgsz} ({framework} {task})")
            specs = {"onnx": export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=8)}
            if task == "detect":
                specs["onnx + nms"] = export_pb2.ExportSpec(
                    dynamic_batch=True, max_batch_size=8, nms=True
                )
            if tensorrt.available:
                specs["tensorrt fp16"] = export_pb2.ExportSpec(
                    formats=["tensorrt"], half=True, dynamic_batch=True, max_batch_size=8
                )
            first: ExportPackage | None = None
            for name, spec in specs.items():
                package, seconds = _export(
                    checkpoint, framework, task, imgsz, spec, tmp / f"{model}-{name}"
                )
                _report(name, package, seconds)
                first = first or package
            assert first is not None
            _latency(first, checkpoint, framework, task, imgsz, args.runs, args.threads)


if __name__ == "__main__":
    main()
