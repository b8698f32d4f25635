"""DynamicBatcher over a real ONNX Runtime model: coalescing, delays, failures, supervision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry
from visionmesh.common.errors import Internal, InvalidArgument, Unavailable
from visionmesh.inference.core.batcher import DynamicBatcher
from visionmesh.inference.core.model import InferenceStats, Runtime, Tensor, TensorSpec, Timing
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.serving_metrics import ServingMetrics

POISON = -999.0


@pytest.fixture(scope="module")
def relu_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """y = relu(x) for x of any [n, k] float32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "relu.onnx"
    onnx.save(model, path)
    return path


class Recorded:
    """The real model, with each execution's batch recorded; a POISON value fails the call."""

    def __init__(self, model: OnnxRuntimeModel) -> None:
        self.model = model
        self.batches: list[tuple[int, ...]] = []

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.model.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.model.outputs

    @property
    def max_batch_size(self) -> int:
        return self.model.max_batch_size

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]:
        x = inputs["x"]
        self.batches.append(tuple(x.shape))
        if (x == POISON).any():
            raise InvalidArgument.for_field("x", "poisoned row")
        return await self.model.infer(inputs, timing=timing)

    async def close(self) -> None:
        await self.model.close()


@pytest.fixture
def recorded(relu_path: Path) -> Recorded:
    return Recorded(OnnxRuntimeModel(relu_path, device="cpu", max_batch_size=64))


def _rows(value: float, n: int = 1, k: int = 3) -> dict[str, Tensor]:
    return {"x": np.full((n, k), value, dtype=np.float32)}


async def test_concurrent_requests_share_executions_and_get_their_own_rows(
    recorded: Recorded,
) -> None:
    registry = CollectorRegistry()
    stats = InferenceStats()
    batcher = DynamicBatcher(
        recorded,
        max_batch_size=8,
        queue_delay_s=0.05,
        metrics=ServingMetrics.create(registry),
        deployment="shapes",
        stats=stats,
    )
    assert isinstance(batcher, Runtime) and batcher.max_batch_size == 8
    timings = [Timing() for _ in range(10)]
    results = await asyncio.gather(
        *(batcher.infer(_rows(i - 2.0), timing=timings[i]) for i in range(10))
    )
    assert recorded.batches == [(8, 3), (2, 3)]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), max(i - 2.0, 0)))
    assert all(t.compute > 0 for t in timings)

    assert stats.success_count == 10 and stats.failure_count == 0
    assert stats.execution_count == 2 and stats.inference_count == 10
    assert stats.queue_ns > 0 and stats.compute_ns > 0 and stats.last_inference_ms > 0
    labels = {"deployment": "shapes"}
    assert registry.get_sample_value("visionmesh_inference_requests_total", labels) == 10
    assert registry.get_sample_value("visionmesh_inference_batch_size_count", labels) == 2
    assert registry.get_sample_value("visionmesh_inference_batch_size_sum", labels) == 10
    assert registry.get_sample_value("visionmesh_inference_queue_seconds_count", labels) == 10
    assert registry.get_sample_value("visionmesh_inference_compute_seconds_count", labels) == 10
    assert not registry.get_sample_value("visionmesh_inference_failures_total", labels)
    # A second set of metrics on another registry (another server in the same process).
    ServingMetrics.create(CollectorRegistry())
    await batcher.close()


async def test_the_first_request_waits_the_queue_delay_for_others_to_join(
    recorded: Recorded,
) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=8, queue_delay_s=0.3)
    first = Timing()

    async def late() -> dict[str, Tensor]:
        await asyncio.sleep(0.1)
        return await batcher.infer(_rows(2.0))

    start = time.perf_counter()
    await asyncio.gather(batcher.infer(_rows(1.0), timing=first), late())
    assert recorded.batches == [(2, 3)]  # the late one joined within the delay
    assert 0.28 <= first.queue <= 1.0 and time.perf_counter() - start >= 0.28

    # A full batch does not wait for the delay.
    recorded.batches.clear()
    start = time.perf_counter()
    await asyncio.gather(*(batcher.infer(_rows(1.0)) for _ in range(8)))
    assert recorded.batches == [(8, 3)] and time.perf_counter() - start < 0.25
    await batcher.close()


async def test_no_delay_still_batches_what_is_waiting(recorded: Recorded) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=16, queue_delay_s=0)
    await asyncio.gather(*(batcher.infer(_rows(1.0)) for _ in range(5)))
    assert recorded.batches == [(5, 3)]
    await batcher.close()


async def test_a_failed_execution_fails_only_its_batch(recorded: Recorded) -> None:
    stats = InferenceStats()
    registry = CollectorRegistry()
    batcher = DynamicBatcher(
        recorded,
        max_batch_size=2,
        queue_delay_s=0.02,
        stats=stats,
        metrics=ServingMetrics.create(registry),
        deployment="d",
    )
    outcomes = await asyncio.gather(
        batcher.infer(_rows(POISON)),
        batcher.infer(_rows(1.0)),
        batcher.infer(_rows(2.0)),
        batcher.infer(_rows(3.0)),
        return_exceptions=True,
    )
    assert recorded.batches == [(2, 3), (2, 3)]
    assert isinstance(outcomes[0], InvalidArgument) and isinstance(outcomes[1], InvalidArgument)
    assert [o["y"][0, 0] for o in outcomes[2:] if isinstance(o, dict)] == [2.0, 3.0]
    assert stats.failure_count == 2 and stats.success_count == 2
    assert registry.get_sample_value("visionmesh_inference_failures_total", {"deployment": "d"})
    # The loop lives on.
    assert (await batcher.infer(_rows(4.0)))["y"][0, 0] == 4.0
    await batcher.close()


async def test_requests_of_other_shapes_never_share_a_batch(recorded: Recorded) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=8, queue_delay_s=0.05)
    results = await asyncio.gather(
        batcher.infer(_rows(1.0, k=3)),
        batcher.infer(_rows(2.0, k=5)),
        batcher.infer(_rows(3.0, k=3)),
        batcher.infer({"x": np.full((1, 3), 4, dtype=np.float64)}),
        batcher.infer(_rows(5.0, n=2, k=5)),
        return_exceptions=True,
    )
    assert sorted(recorded.batches) == [(1, 3), (2, 3), (3, 5)]
    assert [np.shape(r["y"]) for r in results[:3] if isinstance(r, dict)] == [
        (1, 3),
        (1, 5),
        (1, 3),
    ]
    # float64 went alone to the model, which refused it naming the tensor.
    assert isinstance(results[3], InvalidArgument) and results[3].field_violations[0].field == "x"
    assert isinstance(results[4], dict) and results[4]["y"].tolist() == [[5.0] * 5] * 2
    await batcher.close()


async def test_a_request_larger_than_the_batch_is_split(recorded: Recorded) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=8, queue_delay_s=0)
    x = np.arange(60, dtype=np.float32).reshape(20, 3) - 30
    timing = Timing()
    result = await batcher.infer({"x": x}, timing=timing)
    assert recorded.batches == [(8, 3), (8, 3), (4, 3)]
    np.testing.assert_array_equal(result["y"], np.maximum(x, 0))
    assert batcher.stats.execution_count == 3 and batcher.stats.success_count == 1
    with pytest.raises(InvalidArgument, match="empty"):
        await batcher.infer({"x": np.zeros((0, 3), np.float32)})
    await batcher.close()


async def test_a_crash_of_the_loop_fails_waiting_requests_and_the_next_restarts_it(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=4, queue_delay_s=0.01, deployment="crashy")
    real_take = batcher._take_batch
    crashes = iter([True])

    def take_batch_once_broken() -> object:
        if next(crashes, False):
            raise RuntimeError("bookkeeping bug")
        return real_take()

    monkeypatch.setattr(batcher, "_take_batch", take_batch_once_broken)
    outcomes = await asyncio.gather(
        batcher.infer(_rows(1.0)), batcher.infer(_rows(2.0)), return_exceptions=True
    )
    assert all(isinstance(o, Internal) and "bookkeeping bug" in str(o) for o in outcomes)
    assert batcher.stats.failure_count == 2 and recorded.batches == []
    assert (await batcher.infer(_rows(3.0)))["y"][0, 0] == 3.0
    await batcher.close()


async def test_close_drains_and_then_refuses(recorded: Recorded) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=4, queue_delay_s=0.1)
    waiting = [asyncio.create_task(batcher.infer(_rows(float(i)))) for i in range(6)]
    await asyncio.sleep(0.01)
    await batcher.close()
    assert [t.result()["y"][0, 0] for t in waiting] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(Unavailable):
        await batcher.infer(_rows(1.0))


async def test_a_caller_that_gives_up_costs_no_model_rows(recorded: Recorded) -> None:
    batcher = DynamicBatcher(recorded, max_batch_size=8, queue_delay_s=0.1)
    gone = asyncio.create_task(batcher.infer(_rows(1.0, n=3)))
    stays = asyncio.create_task(batcher.infer(_rows(2.0)))
    await asyncio.sleep(0.02)
    gone.cancel()
    assert (await stays)["y"].tolist() == [[2.0, 2.0, 2.0]]
    assert recorded.batches == [(1, 3)]
    await batcher.close()
