"""The triton runtime on a real tritonserver: loaded over the repository API, inferred, unloaded."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime
import pytest
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from visionmesh.common.vision import preprocess
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.metadata import metadata_dict
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.export.core.triton import use_python_standin
from visionmesh.inference.core.model import Runtime, TensorSpec, Timing
from visionmesh.inference.core.triton_runtime import (
    TritonRuntime,
    load_into_triton,
    read_repository_model,
    served_model_name,
)

from tests.export.triton_server import run_triton_server, triton_environment
from tests.models import export_package, export_target, yolo_checkpoint

if TYPE_CHECKING:
    from tests.export.triton_server import TritonServer

LOAD_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    """A detector exported by the real pipeline: dynamic batch up to 4, parity checked."""
    tmp = tmp_path_factory.mktemp("package")
    checkpoint = yolo_checkpoint(tmp / "detect.pt", "yolo11n.yaml", confident=True)
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=4)
    target = export_target(spec, "ultralytics", "detect", ())
    return export_package(tmp / "work", checkpoint, target, images=2)


@pytest.fixture(scope="module")
def model_name(package: ExportPackage) -> str:
    (onnx_model,) = (m.name for m in package.triton_models if m.platform == "onnxruntime_onnx")
    return onnx_model


@pytest.fixture(scope="module")
def repository(
    package: ExportPackage,
    model_name: str,
    triton_server: TritonServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The package's triton/ folder, unzipped as a deployment finds it, on the stand-in."""
    root = tmp_path_factory.mktemp("repository") / "triton"
    shutil.copytree(package.path("triton"), root)
    # This tritonserver (nvidia-pytriton's CPU build) has no ONNX Runtime backend: the model
    # runs the same model.onnx with onnxruntime in a Python-backend stand-in, in the server's
    # numpy<2 environment. The runtime sends whatever the model directory holds.
    use_python_standin(root, model_name, execution_env_path=str(triton_server.env_path))
    return root


@pytest.fixture(scope="module")
def batch(package: ExportPackage) -> np.ndarray:
    images = synthetic_images(3, seed=5).images
    tensor, _ = preprocess(images, metadata_dict(package.metadata))
    return tensor


async def load(
    server: TritonServer, repository: Path, model_name: str, served_name: str, **kwargs: bool
) -> TritonRuntime:
    return await load_into_triton(
        server.grpc_url,
        repository_dir=repository,
        model_name=model_name,
        served_name=served_name,
        timeout_s=LOAD_TIMEOUT_S,
        **kwargs,
    )


def is_ready(server: TritonServer, served_name: str) -> bool:
    client = server.client()
    try:
        return bool(client.is_model_ready(served_name))
    finally:
        client.close()


@pytest.mark.timeout(600)
async def test_loaded_model_infers_what_onnxruntime_computes_and_unloads_on_close(
    triton_server: TritonServer,
    package: ExportPackage,
    repository: Path,
    model_name: str,
    batch: np.ndarray,
) -> None:
    served = served_model_name("tenant-a", "shapes", 1)
    runtime = await load(triton_server, repository, model_name, served)
    try:
        assert isinstance(runtime, Runtime)
        assert runtime.served_name == served == "tenant-a--shapes--1"
        # The files travelled in the load request: Triton's own repository never had them.
        assert not (triton_server.repository / served).exists()
        assert not (triton_server.repository / model_name).exists()
        assert runtime.config["name"] == served
        assert runtime.max_batch_size == package.metadata.max_batch_size == 4
        assert runtime.inputs == (TensorSpec("images", "FP32", (-1, 3, 64, 64)),)
        session = onnxruntime.InferenceSession(
            str(package.path("model.onnx")), providers=["CPUExecutionProvider"]
        )
        output_names = [o.name for o in session.get_outputs()]
        assert [o.name for o in runtime.outputs] == output_names
        assert all(o.datatype == "FP32" and o.shape[0] == -1 for o in runtime.outputs)

        timing = Timing()
        got = await runtime.infer({"images": batch}, timing=timing)
        expected = dict(zip(output_names, session.run(None, {"images": batch}), strict=True))
        assert got.keys() == expected.keys()
        for name, array in expected.items():
            assert got[name].shape == array.shape
            np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-5)
        assert got["output0"].flags.writeable
        assert timing.compute > 0 and timing.queue == 0

        # Concurrent calls on one runtime: each gets its own rows back.
        singles = await asyncio.gather(
            *(runtime.infer({"images": batch[i : i + 1]}) for i in range(3))
        )
        for i, single in enumerate(singles):
            np.testing.assert_allclose(
                single["output0"][0], expected["output0"][i], rtol=1e-5, atol=1e-5
            )
        assert is_ready(triton_server, served)
    finally:
        await runtime.close()
    assert not is_ready(triton_server, served)
    with pytest.raises(Unavailable, match="unloaded"):
        await runtime.infer({"images": batch})
    await runtime.close()  # closing twice is harmless


@pytest.mark.timeout(300)
async def test_two_deployments_serve_side_by_side_and_unload_alone(
    triton_server: TritonServer, repository: Path, model_name: str, batch: np.ndarray
) -> None:
    first_name = served_model_name("tenant-a", "shapes", 2)
    second_name = served_model_name("tenant-b", "shapes", 1)
    first, second = await asyncio.gather(
        load(triton_server, repository, model_name, first_name),
        load(triton_server, repository, model_name, second_name),
    )
    try:
        one = await first.infer({"images": batch[:1]})
        two = await second.infer({"images": batch[:1]})
        np.testing.assert_allclose(one["output0"], two["output0"], rtol=1e-6, atol=1e-6)
        await first.close()
        assert not is_ready(triton_server, first_name)
        assert is_ready(triton_server, second_name)
        again = await second.infer({"images": batch[:2]})
        np.testing.assert_allclose(again["output0"][:1], two["output0"], rtol=1e-5, atol=1e-5)
    finally:
        await first.close()
        await second.close()
    assert not is_ready(triton_server, second_name)


@pytest.mark.timeout(300)
async def test_a_bad_tensor_is_invalid_argument_with_tritons_reason(
    triton_server: TritonServer, repository: Path, model_name: str, batch: np.ndarray
) -> None:
    runtime = await load(
        triton_server, repository, model_name, served_model_name("tenant-a", "shapes", 3)
    )
    try:
        with pytest.raises(InvalidArgument, match="images"):
            await runtime.infer({"images": batch[:, :1]})
        with pytest.raises(InvalidArgument, match="batch-size must be <= 4"):
            await runtime.infer({"images": np.concatenate([batch, batch])})
    finally:
        await runtime.close()


@pytest.mark.timeout(300)
async def test_a_config_triton_refuses_fails_the_load_with_its_reason(
    triton_server: TritonServer, repository: Path, model_name: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(repository / model_name, broken / model_name)
    config = broken / model_name / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "python"', 'backend: "no_such"'))
    served = served_model_name("tenant-a", "broken", 1)
    with pytest.raises(FailedPrecondition, match="no_such") as refused:
        await load(triton_server, broken, model_name, served)
    assert refused.value.reason == "TRITON_LOAD_FAILED"
    assert served in refused.value.message
    assert not is_ready(triton_server, served)

    config.write_text("name: 'x'\nmax_batch_size: many\n")
    with pytest.raises(FailedPrecondition, match="not a Triton model config") as unparsable:
        await load(triton_server, broken, model_name, served)
    assert unparsable.value.reason == "BAD_MODEL_CONFIG"

    with pytest.raises(FailedPrecondition, match="no model 'absent'"):
        await load(triton_server, broken, "absent", served)


@pytest.mark.timeout(300)
async def test_tensorrt_loads_the_engine_model_and_is_refused_where_triton_cannot_run_it(
    triton_server: TritonServer,
    package: ExportPackage,
    repository: Path,
    model_name: str,
    tmp_path: Path,
) -> None:
    served = served_model_name("tenant-a", "shapes-trt", 1)
    # This export has no engine (no GPU here): asking for one says so before Triton is asked.
    with pytest.raises(FailedPrecondition, match="no TensorRT engine") as missing:
        await load(triton_server, repository, model_name, served, tensorrt=True)
    assert missing.value.reason == "NO_TENSORRT_ENGINE"

    # An engine as the export lays it out, `<name>-trt` beside `<name>`. The plan's bytes
    # are not an engine, but Triton here refuses the platform before reading them.
    with_engine = tmp_path / "with-engine"
    shutil.copytree(repository, with_engine)
    onnx_config = (package.path("triton") / model_name / "config.pbtxt").read_text()
    engine_dir = with_engine / f"{model_name}-trt"
    (engine_dir / "1").mkdir(parents=True)
    (engine_dir / "1" / "model.plan").write_bytes(b"not a serialized engine")
    (engine_dir / "config.pbtxt").write_text(
        onnx_config.replace('"onnxruntime_onnx"', '"tensorrt_plan"').replace(
            f'name: "{model_name}"', f'name: "{model_name}-trt"'
        )
    )
    selected = read_repository_model(with_engine, model_name, tensorrt=True)
    assert selected.directory == f"{model_name}-trt"
    assert selected.platform == "tensorrt_plan"
    assert list(selected.files) == ["file:1/model.plan"]
    default = read_repository_model(with_engine, model_name)
    assert default.directory == model_name and "file:1/model.onnx" in default.files

    with pytest.raises(FailedPrecondition, match="TensorRT engine") as refused:
        await load(triton_server, with_engine, model_name, served, tensorrt=True)
    assert refused.value.reason == "TENSORRT_UNAVAILABLE"
    assert [v.field for v in refused.value.field_violations] == ["tensorrt"]
    # Triton's own reason travels in the message.
    assert "backend 'tensorrt'" in refused.value.message
    assert not is_ready(triton_server, served)

    # A `-trt` model that is not an engine is not taken for one.
    (engine_dir / "config.pbtxt").write_text(onnx_config)
    with pytest.raises(FailedPrecondition, match="not a TensorRT engine"):
        read_repository_model(with_engine, model_name, tensorrt=True)


async def test_an_unreachable_triton_is_unavailable(repository: Path, model_name: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(Unavailable, match="unreachable"):
        await load_into_triton(
            f"127.0.0.1:{port}",
            repository_dir=repository,
            model_name=model_name,
            served_name=served_model_name("tenant-a", "shapes", 9),
            timeout_s=5,
        )


@pytest.mark.timeout(300)
async def test_a_triton_that_goes_away_makes_infer_unavailable_and_close_still_returns(
    repository: Path, model_name: str, batch: np.ndarray, tmp_path: Path
) -> None:
    # A server of this test's own, so stopping it leaves the shared one alone.
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(run_triton_server(tmp_path, triton_environment()))
        runtime = await load(server, repository, model_name, served_model_name("t", "gone", 1))
        await runtime.infer({"images": batch[:1]})
        stack.close()
        with pytest.raises(Unavailable, match=runtime.served_name):
            await runtime.infer({"images": batch[:1]})
        await runtime.close()
