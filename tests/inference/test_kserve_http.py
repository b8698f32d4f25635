"""KServe v2 REST (/v2) against Triton's own HTTP clients and Ultralytics' TritonRemoteModel."""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aio_httpclient
from tritonclient.utils import InferenceServerException
from visionmesh.common.auth import Principal
from visionmesh.common.rpc.server import GrpcServer
from visionmesh.common.settings import ServiceSettings
from visionmesh.inference.api.kserve import KServeDataplane
from visionmesh.inference.api.kserve_http import (
    KServeHttpServer,
    create_kserve_app,
    serve_kserve_http,
)

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
    server: KServeHttpServer
    grpc_server: GrpcServer

    def client(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(url=self.url, network_timeout=30)

    def headers(self, principal: Principal = MEMBER) -> dict[str, str]:
        return self.tokens.headers(principal)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    models = build_models(tmp_path_factory.mktemp("kserve-http"))
    tokens = Tokens()
    loop = LoopThread()
    # The app shares the pipeline (authenticator, metrics) of a KServe gRPC server, as the
    # service wires it; that server need not be started for the pipeline to work.
    grpc_server = GrpcServer(
        settings=ServiceSettings(service_name="inference", grpc_port=0),
        authenticator=tokens.verifier(),
    )
    app = create_kserve_app(KServeDataplane(models), pipeline=grpc_server.pipeline)
    server = loop.run(serve_kserve_http(app))
    try:
        yield Served(f"127.0.0.1:{server.port}", models, tokens, server, grpc_server)
    finally:
        loop.run(server.stop())
        loop.run(models.close())
        loop.close()


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((batch, 3, IMGSZ, IMGSZ), dtype=np.float32)


def _expected(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return images.mean(axis=(2, 3)) * 2, images.reshape(len(images), -1).sum(1, keepdims=True)


def _error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value


# --- health, server metadata, auth ---------------------------------------------------------


def test_health_needs_no_token_the_rest_does(served: Served) -> None:
    client = served.client()
    assert client.is_server_live()
    assert client.is_server_ready()
    error = _error(client.get_server_metadata)
    assert error.status() == "401"
    assert "requires credentials" in error.message()
    bad = _error(lambda: client.get_server_metadata(headers={"authorization": "Bearer nope"}))
    assert bad.status() == "401"


def test_server_not_ready_is_reported(served: Served) -> None:
    served.models.ready = False
    try:
        assert not served.client().is_server_ready()
    finally:
        served.models.ready = True
    assert served.client().is_server_ready()


def test_server_metadata(served: Served) -> None:
    metadata = served.client().get_server_metadata(headers=served.headers())
    assert metadata["name"] == "visionmesh"
    assert metadata["version"]
    assert {
        "binary_tensor_data",
        "model_configuration",
        "model_repository",
        "statistics",
    } <= set(metadata["extensions"])


# --- models --------------------------------------------------------------------------------


def test_model_metadata_and_readiness(served: Served) -> None:
    client, headers = served.client(), served.headers()
    metadata = client.get_model_metadata("tiny", headers=headers)
    assert metadata == {
        "name": "tiny",
        "versions": ["3"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, IMGSZ, IMGSZ]}],
        "outputs": [
            {"name": "output0", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "output1", "datatype": "FP32", "shape": [-1, 1]},
        ],
    }
    assert client.get_model_metadata("tiny", "3", headers=headers)["name"] == "tiny"
    assert client.is_model_ready("tiny", headers=headers)
    assert client.is_model_ready("tiny", "3", headers=headers)
    assert not client.is_model_ready("warming", headers=headers)
    wrong_version = _error(lambda: client.get_model_metadata("tiny", "2", headers=headers))
    assert wrong_version.status() == "404"


def test_another_tenants_model_is_not_found(served: Served) -> None:
    client = served.client()
    error = _error(lambda: client.get_model_metadata("secret", headers=served.headers()))
    assert error.status() == "404"
    assert "secret" in error.message()
    assert not client.is_model_ready("secret", headers=served.headers())
    inputs = [httpclient.InferInput("images", [1, 3, IMGSZ, IMGSZ], "FP32")]
    inputs[0].set_data_from_numpy(_images(1))
    denied = _error(lambda: client.infer("secret", inputs, headers=served.headers()))
    assert denied.status() == "404"
    # Its owner reaches it.
    assert client.is_model_ready("secret", headers=served.headers(OUTSIDER))


def test_model_config_carries_the_export_metadata(served: Served) -> None:
    client, headers = served.client(), served.headers()
    config = client.get_model_config("tiny", headers=headers)
    assert config["name"] == "tiny"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 8
    assert config["input"][0]["name"] == "images"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [3, IMGSZ, IMGSZ]
    assert [o["name"] for o in config["output"]] == ["output0", "output1"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    literal = config["parameters"]["metadata"]["string_value"]
    assert ast.literal_eval(literal) == ULTRALYTICS_METADATA
    # A model without an export config gets one from its tensors.
    echo = client.get_model_config("echo", headers=headers)
    assert echo["name"] == "echo"
    assert echo["platform"] == "onnxruntime_onnx"
    assert echo["max_batch_size"] == 8
    assert echo["input"][0]["name"] == "text"
    assert echo["input"][0]["data_type"] == "TYPE_STRING"
    assert echo["input"][0]["dims"] == []
    assert "metadata" not in echo.get("parameters", {})


# --- inference -----------------------------------------------------------------------------


def test_infer_binary_tensors(served: Served) -> None:
    images = _images(2)
    infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
    infer_input.set_data_from_numpy(images, binary_data=True)
    result = served.client().infer(
        "tiny",
        [infer_input],
        outputs=[
            httpclient.InferRequestedOutput(name, binary_data=True)
            for name in ("output0", "output1")
        ],
        request_id="req-binary",
        headers=served.headers(),
    )
    want0, want1 = _expected(images)
    np.testing.assert_allclose(result.as_numpy("output0"), want0, rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("output1"), want1, rtol=1e-5)
    response = result.get_response()
    assert response["id"] == "req-binary"
    assert response["model_name"] == "tiny"
    assert response["model_version"] == "3"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 2 * 3 * 4


def test_infer_json_tensors_and_one_output(served: Served) -> None:
    images = _images(1, seed=1)
    infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
    infer_input.set_data_from_numpy(images, binary_data=False)
    result = served.client().infer(
        "tiny",
        [infer_input],
        outputs=[httpclient.InferRequestedOutput("output1", binary_data=False)],
        headers=served.headers(),
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["output1"]
    assert "data" in response["outputs"][0]
    assert "id" not in response
    np.testing.assert_allclose(result.as_numpy("output1"), _expected(images)[1], rtol=1e-5)
    assert result.as_numpy("output0") is None


def test_infer_without_outputs_returns_all_binary(served: Served) -> None:
    images = _images(3, seed=2)
    infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
    infer_input.set_data_from_numpy(images)
    result = served.client().infer("tiny", [infer_input], headers=served.headers())
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["output0", "output1"]
    assert all("binary_data_size" in o["parameters"] for o in outputs)
    np.testing.assert_allclose(result.as_numpy("output0"), _expected(images)[0], rtol=1e-5)


def test_nested_json_data_and_gzip_body(served: Served) -> None:
    """What a hand-written client sends: nested lists, a compressed body, JSON back."""
    images = _images(1, seed=3)
    body = {
        "id": "nested",
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": list(images.shape),
                "data": images.tolist(),
            }
        ],
    }
    response = httpx.post(
        f"http://{served.url}/v2/models/tiny/versions/3/infer",
        content=gzip.compress(json.dumps(body).encode()),
        headers={**served.headers(), "content-encoding": "gzip"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["id"] == "nested"
    output0 = next(o for o in document["outputs"] if o["name"] == "output0")
    assert output0["shape"] == [1, 3]
    np.testing.assert_allclose(output0["data"], _expected(images)[0].reshape(-1), rtol=1e-5)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_tensors(served: Served, binary: bool) -> None:
    text = np.array([b"cat", "dög".encode(), b""], dtype=np.object_)
    infer_input = httpclient.InferInput("text", [3], "BYTES")
    infer_input.set_data_from_numpy(text, binary_data=binary)
    result = served.client().infer(
        "echo",
        [infer_input],
        outputs=[httpclient.InferRequestedOutput("text_out", binary_data=binary)],
        headers=served.headers(),
    )
    assert result.get_response()["outputs"][0]["datatype"] == "BYTES"
    assert [bytes(v) if binary else v for v in result.as_numpy("text_out")] == (
        list(text) if binary else ["cat", "dög", ""]
    )


def test_wrong_datatype_shape_or_name_is_a_clear_error(served: Served) -> None:
    client, headers = served.client(), served.headers()

    def infer(name: str, data: np.ndarray, datatype: str) -> InferenceServerException:
        infer_input = httpclient.InferInput(name, list(data.shape), datatype)
        infer_input.set_data_from_numpy(data)
        return _error(lambda: client.infer("tiny", [infer_input], headers=headers))

    wrong_type = infer("images", _images(1).astype(np.float64), "FP64")
    assert wrong_type.status() == "400"
    assert "inputs[0].datatype" in wrong_type.message()
    assert "'images' is FP32, not FP64" in wrong_type.message()
    wrong_shape = infer("images", np.zeros((1, 3, 4, 4), np.float32), "FP32")
    assert wrong_shape.status() == "400"
    assert "inputs[0].shape" in wrong_shape.message()
    assert "[1, 3, 4, 4]" in wrong_shape.message()
    too_big = infer("images", np.zeros((9, 3, IMGSZ, IMGSZ), np.float32), "FP32")
    assert "at most 8" in too_big.message()
    wrong_name = infer("pixels", _images(1), "FP32")
    assert "no input 'pixels'" in wrong_name.message()
    infer_input = httpclient.InferInput("images", [1, 3, IMGSZ, IMGSZ], "FP32")
    infer_input.set_data_from_numpy(_images(1))
    wrong_output = _error(
        lambda: client.infer(
            "tiny",
            [infer_input],
            outputs=[httpclient.InferRequestedOutput("boxes")],
            headers=headers,
        )
    )
    assert "outputs[0].name" in wrong_output.message()


def test_malformed_bodies_are_invalid_arguments(served: Served) -> None:
    url = f"http://{served.url}/v2/models/tiny/infer"
    headers = served.headers()
    cases: list[tuple[bytes, dict[str, str], str]] = [
        (b"{not json", {}, "body"),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "images", "datatype": "FP32", "shape": [1, 3, 8, 8], "data": [1.0]}
                    ]
                }
            ).encode(),
            {},
            "inputs[0].data",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "images",
                            "datatype": "FP32",
                            "shape": [1, 3, 8, 8],
                            "parameters": {"binary_data_size": 768},
                        }
                    ]
                }
            ).encode()
            + b"\0" * 10,
            {"Inference-Header-Content-Length": "-"},
            "Inference-Header-Content-Length",
        ),
    ]
    for body, extra, field in cases:
        response = httpx.post(url, content=body, headers={**headers, **extra}, timeout=30)
        assert response.status_code == 400, response.text
        assert field in response.json()["error"]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "FP32",
                    "shape": [1, 3, 8, 8],
                    "parameters": {"binary_data_size": 768},
                }
            ]
        }
    ).encode()
    short = httpx.post(
        url,
        content=header + b"\0" * 10,
        headers={**headers, "Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert short.status_code == 400
    assert "binary_data_size" in short.json()["error"]
    unknown_route = httpx.get(f"http://{served.url}/v2/nothing", timeout=30)
    assert unknown_route.status_code == 404
    assert "error" in unknown_route.json()


def test_statistics_move_after_infers(served: Served) -> None:
    client, headers = served.client(), served.headers()

    def stats() -> dict[str, Any]:
        document = client.get_inference_statistics("tiny", headers=headers)
        [model] = document["model_stats"]
        return dict(model)

    before = stats()
    assert before["name"] == "tiny"
    assert before["version"] == "3"
    images = _images(2, seed=4)
    for _ in range(2):
        infer_input = httpclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        client.infer("tiny", [infer_input], headers=headers)
    after = stats()
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 2
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert (
        after["inference_stats"]["compute_infer"]["ns"]
        > (before["inference_stats"]["compute_infer"]["ns"])
    )
    assert after["inference_stats"]["compute_infer"]["count"] == success["count"]
    assert after["inference_count"] == before["inference_count"] + 4
    assert after["execution_count"] == before["execution_count"] + 2
    assert after["last_inference"] > 0
    assert set(after["inference_stats"]) >= {"fail", "queue", "compute_input", "compute_output"}
    everything = client.get_inference_statistics(headers=headers)["model_stats"]
    assert {m["name"] for m in everything} == {"tiny", "echo"}


# --- repository ------------------------------------------------------------------------------


def test_repository_is_for_admins(served: Served) -> None:
    client = served.client()
    for call in (
        lambda: client.get_model_repository_index(headers=served.headers(MEMBER)),
        lambda: client.load_model("warming", headers=served.headers(MEMBER)),
        lambda: client.unload_model("tiny", headers=served.headers(MEMBER)),
    ):
        assert _error(call).status() == "403"


def test_repository_index_load_unload(served: Served) -> None:
    client, headers = served.client(), served.headers(ADMIN)
    index = client.get_model_repository_index(headers=headers)
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("echo", "1", "READY"),
        ("tiny", "3", "READY"),
        ("warming", "1", "LOADING"),
    }
    client.load_model("warming", headers=headers)
    assert client.is_model_ready("warming", headers=headers)
    client.unload_model("warming", headers=headers)
    assert not client.is_model_ready("warming", headers=headers)
    ready = httpx.post(
        f"http://{served.url}/v2/repository/index", json={"ready": True}, headers=headers
    ).json()
    assert {m["name"] for m in ready} == {"echo", "tiny"}
    assert _error(lambda: client.load_model("secret", headers=headers)).status() == "404"
    config_override = _error(
        lambda: client.load_model("warming", headers=headers, config=json.dumps({}))
    )
    assert config_override.status() == "400"
    assert "parameters.config" in config_override.message()


# --- other clients ---------------------------------------------------------------------------


async def test_aio_client(served: Served) -> None:
    client = aio_httpclient.InferenceServerClient(url=served.url)
    try:
        headers = served.headers()
        assert await client.is_server_live()
        images = _images(1, seed=5)
        infer_input = aio_httpclient.InferInput("images", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        result = await client.infer("tiny", [infer_input], headers=headers)
        np.testing.assert_allclose(result.as_numpy("output0"), _expected(images)[0], rtol=1e-5)
        config = await client.get_model_config("tiny", headers=headers)
        assert "metadata" in config["parameters"]
    finally:
        await client.close()


def test_ultralytics_triton_remote_model(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """TritonRemoteModel builds its own tritonclient; a client plugin gives it our token."""
    from ultralytics.utils.triton import TritonRemoteModel

    headers = served.headers()

    class AuthenticatedClient(httpclient.InferenceServerClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_plugin(BearerPlugin(headers))

    monkeypatch.setattr(httpclient, "InferenceServerClient", AuthenticatedClient)
    model = TritonRemoteModel(f"http://{served.url}/tiny")
    assert model.metadata == ULTRALYTICS_METADATA
    assert model.input_names == ["images"]
    assert model.output_names == ["output0", "output1"]
    images = _images(1, seed=6)
    output0, output1 = model(images)
    want0, want1 = _expected(images)
    np.testing.assert_allclose(output0, want0, rtol=1e-5)
    np.testing.assert_allclose(output1, want1, rtol=1e-5)


def test_rest_calls_share_the_grpc_servers_metrics(served: Served) -> None:
    served.client().get_model_metadata("tiny", headers=served.headers())
    value = served.grpc_server.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "inference.GRPCInferenceService",
            "grpc_method": "ModelMetadata",
            "grpc_type": "unary",
            "grpc_code": "OK",
            "transport": "rest",
        },
    )
    assert value is not None and value >= 1
