"""TensorRT engines built from the exported ONNX model, where a CUDA GPU and TensorRT exist.

An engine is specific to the GPU architecture and TensorRT version it was built with, so
the build records both (TensorRtBuild) next to the plan. Nothing here runs without a GPU:
`tensorrt_support()` says why, and the spec check refuses TensorRT before a job is queued.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.specs.export import FormatSupport

_WORKSPACE_BYTES = 4 << 30


class TensorRtError(Exception):
    """The engine could not be built or run."""


def tensorrt_support() -> FormatSupport:
    if importlib.util.find_spec("tensorrt") is None:
        return FormatSupport("tensorrt", available=False, reason="tensorrt is not installed")
    import torch

    if not torch.cuda.is_available():
        return FormatSupport("tensorrt", available=False, reason="no CUDA device")
    try:
        import tensorrt as trt
    except Exception as exc:  # a wheel whose CUDA libraries do not load on this host
        return FormatSupport("tensorrt", available=False, reason=f"tensorrt does not load: {exc}")
    return FormatSupport("tensorrt", available=True, library_version=str(trt.__version__))


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    input_name: str,
    input_shape: Sequence[int],
    batch_profile: tuple[int, int, int],
    fp16: bool,
    device: int = 0,
) -> export_pb2.TensorRtBuild:
    """Builds `plan_path` from the ONNX model; `input_shape` is (C, H, W)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRtError(f"TensorRT cannot parse the ONNX model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        low, opt, high = batch_profile
        profile.set_shape(
            input_name, (low, *input_shape), (opt, *input_shape), (high, *input_shape)
        )
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TensorRtError("TensorRT could not build an engine (see the service log)")
        plan_path.write_bytes(bytes(serialized))
        props = torch.cuda.get_device_properties(device)
    return export_pb2.TensorRtBuild(
        tensorrt_version=str(trt.__version__),
        gpu_name=props.name,
        compute_capability=f"{props.major}.{props.minor}",
        fp16=fp16,
        batch_profile=list(batch_profile),
    )


def engine_runner(plan_path: Path, *, device: int = 0):  # type: ignore[no-untyped-def]
    """Runs the engine on NCHW float32 batches (the parity check's Runner)."""
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise TensorRtError("the engine does not deserialise on this GPU / TensorRT")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    cuda = torch.device("cuda", device)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(cuda)
        context.set_input_shape(inputs[0], tuple(x.shape))
        context.set_tensor_address(inputs[0], x.data_ptr())
        results = []
        for name in outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = torch.float16 if engine.get_tensor_dtype(name) == trt.float16 else torch.float32
            out = torch.empty(shape, dtype=dtype, device=cuda)
            context.set_tensor_address(name, out.data_ptr())
            results.append(out)
        stream = torch.cuda.current_stream(cuda)
        if not context.execute_async_v3(stream.cuda_stream):
            raise TensorRtError("TensorRT execution failed")
        stream.synchronize()
        return [out.float().cpu().numpy() for out in results]

    return run
