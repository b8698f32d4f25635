"""OnnxRuntimeModel on small real ONNX graphs: specs, checks, devices, off-loop execution."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from visionmesh.common.errors import FailedPrecondition, InvalidArgument
from visionmesh.inference.core.model import Runtime, Tensor, TensorSpec, Timing
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel


def _save(path: Path, nodes: list[onnx.NodeProto], inputs: list, outputs: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _relu(path: Path, batch: int | str = "n") -> Path:
    """y = relu(x), x: [batch, 3] float32, plus a count of positive values per row (int64)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    positives = helper.make_tensor_value_info("positives", TensorProto.INT64, [batch])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Sign", ["y"], ["sign"]),
        helper.make_node("Cast", ["sign"], ["sign64"], to=TensorProto.INT64),
        helper.make_node("Constant", [], ["axes"], value=axes),
        helper.make_node("ReduceSum", ["sign64", "axes"], ["positives"], keepdims=0),
    ]
    return _save(path, nodes, [x], [y, positives])


@pytest.fixture(scope="module")
def relu_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _relu(tmp_path_factory.mktemp("onnx") / "relu.onnx")


async def test_specs_and_results_come_from_the_session(relu_path: Path) -> None:
    model = OnnxRuntimeModel(relu_path, device="cpu", max_batch_size=16)
    assert isinstance(model, Runtime)
    assert model.inputs == (TensorSpec("x", "FP32", (-1, 3)),)
    assert model.outputs == (
        TensorSpec("y", "FP32", (-1, 3)),
        TensorSpec("positives", "INT64", (-1,)),
    )
    assert model.max_batch_size == 16 and model.device == "cpu"
    x = np.array([[1, -2, 3], [-1, -1, -1]], dtype=np.float32)
    timing = Timing()
    outputs = await model.infer({"x": x}, timing=timing)
    np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))
    np.testing.assert_array_equal(outputs["positives"], [2, 0])
    assert outputs["positives"].dtype == np.int64
    assert timing.compute > 0 and timing.queue == 0
    await model.close()
    with pytest.raises(FailedPrecondition, match="unloaded"):
        await model.infer({"x": x})


async def test_wrong_inputs_are_refused_naming_the_tensor(relu_path: Path) -> None:
    model = await OnnxRuntimeModel.load(relu_path, device="cpu", max_batch_size=4)
    cases: list[tuple[dict[str, Tensor], str, str]] = [
        ({"x": np.zeros((1, 3), np.float64)}, "x", "datatype must be FP32"),
        ({"x": np.zeros((1, 4), np.float32)}, "x", r"shape must be \[-1, 3\]"),
        ({"x": np.zeros((3,), np.float32)}, "x", "shape must be"),
        ({"x": np.zeros((5, 3), np.float32)}, "x", "exceeds the model's maximum 4"),
        ({"x": np.zeros((0, 3), np.float32)}, "x", "empty"),
        ({}, "x", "missing"),
        ({"x": np.zeros((1, 3), np.float32), "z": np.zeros(1)}, "z", "no input 'z'"),
    ]
    for inputs, field, message in cases:
        with pytest.raises(InvalidArgument, match=message) as caught:
            await model.infer(inputs)
        assert [v.field for v in caught.value.field_violations] == [field]


async def test_a_fixed_batch_of_one_caps_batches_and_a_fixed_batch_is_padded(
    tmp_path: Path,
) -> None:
    one = OnnxRuntimeModel(_relu(tmp_path / "one.onnx", batch=1), max_batch_size=32)
    assert one.max_batch_size == 1 and one.inputs[0].shape == (1, 3)
    with pytest.raises(InvalidArgument, match="maximum 1"):
        await one.infer({"x": np.zeros((2, 3), np.float32)})

    four = OnnxRuntimeModel(_relu(tmp_path / "four.onnx", batch=4), max_batch_size=32)
    assert four.max_batch_size == 4
    x = np.array([[-1, 2, -3], [4, -5, 6]], dtype=np.float32)
    outputs = await four.infer({"x": x})  # two rows into a graph of exactly four
    np.testing.assert_array_equal(outputs["y"], np.maximum(x, 0))
    assert outputs["positives"].tolist() == [1, 2]


def test_devices_and_providers(relu_path: Path) -> None:
    auto = OnnxRuntimeModel(relu_path)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert auto.device.startswith(("cuda", "cpu"))
        return
    assert auto.device == "cpu" and auto.providers == ("CPUExecutionProvider",)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(FailedPrecondition, match="CUDA is not available") as caught:
            OnnxRuntimeModel(relu_path, device=device)
        assert [v.field for v in caught.value.field_violations] == ["device"]
    with pytest.raises(FailedPrecondition) as caught:
        OnnxRuntimeModel(relu_path, device="tpu")
    assert [v.field for v in caught.value.field_violations] == ["device"]
    with pytest.raises(FailedPrecondition, match="lacks") as caught:
        OnnxRuntimeModel(relu_path, providers=["NoSuchExecutionProvider"])
    assert [v.field for v in caught.value.field_violations] == ["providers"]
    explicit = OnnxRuntimeModel(relu_path, providers=["CPUExecutionProvider"], threads=1)
    assert explicit.providers == ("CPUExecutionProvider",)


def test_a_file_that_is_not_a_model_fails_to_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(FailedPrecondition, match=r"cannot load bad\.onnx"):
        OnnxRuntimeModel(bad)


async def test_the_session_runs_off_the_event_loop(tmp_path: Path) -> None:
    """A long model call leaves the loop free: a ticker keeps ticking while it runs."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 512, 512])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 512, 512])
    nodes = [helper.make_node("MatMul", ["a", "a"], ["m1"])]
    for i in range(1, 12):
        nodes.append(helper.make_node("MatMul", [f"m{i}", "a"], [f"m{i + 1}"]))
    nodes.append(helper.make_node("Identity", ["m12"], ["out"]))
    model = OnnxRuntimeModel(_save(tmp_path / "mm.onnx", nodes, [a], [out]), threads=1)
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    timing = Timing()
    await model.infer({"a": np.full((4, 512, 512), 1e-3, np.float32)}, timing=timing)
    running = False
    await task
    assert timing.compute > 0.02
    assert ticks >= 5, f"the loop ticked {ticks} times in {timing.compute:.3f} s of compute"
