"""protos/inference/grpc_service.proto speaks the wire format of Triton's clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_aio
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, json_format
from google.protobuf import message as pb_message
from google.protobuf.message_factory import GetMessageClass
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

PROTO = "inference/grpc_service.proto"
MODEL_CONFIG_PROTO = "inference/model_config.proto"
SERVICE = "inference.GRPCInferenceService"
# The RPCs the inference service serves over KServe v2 (Triton extensions included).
REQUIRED_RPCS = {
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
}


@pytest.fixture(scope="module")
def pool(image: descriptor_pb2.FileDescriptorSet) -> descriptor_pool.DescriptorPool:
    """Our protos in a pool of their own: the default one holds tritonclient's copy."""
    pool = descriptor_pool.DescriptorPool()
    for file in image.file:  # protoc writes dependencies before their dependents
        pool.AddSerializedFile(file.SerializeToString())
    return pool


@pytest.fixture(scope="module")
def ours(pool: descriptor_pool.DescriptorPool) -> descriptor.FileDescriptor:
    return pool.FindFileByName(PROTO)


@pytest.fixture(scope="module")
def our_model_config(pool: descriptor_pool.DescriptorPool) -> descriptor.FileDescriptor:
    return pool.FindFileByName(MODEL_CONFIG_PROTO)


def _wire_shape(message: descriptor.Descriptor) -> dict[str, Any]:
    """What decides a message's wire format: fields (sans json_name), oneofs, nesting."""
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    return _shape(proto)


def _shape(proto: descriptor_pb2.DescriptorProto) -> dict[str, Any]:
    return {
        "fields": {
            f.number: (
                f.name,
                descriptor_pb2.FieldDescriptorProto.Type.Name(f.type),
                descriptor_pb2.FieldDescriptorProto.Label.Name(f.label),
                f.type_name.lstrip("."),
                proto.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
                f.proto3_optional,
            )
            for f in proto.field
        },
        "map_entry": proto.options.map_entry,
        "nested": {n.name: _shape(n) for n in proto.nested_type},
        "enums": {e.name: [(v.name, v.number) for v in e.value] for e in proto.enum_type},
    }


def test_file_and_package(ours: descriptor.FileDescriptor) -> None:
    assert ours.package == service_pb2.DESCRIPTOR.package == "inference"
    assert ours.message_types_by_name, "no messages"
    assert not ours.enum_types_by_name


def test_messages_match_tritonclient(ours: descriptor.FileDescriptor) -> None:
    theirs = service_pb2.DESCRIPTOR.message_types_by_name
    for name, message in ours.message_types_by_name.items():
        assert name in theirs, f"inference.{name} is not a Triton message"
        assert _wire_shape(message) == _wire_shape(theirs[name]), f"inference.{name} differs"


def _assert_subset(ours: dict[str, Any], theirs: dict[str, Any], path: str) -> None:
    """Every field, nested message and enum we declare is Triton's, number for number."""
    for number, field in ours["fields"].items():
        assert theirs["fields"].get(number) == field, f"{path} field {number} {field[0]}"
    assert ours["map_entry"] == theirs["map_entry"], path
    for name, nested in ours["nested"].items():
        assert name in theirs["nested"], f"{path}.{name} is not Triton's"
        _assert_subset(nested, theirs["nested"][name], f"{path}.{name}")
    for name, values in ours["enums"].items():
        assert theirs["enums"].get(name) == values, f"{path}.{name} differs"


def test_model_config_is_part_of_tritons(our_model_config: descriptor.FileDescriptor) -> None:
    """model_config.proto declares a subset of Triton's: what ModelConfig responses fill."""
    assert our_model_config.package == model_config_pb2.DESCRIPTOR.package == "inference"
    theirs = model_config_pb2.DESCRIPTOR
    for name, enum in our_model_config.enum_types_by_name.items():
        assert name in theirs.enum_types_by_name, f"inference.{name} is not a Triton enum"
        their_values = [(v.name, v.number) for v in theirs.enum_types_by_name[name].values]
        assert [(v.name, v.number) for v in enum.values] == their_values, name
    assert "ModelConfig" in our_model_config.message_types_by_name
    for name, message in our_model_config.message_types_by_name.items():
        assert name in theirs.message_types_by_name, f"inference.{name} is not a Triton message"
        their_shape = _wire_shape(theirs.message_types_by_name[name])
        _assert_subset(_wire_shape(message), their_shape, f"inference.{name}")


def test_model_config_round_trip(pool: descriptor_pool.DescriptorPool) -> None:
    """A config as the export writes it survives tritonclient -> ours -> tritonclient."""
    config = model_config_pb2.ModelConfig(
        name="m", platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8
    )
    config.input.add(name="images", data_type=model_config_pb2.TYPE_FP32, dims=[3, -1, -1])
    config.output.add(name="output0", data_type=model_config_pb2.TYPE_FP32, dims=[84, -1])
    config.dynamic_batching.max_queue_delay_microseconds = 500
    config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_AUTO)
    config.parameters["metadata"].string_value = "{'names': {0: 'cat'}}"
    response = service_pb2.ModelConfigResponse(config=config)
    ours_cls = GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfigResponse"))
    ours = ours_cls.FromString(response.SerializeToString())
    # JSON drops unknown fields: a field the export writes that ours lacks shows here.
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(response)
    back = service_pb2.ModelConfigResponse.FromString(ours.SerializeToString(deterministic=True))
    assert back == response


def test_service_matches_tritonclient(ours: descriptor.FileDescriptor) -> None:
    assert list(ours.services_by_name) == ["GRPCInferenceService"]
    service = ours.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == theirs.full_name == SERVICE
    assert set(service.methods_by_name) >= REQUIRED_RPCS, REQUIRED_RPCS - set(
        service.methods_by_name
    )
    for name, method in service.methods_by_name.items():
        assert name in theirs.methods_by_name, f"{name} is not a Triton RPC"
        their = theirs.methods_by_name[name]
        assert method.input_type.full_name == their.input_type.full_name, name
        assert method.output_type.full_name == their.output_type.full_name, name
        assert method.client_streaming == their.client_streaming, name
        assert method.server_streaming == their.server_streaming, name


def _sample_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="1", id="req-1")
    request.parameters["priority"].uint64_param = 3
    request.parameters["sequence_id"].string_param = "s"
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
    tensor.parameters["shared_memory_region"].string_param = "r"
    typed = request.inputs.add(name="INPUT1", datatype="INT64", shape=[2])
    typed.contents.int64_contents.extend([-1, 2])
    output = request.outputs.add(name="OUTPUT0")
    output.parameters["classification"].int64_param = 2
    request.raw_input_contents.append(np.array([[1.5, -2.0]], np.float32).tobytes())
    return request


def _sample_response() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="m", model_version="1", id="req-1")
    response.parameters["triton_final_response"].bool_param = True
    out = response.outputs.add(name="OUTPUT0", datatype="BYTES", shape=[1])
    out.contents.bytes_contents.append(b"cat")
    out.parameters["binary_data_size"].int64_param = 7
    response.raw_output_contents.append(b"\x03\x00\x00\x00cat")
    return response


@pytest.mark.parametrize("sample", [_sample_request, _sample_response], ids=lambda f: f.__name__)
def test_bytes_round_trip(
    pool: descriptor_pool.DescriptorPool, sample: Callable[[], pb_message.Message]
) -> None:
    theirs = sample()
    ours_cls = GetMessageClass(pool.FindMessageTypeByName(theirs.DESCRIPTOR.full_name))
    ours = ours_cls.FromString(theirs.SerializeToString())
    # Unknown fields would survive a re-serialisation but not the JSON form.
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)
    back = type(theirs).FromString(ours.SerializeToString(deterministic=True))
    assert back == theirs


# --- a real call: tritonclient's aio client against an in-process grpc.aio server ----------


def _double(request: Any, response_cls: type[Any]) -> Any:
    """ModelInfer of a toy model: OUTPUT0 = 2 * INPUT0 (FP32)."""
    tensor = request.inputs[0]
    values = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tensor.shape)
    response = response_cls(model_name=request.model_name, model_version="1", id=request.id)
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=list(tensor.shape))
    response.raw_output_contents.append((values * 2).astype(np.float32).tobytes())
    return response


class _TritonServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Served with tritonclient's own generated classes (how the inference service will)."""

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return _double(request, service_pb2.ModelInferResponse)


def _handler_from_our_contract(pool: descriptor_pool.DescriptorPool) -> grpc.GenericRpcHandler:
    """The same servicer, but with message classes built from our proto."""

    def cls(name: str) -> Any:
        return GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))

    infer_req, infer_resp = cls("ModelInferRequest"), cls("ModelInferResponse")
    live_req, live_resp = cls("ServerLiveRequest"), cls("ServerLiveResponse")

    async def server_live(request: Any, context: Any) -> Any:
        return live_resp(live=True)

    async def model_infer(request: Any, context: Any) -> Any:
        return _double(request, infer_resp)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ServerLive": grpc.unary_unary_rpc_method_handler(
                server_live, live_req.FromString, live_resp.SerializeToString
            ),
            "ModelInfer": grpc.unary_unary_rpc_method_handler(
                model_infer, infer_req.FromString, infer_resp.SerializeToString
            ),
        },
    )


@pytest.fixture(params=["tritonclient_classes", "our_contract"])
async def server_port(
    request: pytest.FixtureRequest, pool: descriptor_pool.DescriptorPool
) -> AsyncIterator[int]:
    server = grpc.aio.server()
    if request.param == "tritonclient_classes":
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_TritonServicer(), server)
    else:
        server.add_generic_rpc_handlers((_handler_from_our_contract(pool),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(grace=None)


@pytest.mark.timeout(20)
async def test_tritonclient_infer_round_trip(server_port: int) -> None:
    client = triton_aio.InferenceServerClient(url=f"127.0.0.1:{server_port}")
    try:
        assert await client.is_server_live()
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        infer_input = triton_aio.InferInput("INPUT0", list(data.shape), "FP32")
        infer_input.set_data_from_numpy(data)
        result = await client.infer(
            model_name="double",
            inputs=[infer_input],
            outputs=[triton_aio.InferRequestedOutput("OUTPUT0")],
            request_id="r1",
            client_timeout=10,
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data * 2)
        assert result.get_response().id == "r1"
    finally:
        await client.close()
