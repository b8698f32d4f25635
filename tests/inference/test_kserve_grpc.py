"""KServe v2 gRPC (inference.GRPCInferenceService) against Triton's own gRPC clients."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio_grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException
from visionmesh.common.auth import Principal
from visionmesh.common.rpc.server import GrpcServer
from visionmesh.common.settings import ServiceSettings
from visionmesh.inference.api.kserve import KServeDataplane
from visionmesh.inference.api.kserve_grpc import add_kserve_service

from tests.inference.kserve_models import (
    ADMIN,
    IMGSZ,
    MEMBER,
    OUTSIDER,
    ULTRALYTICS_METADATA,
    BearerPlugin,
    LoopThread,
    TenantModels,
    Tokens,
    build_models,
)

pytestmark = pytest.mark.timeout(60)


@dataclass
class Served:
    url: str
    models: TenantModels
    tokens: Tokens

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(url=self.url)

    def headers(self, principal: Principal = MEMBER) -> dict[str, str]:
        return self.tokens.headers(principal)

    def metadata(self, principal: Principal = MEMBER) -> tuple[tuple[str, str], ...]:
        return tuple(self.headers(principal).items())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = build_models(tmp_path_factory.mktemp("kserve-grpc"))
    tokens = Tokens()
    loop = LoopThread()
    server = GrpcServer(
        settings=ServiceSettings(service_name="inference", grpc_port=0),
        authenticator=tokens.verifier(),
    )
    add_kserve_service(server, KServeDataplane(models))
    port = loop.run(server.start())
    try:
        yield Served(f"127.0.0.1:{port}", models, tokens)
    finally:
        loop.run(server.stop(0))
        loop.run(models.close())
        loop.close()


@pytest.fixture(scope="module")
def stub(served: Served) -> Iterator[Any]:
    with grpc.insecure_channel(served.url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)


def _expected(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return images.mean(axis=(2, 3)) * 2, images.reshape(len(images), -1).sum(1, keepdims=True)


def _error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


def _input(images: np.ndarray) -> grpcclient.InferInput:
    infer_input = grpcclient.InferInput("images", list(images.shape), "FP32")
    infer_input.set_data_from_numpy(images)
    return infer_input


def test_health_needs_no_token_the_rest_does(served: Served) -> None:
    client = served.client()
    assert client.is_server_live()
    assert client.is_server_ready()
    error = _error(client.get_server_metadata)
    assert error.status() == "StatusCode.UNAUTHENTICATED"
    served.models.ready = False
    try:
        assert not client.is_server_ready()
    finally:
        served.models.ready = True


def test_server_metadata(served: Served) -> None:
    metadata = served.client().get_server_metadata(headers=served.headers(), as_json=True)
    assert metadata["name"] == "visionmesh"
    assert {"binary_tensor_data", "model_configuration", "model_repository", "statistics"} <= set(
        metadata["extensions"]
    )


def test_model_metadata_and_readiness(served: Served) -> None:
    client, headers = served.client(), served.headers()
    metadata = client.get_model_metadata("tiny", headers=headers)
    assert metadata.name == "tiny"
    assert list(metadata.versions) == ["3"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("images", "FP32", [-1, 3, IMGSZ, IMGSZ])
    ]
    assert [t.name for t in metadata.outputs] == ["output0", "output1"]
    assert client.is_model_ready("tiny", "3", headers=headers)
    assert not client.is_model_ready("warming", headers=headers)
    wrong_version = _error(lambda: client.get_model_metadata("tiny", "2", headers=headers))
    assert wrong_version.status() == "StatusCode.NOT_FOUND"


def test_another_tenants_model_is_not_found(served: Served) -> None:
    client = served.client()
    error = _error(lambda: client.get_model_metadata("secret", headers=served.headers()))
    assert error.status() == "StatusCode.NOT_FOUND"
    denied = _error(lambda: client.infer("secret", [_input(_images(1))], headers=served.headers()))
    assert denied.status() == "StatusCode.NOT_FOUND"
    assert client.get_model_metadata("secret", headers=served.headers(OUTSIDER)).name == "secret"


def test_model_config_carries_the_export_metadata(served: Served) -> None:
    client, headers = served.client(), served.headers()
    config = client.get_model_config("tiny", headers=headers).config
    assert config.name == "tiny"
    assert config.max_batch_size == 8
    assert list(config.input[0].dims) == [3, IMGSZ, IMGSZ]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    literal = config.parameters["metadata"].string_value
    assert ast.literal_eval(literal) == ULTRALYTICS_METADATA
    as_json = client.get_model_config("tiny", headers=headers, as_json=True)["config"]
    assert as_json["input"][0]["data_type"] == "TYPE_FP32"


def test_infer_raw_tensors_and_output_selection(served: Served) -> None:
    client, headers = served.client(), served.headers()
    images = _images(2)
    result = client.infer("tiny", [_input(images)], request_id="req-grpc", headers=headers)
    want0, want1 = _expected(images)
    np.testing.assert_allclose(result.as_numpy("output0"), want0, rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("output1"), want1, rtol=1e-5)
    response = result.get_response()
    assert response.id == "req-grpc"
    assert response.model_version == "3"
    one = client.infer(
        "tiny",
        [_input(images)],
        outputs=[grpcclient.InferRequestedOutput("output1")],
        headers=headers,
    )
    assert [o.name for o in one.get_response().outputs] == ["output1"]
    np.testing.assert_allclose(one.as_numpy("output1"), want1, rtol=1e-5)


def test_infer_typed_contents(served: Served, stub: Any) -> None:
    images = _images(1, seed=1)
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    response = stub.ModelInfer(request, metadata=served.metadata(), timeout=30)
    assert response.id == "typed"
    outputs = {o.name: i for i, o in enumerate(response.outputs)}
    output0 = np.frombuffer(response.raw_output_contents[outputs["output0"]], np.float32)
    np.testing.assert_allclose(output0.reshape(1, 3), _expected(images)[0], rtol=1e-5)
    tensor.contents.fp32_contents.pop()
    with pytest.raises(grpc.RpcError) as short:
        stub.ModelInfer(request, metadata=served.metadata(), timeout=30)
    assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].contents.fp32_contents" in (short.value.details() or "")


def test_bytes_tensors(served: Served) -> None:
    text = np.array([b"cat", "dög".encode()], dtype=np.object_)
    infer_input = grpcclient.InferInput("text", [2], "BYTES")
    infer_input.set_data_from_numpy(text)
    result = served.client().infer("echo", [infer_input], headers=served.headers())
    assert list(result.as_numpy("text_out")) == list(text)


def test_wrong_datatype_or_shape_is_a_clear_error(served: Served) -> None:
    client, headers = served.client(), served.headers()
    wrong_type = grpcclient.InferInput("images", [1, 3, IMGSZ, IMGSZ], "FP16")
    wrong_type.set_data_from_numpy(_images(1).astype(np.float16))
    error = _error(lambda: client.infer("tiny", [wrong_type], headers=headers))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].datatype" in error.message()
    assert "'images' is FP32, not FP16" in error.message()
    wrong_shape = _input(np.zeros((1, 3, IMGSZ, 4), np.float32))
    error = _error(lambda: client.infer("tiny", [wrong_shape], headers=headers))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "inputs[0].shape" in error.message()
    classification = _error(
        lambda: client.infer(
            "tiny",
            [_input(_images(1))],
            outputs=[grpcclient.InferRequestedOutput("output0", class_count=2)],
            headers=headers,
        )
    )
    assert "classification" in classification.message()


def test_statistics_move_after_infers(served: Served) -> None:
    client, headers = served.client(), served.headers()

    def stats() -> Any:
        [model] = client.get_inference_statistics("tiny", headers=headers).model_stats
        return model

    before = stats()
    for seed in range(3):
        client.infer("tiny", [_input(_images(1, seed))], headers=headers)
    after = stats()
    assert after.inference_stats.success.count == before.inference_stats.success.count + 3
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.inference_count == before.inference_count + 3
    assert after.last_inference > 0
    everything = client.get_inference_statistics(headers=headers).model_stats
    assert {m.name for m in everything} == {"tiny", "echo"}


def test_repository(served: Served, stub: Any) -> None:
    client = served.client()
    member = served.headers(MEMBER)
    for call in (
        lambda: client.get_model_repository_index(headers=member),
        lambda: client.load_model("warming", headers=member),
        lambda: client.unload_model("tiny", headers=member),
    ):
        assert _error(call).status() == "StatusCode.PERMISSION_DENIED"
    admin = served.headers(ADMIN)
    index = client.get_model_repository_index(headers=admin)
    assert {(m.name, m.state) for m in index.models} == {
        ("echo", "READY"),
        ("tiny", "READY"),
        ("warming", "LOADING"),
    }
    client.load_model("warming", headers=admin)
    assert client.is_model_ready("warming", headers=admin)
    client.unload_model("warming", headers=admin)
    assert not client.is_model_ready("warming", headers=admin)
    with pytest.raises(grpc.RpcError) as named:
        stub.RepositoryIndex(
            service_pb2.RepositoryIndexRequest(repository_name="elsewhere"),
            metadata=served.metadata(ADMIN),
            timeout=30,
        )
    assert named.value.code() == grpc.StatusCode.NOT_FOUND


def test_unserved_rpcs_are_unimplemented(served: Served) -> None:
    error = _error(
        lambda: served.client().get_system_shared_memory_status(headers=served.headers())
    )
    assert error.status() == "StatusCode.UNIMPLEMENTED"


async def test_aio_client(served: Served) -> None:
    client = aio_grpcclient.InferenceServerClient(url=served.url)
    try:
        headers = served.headers()
        assert await client.is_server_live()
        images = _images(2, seed=7)
        infer_input = aio_grpcclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        result = await client.infer("tiny", [infer_input], headers=headers)
        np.testing.assert_allclose(result.as_numpy("output0"), _expected(images)[0], rtol=1e-5)
    finally:
        await client.close()


def test_ultralytics_triton_remote_model(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ultralytics' gRPC flavour: config read with as_json, raw tensors; token by plugin."""
    from ultralytics.utils.triton import TritonRemoteModel

    headers = served.headers()

    class AuthenticatedClient(grpcclient.InferenceServerClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_plugin(BearerPlugin(headers))

    monkeypatch.setattr(grpcclient, "InferenceServerClient", AuthenticatedClient)
    model = TritonRemoteModel(f"grpc://{served.url}/tiny")
    assert model.metadata == ULTRALYTICS_METADATA
    images = _images(1, seed=8)
    output0, output1 = model(images)
    want0, want1 = _expected(images)
    np.testing.assert_allclose(output0, want0, rtol=1e-5)
    np.testing.assert_allclose(output1, want1, rtol=1e-5)
