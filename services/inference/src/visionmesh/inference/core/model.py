"""What a loaded model is to the rest of the service: tensors in, tensors out.

Every serving path goes through a `Runtime`: ONNX Runtime in-process, a Triton server, and
the dynamic batcher wrapped around either. Predict, KServe v2 and batch jobs see only this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[Any]

# numpy dtypes by KServe v2 datatype name (the Open Inference Protocol's tensor types).
KSERVE_DTYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


def kserve_datatype(dtype: np.dtype[Any]) -> str:
    """The KServe v2 name of a numpy dtype ("FP32" for float32)."""
    for name, known in KSERVE_DTYPES.items():
        if known == dtype:
            return name
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    raise ValueError(f"no KServe datatype for numpy dtype {dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as KServe's model metadata describes it."""

    name: str
    datatype: str
    """KServe v2 datatype name, e.g. "FP32"."""
    shape: tuple[int, ...]
    """The full shape, batch dimension first; -1 where a dimension is free."""


@dataclass
class Timing:
    """Where one call's time went, in seconds."""

    queue: float = 0.0
    compute: float = 0.0


@runtime_checkable
class Runtime(Protocol):
    """A model that runs batches of tensors: ONNX Runtime, Triton, or a batcher over either.

    Inputs and outputs are keyed by tensor name; dimension 0 is the batch. `infer` may be
    called concurrently; it fills `timing` (when given) with its queue and compute time.
    """

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def max_batch_size(self) -> int:
        """The largest batch one call may carry (1 when the model's batch is fixed at 1)."""
        ...

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RepositoryEntry:
    """One model of KServe's repository index (Triton's model repository extension)."""

    name: str
    version: str
    state: str
    """Triton's states: "READY", "LOADING" or "UNAVAILABLE"."""
    reason: str = ""


@dataclass
class InferenceStats:
    """Triton-style per-model statistics (what KServe's statistics extension reports)."""

    success_count: int = 0
    failure_count: int = 0
    inference_count: int = 0
    """Images (batch rows) inferred."""
    execution_count: int = 0
    """Model executions (a dynamic batch of several requests counts once)."""
    queue_ns: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0


@dataclass
class LoadedModel:
    """A READY deployment on this replica: what Predict, KServe and batch jobs serve."""

    tenant_id: str
    name: str
    """The deployment name; also its KServe model name."""
    version: str
    """KServe model version: the deployment's generation, as a string."""
    metadata: dict[str, Any]
    """ModelMetadata as a snake_case dict (what visionmesh.common.vision.processing reads)."""
    runtime: Runtime
    """The batcher in front of the backend."""
    platform: str
    """Triton's platform name of the backend, e.g. "onnxruntime_onnx"."""
    model_version_id: str = ""
    """The registered model version it serves."""
    triton_config: dict[str, Any] = field(default_factory=dict)
    """The export's Triton model config as JSON (Triton's model-config extension), with
    parameters.metadata as the export wrote it."""
    stats: InferenceStats = field(default_factory=InferenceStats)
