"""An exported ONNX model run in-process by ONNX Runtime, as a `Runtime`."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from visionmesh.common.errors import FailedPrecondition, InvalidArgument
from visionmesh.inference.core.model import KSERVE_DTYPES, Tensor, TensorSpec, Timing

__all__ = ["OnnxRuntimeModel", "resolve_device"]

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:(\d+))?)$")

# ONNX Runtime's element type names (NodeArg.type) by KServe datatype.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def resolve_device(device: str) -> tuple[str, int]:
    """("auto" | "cpu" | "cuda", device id) of a device string; FailedPrecondition if malformed."""
    match = _DEVICE.match(device or "auto")
    if match is None:
        raise FailedPrecondition.for_field(
            "device", f"{device!r} is not one of auto, cpu, cuda, cuda:N"
        )
    kind = match.group(1).split(":")[0]
    return kind, int(match.group(3) or 0)


class OnnxRuntimeModel:
    """One ONNX Runtime InferenceSession; `infer` runs it on a worker thread.

    ONNX Runtime's `run` is thread-safe and releases the GIL, so concurrent calls overlap on
    the device; the dynamic batcher in front usually serialises them anyway.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        providers: Sequence[str] = (),
        max_batch_size: int = 64,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        kind, device_id = resolve_device(device)
        available = ort.get_available_providers()
        chosen = _providers(kind, device_id, list(providers), available)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:
            # ONNX Runtime raises its own exception types for a corrupt or unsupported graph.
            raise FailedPrecondition(f"ONNX Runtime cannot load {Path(path).name}: {exc}") from exc
        self._session: ort.InferenceSession | None = session
        active = session.get_providers()
        on_cuda = _CUDA in active
        if kind == "cuda" and not on_cuda:
            # ONNX Runtime falls back to the CPU silently when CUDA fails to initialise.
            raise FailedPrecondition.for_field(
                "device", f"CUDA could not be initialised for {device!r}; providers: {active}"
            )
        self.device = f"cuda:{device_id}" if on_cuda else "cpu"
        """Where the model runs: "cpu" or "cuda:N"."""
        self.providers: tuple[str, ...] = tuple(active)
        self._inputs = tuple(_spec(arg) for arg in session.get_inputs())
        self._outputs = tuple(_spec(arg) for arg in session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]
        self._fixed_batch = _fixed_batch(self._inputs)
        self._max_batch_size = self._fixed_batch or max_batch_size

    @classmethod
    async def load(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        threads: int = 0,
        providers: Sequence[str] = (),
        max_batch_size: int = 64,
    ) -> OnnxRuntimeModel:
        """Build the session on a worker thread (graph optimisation takes a while)."""
        return await asyncio.to_thread(
            cls,
            path,
            device=device,
            threads=threads,
            providers=providers,
            max_batch_size=max_batch_size,
        )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]:
        session = self._session
        if session is None:
            raise FailedPrecondition("the model was unloaded")
        feed, rows = self._check(inputs)
        start = time.perf_counter()
        results = await asyncio.to_thread(session.run, self._output_names, feed)
        if timing is not None:
            timing.compute += time.perf_counter() - start
        outputs = {
            name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)
        }
        if self._fixed_batch and rows < self._fixed_batch:
            outputs = {name: value[:rows] for name, value in outputs.items()}
        return outputs

    async def close(self) -> None:
        # The session frees its memory when collected; dropping our reference is all there is
        # (a call already running holds its own reference and finishes).
        self._session = None

    def _check(self, inputs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], int]:
        """The feed for session.run, padded to a fixed batch; InvalidArgument naming a tensor."""
        expected = {spec.name for spec in self._inputs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise InvalidArgument.for_field(
                unknown[0], f"the model has no input {unknown[0]!r}; its inputs: {sorted(expected)}"
            )
        feed: dict[str, Tensor] = {}
        rows: int | None = None
        for spec in self._inputs:
            if spec.name not in inputs:
                raise InvalidArgument.for_field(spec.name, "input tensor missing")
            value = np.asarray(inputs[spec.name])
            want = KSERVE_DTYPES[spec.datatype]
            if value.dtype != want and not (spec.datatype == "BYTES" and value.dtype.kind in "OUS"):
                raise InvalidArgument.for_field(
                    spec.name, f"datatype must be {spec.datatype} ({want}), got {value.dtype}"
                )
            if value.ndim != len(spec.shape) or any(
                want_dim >= 0 and got != want_dim and not (axis == 0 and self._fixed_batch)
                for axis, (got, want_dim) in enumerate(zip(value.shape, spec.shape, strict=True))
            ):
                raise InvalidArgument.for_field(
                    spec.name, f"shape must be {list(spec.shape)}, got {list(value.shape)}"
                )
            if spec.datatype == "BYTES" and value.dtype.kind in "OS":
                value = _as_text(spec.name, value)
            if rows is None:
                rows = int(value.shape[0])
            elif value.shape[0] != rows:
                raise InvalidArgument.for_field(
                    spec.name, f"batch of {value.shape[0]} rows; other inputs have {rows}"
                )
            if value.shape[0] > self._max_batch_size:
                raise InvalidArgument.for_field(
                    spec.name,
                    f"batch of {value.shape[0]} exceeds the model's maximum {self._max_batch_size}",
                )
            if rows == 0:
                raise InvalidArgument.for_field(spec.name, "batch is empty")
            feed[spec.name] = _pad_rows(value, self._fixed_batch)
        return feed, rows or 0


def _as_text(name: str, value: Tensor) -> Tensor:
    """String elements as str: ONNX Runtime would store bytes objects as their repr ("b'..'")."""
    text = np.empty(value.size, dtype=np.object_)
    try:
        text[:] = [v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1)]
    except UnicodeDecodeError:
        raise InvalidArgument.for_field(name, "string elements must be UTF-8 text") from None
    return text.reshape(value.shape)


def _providers(kind: str, device_id: int, asked: list[str], available: list[str]) -> list[Any]:
    if asked:
        missing = [p for p in asked if p not in available]
        if missing:
            raise FailedPrecondition.for_field(
                "providers", f"ONNX Runtime here lacks {missing}; it has {available}"
            )
        if kind == "cuda" and _CUDA not in asked:
            raise FailedPrecondition.for_field(
                "device", f"device cuda needs {_CUDA} among the configured providers {asked}"
            )
        if kind == "cpu":
            return [p for p in asked if p == _CPU] or [_CPU]
        return [(p, {"device_id": device_id}) if p == _CUDA else p for p in asked]
    if kind == "cpu":
        return [_CPU]
    if _CUDA not in available:
        if kind == "cuda":
            raise FailedPrecondition.for_field(
                "device", f"CUDA is not available to ONNX Runtime here (providers: {available})"
            )
        return [_CPU]
    return [(_CUDA, {"device_id": device_id}), _CPU]


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(str(arg.type))
    if datatype is None:
        raise FailedPrecondition(f"tensor {arg.name!r} has an unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=str(arg.name), datatype=datatype, shape=shape)


def _fixed_batch(inputs: Sequence[TensorSpec]) -> int:
    """The batch every input is fixed at, or 0 when it is free."""
    batches = {spec.shape[0] for spec in inputs if spec.shape}
    if len(batches) == 1:
        (batch,) = batches
        return max(batch, 0)
    return 0


def _pad_rows(value: Tensor, fixed_batch: int) -> Tensor:
    """A fixed-batch graph takes exactly its batch: the missing rows are zeros, cut off after."""
    if not fixed_batch or value.shape[0] == fixed_batch:
        return value
    pad = np.zeros((fixed_batch - value.shape[0], *value.shape[1:]), dtype=value.dtype)
    return np.concatenate((value, pad))
