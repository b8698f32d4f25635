"""Dynamic batching: concurrent requests to one model share its executions.

A model executes a batch of 8 images in much less than 8 times one image's time, so the
batcher holds the first waiting request up to `queue_delay_s` for others to join, stacks
them along dimension 0 (up to the model's batch limit) and runs one execution. Only
requests whose tensors agree beyond the batch dimension (same names, dtypes and trailing
shapes) can share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from visionmesh.common.errors import Internal, InvalidArgument, Unavailable
from visionmesh.common.logging import get_logger
from visionmesh.inference.core.model import InferenceStats, Runtime, Tensor, TensorSpec, Timing
from visionmesh.inference.core.serving_metrics import DeploymentMetrics, ServingMetrics

__all__ = ["DynamicBatcher"]

_log = get_logger(__name__)

# What decides whether two requests can be stacked: per input, its name, dtype and the
# shape after the batch dimension.
_Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(eq=False)
class _Part:
    """Up to max_batch_size rows of one caller's request, waiting for a model execution."""

    inputs: dict[str, Tensor]
    rows: int
    signature: _Signature
    enqueued: float
    future: asyncio.Future[dict[str, Tensor]]
    timing: Timing = field(default_factory=Timing)


class DynamicBatcher:
    """A `Runtime` that batches concurrent `infer` calls into shared executions of another.

    One supervised task forms batches and runs the model, one execution at a time (requests
    arriving meanwhile form the next batch). A failed execution fails exactly the requests
    in it; should the loop itself crash, the waiting requests fail with the error, it is
    logged, and the next `infer` starts a new loop.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_batch_size: int,
        queue_delay_s: float = 0.0,
        metrics: ServingMetrics | None = None,
        deployment: str = "",
        stats: InferenceStats | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        if queue_delay_s < 0:
            raise ValueError(f"queue_delay_s must not be negative, got {queue_delay_s}")
        self._runtime = runtime
        self._max_batch_size = max(1, min(max_batch_size, runtime.max_batch_size))
        self._queue_delay_s = queue_delay_s
        self._deployment = deployment
        self._metrics: DeploymentMetrics | None = (
            metrics.for_deployment(deployment) if metrics is not None else None
        )
        self.stats = stats if stats is not None else InferenceStats()
        self._pending: list[_Part] = []
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @property
    def runtime(self) -> Runtime:
        """The model behind the batcher."""
        return self._runtime

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._runtime.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._runtime.outputs

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]:
        if self._closed:
            raise Unavailable(f"deployment {self._deployment!r} is being unloaded")
        if self._metrics is not None:
            self._metrics.requests.inc()
        self._in_flight += 1
        self._idle.clear()
        try:
            result, queue_s, compute_s = await self._infer(inputs)
        except BaseException:
            self.stats.failure_count += 1
            if self._metrics is not None:
                self._metrics.failures.inc()
            raise
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        self.stats.success_count += 1
        self.stats.queue_ns += int(queue_s * 1e9)
        self.stats.compute_ns += int(compute_s * 1e9)
        if self._metrics is not None:
            self._metrics.queue_seconds.observe(queue_s)
            self._metrics.compute_seconds.observe(compute_s)
        if timing is not None:
            timing.queue += queue_s
            timing.compute += compute_s
        return result

    async def close(self) -> None:
        """Refuse new requests, let the queued and running ones finish, stop the loop, and
        close the runtime: a batcher owns the model it batches for."""
        self._closed = True
        await self._idle.wait()
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._runtime.close()

    async def _infer(self, inputs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], float, float]:
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        rows = _rows(arrays)
        signature = _signature(arrays)
        now = time.perf_counter()
        loop = asyncio.get_running_loop()
        parts = [
            _Part(
                inputs={
                    name: value[start : start + self._max_batch_size]
                    for name, value in arrays.items()
                },
                rows=min(self._max_batch_size, rows - start),
                signature=signature,
                enqueued=now,
                future=loop.create_future(),
            )
            for start in range(0, rows, self._max_batch_size)
        ]
        self._pending.extend(parts)
        self._arrived.set()
        self._ensure_loop()
        try:
            results = await asyncio.gather(*(part.future for part in parts))
        except BaseException:
            # A caller that gave up leaves no rows behind for the model to compute.
            for part in parts:
                part.future.cancel()
            raise
        if len(results) == 1:
            merged = results[0]
        else:
            merged = {
                name: np.concatenate([result[name] for result in results]) for name in results[0]
            }
        # A request split over several executions waited as long as its longest-waiting part
        # and computed for all of them.
        queue_s = max(part.timing.queue for part in parts)
        compute_s = sum(part.timing.compute for part in parts)
        return merged, queue_s, compute_s

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(
                self._supervised_loop(), name=f"batcher-{self._deployment}"
            )

    async def _supervised_loop(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            self._fail_pending(Unavailable(f"deployment {self._deployment!r} was unloaded"))
            raise
        except Exception as exc:
            _log.exception("dynamic batcher loop crashed", deployment=self._deployment)
            self._fail_pending(
                Internal(f"the dynamic batcher of {self._deployment!r} failed: {exc!r}")
            )

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for part in pending:
            if not part.future.done():
                part.future.set_exception(error)

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._wait_for_batch()
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    def _drop_cancelled(self) -> None:
        self._pending = [part for part in self._pending if not part.future.done()]

    async def _wait_for_batch(self) -> None:
        """Wait until the head's batch is full or the head has waited queue_delay_s."""
        head = self._pending[0]
        deadline = head.enqueued + self._queue_delay_s
        while self._joinable_rows(head) < self._max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            self._drop_cancelled()
            if not self._pending or self._pending[0] is not head:
                return

    def _joinable_rows(self, head: _Part) -> int:
        return sum(
            part.rows
            for part in self._pending
            if part.signature == head.signature and not part.future.done()
        )

    def _take_batch(self) -> list[_Part]:
        """The head and the requests after it with its signature, in arrival order, that fit."""
        if not self._pending:
            return []
        head = self._pending[0]
        batch: list[_Part] = []
        rest: list[_Part] = []
        rows = 0
        for part in self._pending:
            if part.future.done():
                continue
            if part.signature == head.signature and rows + part.rows <= self._max_batch_size:
                batch.append(part)
                rows += part.rows
            else:
                rest.append(part)
        self._pending = rest
        return batch

    async def _execute(self, batch: list[_Part]) -> None:
        """One model execution for the batch; its outcome goes to exactly its requests."""
        started = time.perf_counter()
        for part in batch:
            part.timing.queue = started - part.enqueued
        rows = sum(part.rows for part in batch)
        inner = Timing()
        try:
            if len(batch) == 1:
                stacked = batch[0].inputs
            else:
                stacked = {
                    name: np.concatenate([part.inputs[name] for part in batch])
                    for name in batch[0].inputs
                }
            outputs = await self._runtime.infer(stacked, timing=inner)
            split = _split(outputs, [part.rows for part in batch], rows)
        except Exception as exc:
            for part in batch:
                if not part.future.done():
                    part.future.set_exception(exc)
            return
        compute = inner.compute or (time.perf_counter() - started)
        self.stats.execution_count += 1
        self.stats.inference_count += rows
        self.stats.last_inference_ms = int(time.time() * 1000)
        if self._metrics is not None:
            self._metrics.batch_size.observe(rows)
        for part, result in zip(batch, split, strict=True):
            part.timing.queue += inner.queue
            part.timing.compute = compute
            if not part.future.done():
                part.future.set_result(result)


def _rows(inputs: Mapping[str, Tensor]) -> int:
    if not inputs:
        raise InvalidArgument("a request needs at least one input tensor")
    rows: int | None = None
    for name, value in inputs.items():
        if value.ndim == 0:
            raise InvalidArgument.for_field(name, "a tensor needs a batch dimension")
        if rows is None:
            rows = int(value.shape[0])
        elif value.shape[0] != rows:
            raise InvalidArgument.for_field(
                name, f"batch of {value.shape[0]} rows; other inputs have {rows}"
            )
    if not rows:
        raise InvalidArgument.for_field(next(iter(inputs)), "batch is empty")
    return rows


def _signature(inputs: Mapping[str, Any]) -> _Signature:
    return tuple(
        sorted(
            (name, np.asarray(value).dtype.str, tuple(np.shape(value)[1:]))
            for name, value in inputs.items()
        )
    )


def _split(outputs: Mapping[str, Tensor], sizes: list[int], rows: int) -> list[dict[str, Tensor]]:
    for name, value in outputs.items():
        if np.ndim(value) == 0 or np.shape(value)[0] != rows:
            raise Internal(
                f"the model returned {name} of shape {np.shape(value)} for a batch of {rows} rows"
            )
    offsets = np.cumsum([0, *sizes])
    return [
        {name: value[offsets[i] : offsets[i + 1]] for name, value in outputs.items()}
        for i in range(len(sizes))
    ]
