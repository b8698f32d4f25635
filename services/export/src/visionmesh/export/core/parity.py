"""The parity check: the exported model must compute what the PyTorch model computes.

Run inside every export job before anything is uploaded. Raw outputs are compared
element-wise within the spec's tolerance; after post-processing, detections must match
box for box (IoU >= 0.99, same class, |score difference| <= 1e-3) and classifications
must agree on the top-1 class of every image; the exported model's batched outputs must
equal its single-image outputs; and with in-graph NMS, that graph's detections must equal
the reference NMS applied to the PyTorch outputs, image by image of one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.vision import Transform, detections, preprocess
from visionmesh.export.core.source import SourceModel

BOX_IOU = 0.99
SCORE_DIFF = 1e-3

Runner = Callable[[np.ndarray], list[np.ndarray]]
"""Runs the exported model on one NCHW float32 batch and returns its outputs in order."""


@dataclass(frozen=True)
class ParityInputs:
    images: list[np.ndarray]
    """H x W x 3 uint8 RGB images in their original sizes."""
    source: str
    """"validation" or "synthetic"."""


def onnx_runner(path: Path, *, threads: int = 0) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(out) for out in session.run(None, {model_input.name: batch})]

    return run


def in_batches(run: Runner, batch: np.ndarray, size: int, *, fixed: bool) -> list[np.ndarray]:
    """Runs `batch` in chunks of `size`; a fixed-batch graph gets its last chunk padded."""
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(batch), size):
        chunk = batch[start : start + size]
        real = len(chunk)
        if fixed and real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        parts.append([out[:real] for out in run(np.ascontiguousarray(chunk))])
    return [np.concatenate([part[i] for part in parts]) for i in range(len(parts[0]))]


def check_parity(
    source: SourceModel,
    spec: export_pb2.ExportSpec,
    meta: Mapping[str, Any],
    inputs: ParityInputs,
    exported: Runner,
    *,
    output_names: Sequence[str],
    nms_graph: Runner | None = None,
    format_name: str = "onnx",
) -> export_pb2.ParityReport:
    """Compares `exported` (and the in-graph NMS model, if any) with the PyTorch model."""
    tolerance = spec.parity
    atol, rtol = tolerance.atol, tolerance.rtol
    batch, transforms = preprocess(inputs.images, meta)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    fixed = not spec.dynamic_batch
    # The exported model in batches as large as it takes (the batched run), and image by
    # image; a fixed-batch graph runs its own batch size both ways.
    step = max(1, spec.max_batch_size if fixed else len(batch))
    ours = in_batches(exported, batch, step, fixed=fixed)
    single = in_batches(exported, batch, 1 if not fixed else step, fixed=fixed)
    with torch.inference_mode():
        reference = [t.numpy() for t in source.forward(torch.from_numpy(batch))]
    report = export_pb2.ParityReport(
        format=format_name,
        images=len(inputs.images),
        image_source=inputs.source,
        tolerance=tolerance,
        batch_size=step if not fixed else spec.max_batch_size,
    )
    failures: list[str] = []
    if len(ours) != len(reference):
        failures.append(f"{len(ours)} outputs, the PyTorch model has {len(reference)}")
    for name, got, want in zip(output_names, ours, reference, strict=False):
        out = _compare(name, got, want, atol, rtol)
        report.outputs.append(out)
        if got.shape != want.shape:
            failures.append(f"{name}: shape {got.shape}, PyTorch {want.shape}")
        elif not np.all(np.abs(got - want) <= atol + rtol * np.abs(want)):
            failures.append(
                f"{name}: max |diff| {out.max_abs_diff:.3g} exceeds atol {atol:g} + rtol {rtol:g}"
            )
    for got, alone in zip(ours, single, strict=False):
        diff = float(np.max(np.abs(got - alone))) if got.size else 0.0
        report.batch_max_abs_diff = max(report.batch_max_abs_diff, diff)
        if not np.all(np.abs(got - alone) <= atol + rtol * np.abs(alone)):
            failures.append(f"batched outputs differ from single-image ones by {diff:.3g}")
    if not failures:
        if source.task in ("detect", "segment"):
            failures += _check_detections(report, meta, reference, ours, transforms)
        else:
            agreed = int(np.sum(np.argmax(ours[0], 1) == np.argmax(reference[0], 1)))
            report.top1_agreed = agreed
            if agreed != len(inputs.images):
                failures.append(f"top-1 agrees on {agreed} of {len(inputs.images)} images")
    if nms_graph is not None and not failures:
        failures += _check_nms_graph(report, spec, meta, batch, transforms, reference, nms_graph)
    report.passed = not failures
    report.failure = "; ".join(failures)
    return report


def _compare(
    name: str, got: np.ndarray, want: np.ndarray, atol: float, rtol: float
) -> export_pb2.OutputParity:
    if got.shape != want.shape or not got.size:
        return export_pb2.OutputParity(name=name, elements=int(got.size))
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    big = np.abs(want) > atol
    rel = diff[big] / np.abs(want[big]) if np.any(big) else np.zeros(1)
    return export_pb2.OutputParity(
        name=name,
        max_abs_diff=float(diff.max()),
        max_rel_diff=float(rel.max()),
        elements=int(got.size),
    )


def _check_detections(
    report: export_pb2.ParityReport,
    meta: Mapping[str, Any],
    reference: list[np.ndarray],
    ours: list[np.ndarray],
    transforms: list[Transform],
) -> list[str]:
    # `meta` describes the graph checked here: raw outputs, or an end-to-end head's rows.
    want = detections(reference, transforms, meta)
    got = detections(ours, transforms, meta)
    conf = float(meta.get("nms", {}).get("conf", 0.25))
    return _match_all(report, want, got, conf, graph=False)


def _check_nms_graph(
    report: export_pb2.ParityReport,
    spec: export_pb2.ExportSpec,
    meta: Mapping[str, Any],
    batch: np.ndarray,
    transforms: list[Transform],
    reference: list[np.ndarray],
    nms_graph: Runner,
) -> list[str]:
    fixed = not spec.dynamic_batch
    step = spec.max_batch_size if fixed else len(batch)
    graph_out = in_batches(nms_graph, batch, step, fixed=fixed)
    want = detections(reference, transforms, {**meta, "nms_in_graph": False})
    got = detections(graph_out, transforms, {**meta, "nms_in_graph": True})
    conf = float(meta.get("nms", {}).get("conf", 0.25))
    return _match_all(report, want, got, conf, graph=True)


def _match_all(
    report: export_pb2.ParityReport,
    want: list[np.ndarray],
    got: list[np.ndarray],
    conf: float,
    *,
    graph: bool,
) -> list[str]:
    reference = matched = exported = 0
    failures: list[str] = []
    for image, (w, g) in enumerate(zip(want, got, strict=True)):
        pairs, unmatched_w, unmatched_g = match_boxes(w, g)
        # A box whose score sits on the confidence threshold may fall either side of it
        # in two correct implementations; only those are excused.
        excused_w = sum(1 for i in unmatched_w if abs(float(w[i, 4]) - conf) <= SCORE_DIFF)
        excused_g = sum(1 for i in unmatched_g if abs(float(g[i, 4]) - conf) <= SCORE_DIFF)
        reference += len(w) - excused_w
        exported += len(g) - excused_g
        matched += len(pairs)
        if not graph:
            for iou, score_diff in pairs:
                report.min_box_iou = (
                    iou if report.boxes_matched == 0 else min(report.min_box_iou, iou)
                )
                report.max_score_diff = max(report.max_score_diff, score_diff)
                report.boxes_matched += 1
        if len(unmatched_w) > excused_w or len(unmatched_g) > excused_g:
            failures.append(
                f"{'in-graph NMS ' if graph else ''}image {image}: "
                f"{len(unmatched_w) - excused_w} reference boxes unmatched, "
                f"{len(unmatched_g) - excused_g} extra exported boxes"
            )
    if graph:
        report.graph_nms_reference, report.graph_nms_matched = reference, matched
    else:
        report.boxes_reference, report.boxes_exported = reference, exported
        if report.boxes_matched == 0:
            report.min_box_iou = 1.0
    return failures[:5]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (n, 4) and (m, 4) x1, y1, x2, y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_boxes(
    want: np.ndarray, got: np.ndarray
) -> tuple[list[tuple[float, float]], list[int], list[int]]:
    """One-to-one matches of reference rows to exported rows (x1, y1, x2, y2, score, class).

    A match needs the same class, IoU >= 0.99 and |score difference| <= 1e-3; reference
    boxes are matched best score first, each to its highest-IoU free candidate. Returns
    (iou, score difference) per match and the unmatched row indices of each side.
    """
    if not len(want) or not len(got):
        return [], list(range(len(want))), list(range(len(got)))
    ious = box_iou(want[:, :4].astype(np.float64), got[:, :4].astype(np.float64))
    free = np.ones(len(got), dtype=bool)
    pairs: list[tuple[float, float]] = []
    unmatched: list[int] = []
    for i in np.argsort(-want[:, 4], kind="stable"):
        ok = (
            free
            & (got[:, 5] == want[i, 5])
            & (ious[i] >= BOX_IOU)
            & (np.abs(got[:, 4] - want[i, 4]) <= SCORE_DIFF)
        )
        if not np.any(ok):
            unmatched.append(int(i))
            continue
        j = int(np.argmax(np.where(ok, ious[i], -1.0)))
        free[j] = False
        pairs.append((float(ious[i, j]), float(abs(got[j, 4] - want[i, 4]))))
    return pairs, unmatched, [int(j) for j in np.flatnonzero(free)]
