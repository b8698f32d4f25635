"""What this export deployment can produce, as GetCapabilities reports and jobs re-check."""

from __future__ import annotations

import functools
import importlib.metadata

from visionmesh.common.specs.export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    ExportCapabilities,
    FormatSupport,
)
from visionmesh.export.core.tensorrt import tensorrt_support


def _cuda_devices() -> tuple[str, ...]:
    import torch

    if not torch.cuda.is_available():
        return ()
    return tuple(f"cuda:{index}" for index in range(torch.cuda.device_count()))


@functools.cache
def export_capabilities() -> ExportCapabilities:
    """Probed once per process: torch, onnx and TensorRT do not change under it."""
    import onnx

    # The opsets torch's TorchScript exporter writes that the installed onnx knows too.
    newest = onnx.defs.onnx_opset_version()
    opsets = tuple(opset for opset in SUPPORTED_OPSETS if opset <= newest)
    return ExportCapabilities(
        formats=(
            FormatSupport(
                "onnx", available=True, library_version=importlib.metadata.version("onnx")
            ),
            tensorrt_support(),
        ),
        opsets=opsets,
        default_opset=DEFAULT_OPSET,
        devices=("cpu", *_cuda_devices()),
    )
