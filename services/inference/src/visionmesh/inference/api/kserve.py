"""KServe v2 (Open Inference Protocol) over the served models, whatever the transport.

The gRPC servicer (`kserve_grpc`) and the REST app (`kserve_http`) are thin adapters over
`KServeDataplane`, like KServe's `protocol/dataplane.py` under its two servers: they decode
the wire request into an `InferRequest` with the codecs here, call the dataplane, and encode
its answer back. Responses follow Triton's, so clients built for Triton (tritonclient,
Ultralytics' TritonRemoteModel) work unchanged: metadata, model config and statistics are
tritonclient's own protobuf messages, and the REST layer prints them as Triton's JSON.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as package_metadata
from typing import Any, Final, Protocol

import numpy as np
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2, service_pb2
from visionmesh.common.auth import Principal
from visionmesh.common.errors import InvalidArgument, NotFound, PermissionDenied
from visionmesh.inference.core.model import (
    KSERVE_DTYPES,
    LoadedModel,
    RepositoryEntry,
    Tensor,
    TensorSpec,
    Timing,
    kserve_datatype,
)

__all__ = [
    "HEADER_LENGTH",
    "KSERVE_EXTENSIONS",
    "KSERVE_PUBLIC_METHODS",
    "KSERVE_SERVICE_NAME",
    "SERVER_NAME",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "KServeDataplane",
    "KServeModels",
    "RepositoryEntry",
    "RequestedOutput",
    "decode_grpc_request",
    "decode_http_request",
    "encode_grpc_response",
    "encode_http_response",
    "message_json",
    "tensor_from_bytes",
    "tensor_to_bytes",
]

SERVER_NAME: Final = "visionmesh"
KSERVE_SERVICE_NAME: Final = "inference.GRPCInferenceService"
KSERVE_PUBLIC_METHODS: Final = frozenset(
    {f"/{KSERVE_SERVICE_NAME}/ServerLive", f"/{KSERVE_SERVICE_NAME}/ServerReady"}
)
"""Full method names callable without a token: liveness and readiness probes. Pass them as
public methods to the authenticator of the server that serves KServe (gRPC and REST)."""

KSERVE_EXTENSIONS: Final = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
)
"""Triton's protocol extensions this server implements (server metadata lists them)."""

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
"""HTTP header of the binary tensor extension: the JSON part's length in the body."""

_BYTES_LENGTH = struct.Struct("<I")

# InferTensorContents field per datatype (FP16 and BF16 have none: raw contents only).
_CONTENTS_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# Parameters of Triton features this server does not have: refused rather than ignored,
# since ignoring them would answer something other than what was asked.
_SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size")


# --- the models served --------------------------------------------------------------------


class KServeModels(Protocol):
    """The tenant-scoped models KServe serves (InferenceCore implements it)."""

    def server_ready(self) -> bool: ...

    def model(self, principal: Principal, name: str, version: str = "") -> LoadedModel:
        """The READY model `name` of the caller's tenant.

        NotFound for an unknown model, another tenant's, or a version other than the one
        served; FailedPrecondition when it exists but is not READY.
        """
        ...

    def model_ready(self, principal: Principal, name: str, version: str = "") -> bool: ...

    def index(self, principal: Principal, *, ready_only: bool = False) -> list[RepositoryEntry]:
        """The caller's tenant's models with their states."""
        ...

    async def load(self, principal: Principal, name: str) -> None:
        """Load (or reload) a deployment; admin only (PermissionDenied otherwise)."""
        ...

    async def unload(self, principal: Principal, name: str) -> None:
        """Unload a deployment; admin only (PermissionDenied otherwise)."""
        ...


# --- requests and responses, as the transports decode them ----------------------------------


@dataclass(frozen=True)
class InferInput:
    """One decoded input tensor; `data` already has `shape`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Tensor


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None
    """REST: whether to send it in the binary part (None: the request's default)."""


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    model_version: str
    id: str
    inputs: tuple[InferInput, ...]
    outputs: tuple[RequestedOutput, ...] = ()
    """The outputs asked for, in order; empty for all of the model's."""
    binary_outputs: bool = False
    """REST: the default of outputs that do not say (`binary_data_output`)."""


@dataclass(frozen=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Tensor
    binary: bool


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: tuple[InferOutput, ...]


# --- the dataplane ------------------------------------------------------------------------


class KServeDataplane:
    """What both KServe transports answer, over a `KServeModels`.

    Every model call is scoped by the caller's Principal (the transports pass
    `require_principal()`); repository operations are for admins only.
    """

    def __init__(self, models: KServeModels, *, server_version: str | None = None) -> None:
        self.models = models
        self.server_version = server_version or _package_version()

    # server

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.models.server_ready()

    def server_metadata(self) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=self.server_version, extensions=list(KSERVE_EXTENSIONS)
        )

    # models

    def model_ready(self, principal: Principal, name: str, version: str = "") -> bool:
        return self.models.model_ready(principal, name, version)

    def model_metadata(
        self, principal: Principal, name: str, version: str = ""
    ) -> service_pb2.ModelMetadataResponse:
        model = self.models.model(principal, name, version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        runtime = model.runtime
        return service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=model.platform,
            inputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in runtime.inputs
            ],
            outputs=[
                tensor(name=s.name, datatype=s.datatype, shape=s.shape) for s in runtime.outputs
            ],
        )

    def model_config(
        self, principal: Principal, name: str, version: str = ""
    ) -> model_config_pb2.ModelConfig:
        """The export's Triton config (parameters["metadata"] included) under the served name."""
        return triton_model_config(self.models.model(principal, name, version))

    def model_statistics(
        self, principal: Principal, name: str = "", version: str = ""
    ) -> service_pb2.ModelStatisticsResponse:
        """Statistics of one model, or of every READY model of the tenant when `name` is empty."""
        if name:
            models = [self.models.model(principal, name, version)]
        else:
            models = [
                self.models.model(principal, entry.name, entry.version)
                for entry in self.models.index(principal, ready_only=True)
            ]
        return service_pb2.ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    # repository

    def repository_index(
        self, principal: Principal, *, repository: str = "", ready_only: bool = False
    ) -> service_pb2.RepositoryIndexResponse:
        _check_repository(principal, repository)
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[
                entry(name=e.name, version=e.version, state=e.state, reason=e.reason)
                for e in self.models.index(principal, ready_only=ready_only)
            ]
        )

    async def load(
        self,
        principal: Principal,
        name: str,
        *,
        repository: str = "",
        parameters: Iterable[str] = (),
    ) -> None:
        _check_repository(principal, repository)
        for key in parameters:
            # Triton loads a config or files given inline; ours come from the deployment.
            raise InvalidArgument.for_field(
                f"parameters.{key}",
                "load parameters are not supported: a model loads from its deployment",
            )
        await self.models.load(principal, name)

    async def unload(
        self,
        principal: Principal,
        name: str,
        *,
        repository: str = "",
        parameters: Iterable[str] = (),
    ) -> None:
        _check_repository(principal, repository)
        for key in parameters:
            # No ensembles here, so a model has no dependents to unload with it.
            if key != "unload_dependents":
                raise InvalidArgument.for_field(
                    f"parameters.{key}", "the only unload parameter is unload_dependents"
                )
        await self.models.unload(principal, name)

    # inference

    async def infer(self, principal: Principal, request: InferRequest) -> InferResponse:
        """Check the request against the model's tensors, run it, pick the asked outputs."""
        model = self.models.model(principal, request.model_name, request.model_version)
        runtime = model.runtime
        inputs = _checked_inputs(model.name, runtime.inputs, runtime.max_batch_size, request)
        specs = {spec.name: spec for spec in runtime.outputs}
        asked = request.outputs or tuple(RequestedOutput(spec.name) for spec in runtime.outputs)
        for i, output in enumerate(asked):
            if output.name not in specs:
                raise InvalidArgument.for_field(
                    f"outputs[{i}].name",
                    f"model {model.name!r} has no output {output.name!r}; "
                    f"its outputs are {_names(runtime.outputs)}",
                )
        results = await runtime.infer(inputs, timing=Timing())
        outputs = []
        for output in asked:
            data = np.asarray(results[output.name])
            outputs.append(
                InferOutput(
                    name=output.name,
                    datatype=kserve_datatype(data.dtype),
                    shape=tuple(int(d) for d in data.shape),
                    data=data,
                    binary=request.binary_outputs if output.binary is None else output.binary,
                )
            )
        return InferResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=tuple(outputs),
        )


def _package_version() -> str:
    try:
        return package_metadata.version("visionmesh-inference")
    except package_metadata.PackageNotFoundError:
        return "0"


def _check_repository(principal: Principal, repository: str) -> None:
    if not principal.is_admin:
        raise PermissionDenied("the model repository is for admins of the tenant")
    if repository:
        # One repository per tenant, with no name: Triton's default one.
        raise NotFound(resource_type="repository", resource_id=repository)


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(repr(spec.name) for spec in specs)


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _checked_inputs(
    model_name: str, specs: Sequence[TensorSpec], max_batch_size: int, request: InferRequest
) -> dict[str, Tensor]:
    by_name = {spec.name: spec for spec in specs}
    inputs: dict[str, Tensor] = {}
    for i, tensor in enumerate(request.inputs):
        spec = by_name.get(tensor.name)
        if spec is None:
            raise InvalidArgument.for_field(
                f"inputs[{i}].name",
                f"model {model_name!r} has no input {tensor.name!r}; "
                f"its inputs are {_names(specs)}",
            )
        if tensor.name in inputs:
            raise InvalidArgument.for_field(
                f"inputs[{i}].name", f"input {tensor.name!r} is given twice"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidArgument.for_field(
                f"inputs[{i}].datatype",
                f"input {tensor.name!r} is {spec.datatype}, not {tensor.datatype}",
            )
        fits = len(tensor.shape) == len(spec.shape) and all(
            want < 0 or got == want for got, want in zip(tensor.shape, spec.shape, strict=True)
        )
        if not fits:
            raise InvalidArgument.for_field(
                f"inputs[{i}].shape",
                f"input {tensor.name!r} has shape {_shape_text(tensor.shape)}; the model takes "
                f"{_shape_text(spec.shape)} (-1: any size)",
            )
        if spec.shape and spec.shape[0] < 0 and tensor.shape[0] > max_batch_size:
            raise InvalidArgument.for_field(
                f"inputs[{i}].shape",
                f"input {tensor.name!r} has a batch of {tensor.shape[0]}; "
                f"model {model_name!r} takes at most {max_batch_size}",
            )
        inputs[tensor.name] = tensor.data
    missing = [spec.name for spec in specs if spec.name not in inputs]
    if missing:
        raise InvalidArgument.for_field(
            "inputs", f"model {model_name!r} needs input(s) {', '.join(map(repr, missing))}"
        )
    batches = {tensor.shape[0] for tensor in request.inputs if tensor.shape}
    if len(batches) > 1:
        raise InvalidArgument.for_field(
            "inputs", f"inputs have different batch sizes {sorted(batches)}"
        )
    return inputs


# --- model config and statistics ------------------------------------------------------------


def triton_model_config(model: LoadedModel) -> model_config_pb2.ModelConfig:
    """The model's Triton config: the export's when it has one, else one from its tensors."""
    config = model_config_pb2.ModelConfig()
    if model.triton_config:
        try:
            json_format.ParseDict(model.triton_config, config, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            # The config came with the deployment's package; a bad one is our fault.
            raise ValueError(f"model {model.name!r} has a malformed Triton config: {exc}") from exc
    else:
        config.platform = model.platform
        _fill_tensors(config, model)
    # Clients address the model by its deployment name, not the export's model name.
    config.name = model.name
    return config


def _fill_tensors(config: model_config_pb2.ModelConfig, model: LoadedModel) -> None:
    runtime = model.runtime
    specs = (*runtime.inputs, *runtime.outputs)
    batched = bool(specs) and all(spec.shape and spec.shape[0] < 0 for spec in specs)
    config.max_batch_size = runtime.max_batch_size if batched else 0
    for spec, field in [(s, config.input) for s in runtime.inputs] + [
        (s, config.output) for s in runtime.outputs
    ]:
        tensor = field.add()
        tensor.name = spec.name
        tensor.data_type = model_config_pb2.DataType.Value(_config_type(spec.datatype))
        tensor.dims.extend(spec.shape[1:] if batched else spec.shape)


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _duration(count: int, ns: int) -> service_pb2.StatisticDuration:
    return service_pb2.StatisticDuration(count=max(count, 0), ns=max(ns, 0))


def _statistics(model: LoadedModel) -> service_pb2.ModelStatistics:
    stats = model.stats
    done = stats.success_count
    return service_pb2.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        # Like Triton's, the per-request durations count successful requests; a request in a
        # dynamic batch is charged the batch's whole compute time.
        inference_stats=service_pb2.InferStatistics(
            # Our stats keep queue and compute time, not whole-request time: a successful
            # request's duration is the two together, as near as they tell.
            success=_duration(done, stats.queue_ns + stats.compute_ns),
            fail=_duration(stats.failure_count, 0),
            queue=_duration(done, stats.queue_ns),
            compute_input=_duration(done, 0),
            compute_infer=_duration(done, stats.compute_ns),
            compute_output=_duration(done, 0),
            cache_hit=_duration(0, 0),
            cache_miss=_duration(0, 0),
        ),
    )


_INT64_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_json(message: Message) -> dict[str, Any]:
    """A message as Triton's REST API prints it: proto field names, every field, and 64-bit
    integers as JSON numbers (protobuf's JSON makes them strings; Triton undoes that)."""
    value = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _numbers(value, message.DESCRIPTOR)


def _numbers(value: dict[str, Any], message: Any) -> dict[str, Any]:
    # `message` is a Descriptor (typed as Any: upb's and the pure-Python one differ for mypy).
    for field in message.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, entry in item.items():
                    item[key] = _numbers(entry, value_field.message_type)
            elif value_field.type in _INT64_TYPES:
                value[field.name] = {key: int(entry) for key, entry in item.items()}
        elif field.message_type is not None:
            if isinstance(item, list):
                value[field.name] = [_numbers(entry, field.message_type) for entry in item]
            else:
                value[field.name] = _numbers(item, field.message_type)
        elif field.type in _INT64_TYPES:
            value[field.name] = [int(v) for v in item] if isinstance(item, list) else int(item)
    return value


# --- tensor codecs ----------------------------------------------------------------------------


def _dtype(field: str, datatype: str) -> np.dtype[Any]:
    dtype = KSERVE_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument.for_field(
            field, f"unsupported datatype {datatype!r}; one of {', '.join(KSERVE_DTYPES)}"
        )
    return dtype


def _element_count(field: str, shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidArgument.for_field(field, f"shape {_shape_text(shape)} has a negative size")
    return math.prod(shape)


def tensor_from_bytes(field: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes (BYTES: 4-byte length before each element)."""
    dtype = _dtype(f"{field}.datatype", datatype)
    count = _element_count(f"{field}.shape", shape)
    if datatype == "BYTES":
        elements: list[bytes] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise InvalidArgument.for_field(field, "BYTES data ends inside a length prefix")
            (length,) = _BYTES_LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InvalidArgument.for_field(field, "BYTES data ends inside an element")
            elements.append(raw[offset : offset + length])
            offset += length
        if len(elements) != count:
            raise InvalidArgument.for_field(
                field,
                f"{len(elements)} BYTES elements for shape {_shape_text(shape)} ({count} expected)",
            )
        array = np.empty(count, dtype=np.object_)
        array[:] = elements
        return array.reshape(tuple(shape))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument.for_field(
            field,
            f"{len(raw)} bytes of {datatype} data for shape {_shape_text(shape)} "
            f"({expected} expected)",
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tuple(shape))


def tensor_to_bytes(data: Tensor) -> bytes:
    """A tensor's raw little-endian bytes (BYTES: each element after its 4-byte length)."""
    if kserve_datatype(data.dtype) == "BYTES":
        parts = []
        for element in data.reshape(-1):
            value = element.encode() if isinstance(element, str) else bytes(element)
            parts.append(_BYTES_LENGTH.pack(len(value)))
            parts.append(value)
        return b"".join(parts)
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def _tensor_from_json(field: str, datatype: str, shape: Sequence[int], data: Any) -> Tensor:
    dtype = _dtype(f"{field}.datatype", datatype)
    count = _element_count(f"{field}.shape", shape)
    flat = list(_flatten(data))
    if len(flat) != count:
        raise InvalidArgument.for_field(
            f"{field}.data",
            f"{len(flat)} elements for shape {_shape_text(shape)} ({count} expected)",
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument.for_field(f"{field}.data", "BYTES elements must be strings")
        array = np.empty(count, dtype=np.object_)
        array[:] = [v.encode() for v in flat]
        return array.reshape(tuple(shape))
    kind = bool if datatype == "BOOL" else (float if dtype.kind == "f" else int)
    if not all(type(v) is kind or (kind is float and type(v) is int) for v in flat):
        raise InvalidArgument.for_field(
            f"{field}.data", f"{datatype} elements must be JSON {kind.__name__} values"
        )
    try:
        return np.array(flat, dtype=dtype).reshape(tuple(shape))
    except OverflowError:
        raise InvalidArgument.for_field(
            f"{field}.data", f"an element is out of the range of {datatype}"
        ) from None


def _flatten(data: Any) -> Iterable[Any]:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _tensor_to_json(data: Tensor) -> list[Any]:
    flat = data.reshape(-1)
    if kserve_datatype(data.dtype) == "BYTES":
        try:
            return [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError:
            # JSON strings cannot carry arbitrary bytes; binary outputs can.
            raise InvalidArgument(
                "a BYTES output is not UTF-8 text: ask for it with binary_data"
            ) from None
    return list(flat.tolist())


# --- REST ---------------------------------------------------------------------------------------


def _shape(field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidArgument.for_field(field, "must be a list of integers")
    return tuple(value)


def _object(field: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument.for_field(field, "must be a JSON object")
    return value


def _string(field: str, value: Any, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument.for_field(field, "must be a non-empty string")
    return value


def _refuse_shared_memory(field: str, parameters: Container[str]) -> None:
    for key in _SHARED_MEMORY_PARAMETERS:
        if key in parameters:
            raise InvalidArgument.for_field(
                f"{field}.parameters.{key}", "shared memory is not supported by this server"
            )


def decode_http_request(
    body: bytes, *, header_length: int | None, model_name: str, model_version: str = ""
) -> InferRequest:
    """A REST infer request: JSON, or JSON then binary tensors (binary tensor extension)."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise InvalidArgument.for_field(
                HEADER_LENGTH, f"{header_length} is not within the body's {len(body)} bytes"
            )
        header, binary = body[:header_length], body[header_length:]
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument.for_field("body", f"not a JSON inference request: {exc}") from None
    request = _object("body", document)
    parameters = _object("parameters", request.get("parameters"))
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidArgument.for_field("inputs", "must be a non-empty list")
    inputs = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        field = f"inputs[{i}]"
        tensor = _object(field, raw)
        name = _string(f"{field}.name", tensor.get("name"))
        datatype = _string(f"{field}.datatype", tensor.get("datatype"))
        shape = _shape(f"{field}.shape", tensor.get("shape"))
        tensor_parameters = _object(f"{field}.parameters", tensor.get("parameters"))
        _refuse_shared_memory(field, tensor_parameters)
        size = tensor_parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidArgument.for_field(
                    f"{field}.parameters.binary_data_size", "must be a non-negative integer"
                )
            if offset + size > len(binary):
                raise InvalidArgument.for_field(
                    f"{field}.parameters.binary_data_size",
                    f"{size} bytes, but only {len(binary) - offset} binary bytes are left",
                )
            data = tensor_from_bytes(field, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in tensor:
            data = _tensor_from_json(field, datatype, shape, tensor["data"])
        else:
            raise InvalidArgument.for_field(
                f"{field}.data", f"input {name!r} has neither data nor binary_data_size"
            )
        inputs.append(InferInput(name=name, datatype=datatype, shape=shape, data=data))
    if offset != len(binary):
        raise InvalidArgument.for_field(
            "body", f"{len(binary) - offset} binary bytes after the last input's"
        )
    outputs = []
    raw_outputs = request.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise InvalidArgument.for_field("outputs", "must be a list")
    for i, raw in enumerate(raw_outputs):
        field = f"outputs[{i}]"
        output = _object(field, raw)
        output_parameters = _object(f"{field}.parameters", output.get("parameters"))
        _refuse_shared_memory(field, output_parameters)
        if output_parameters.get("classification"):
            raise InvalidArgument.for_field(
                f"{field}.parameters.classification",
                "the classification extension is not supported by this server",
            )
        binary_data = output_parameters.get("binary_data")
        if binary_data is not None and not isinstance(binary_data, bool):
            raise InvalidArgument.for_field(f"{field}.parameters.binary_data", "must be a boolean")
        outputs.append(
            RequestedOutput(name=_string(f"{field}.name", output.get("name")), binary=binary_data)
        )
    binary_outputs = parameters.get("binary_data_output", False)
    if not isinstance(binary_outputs, bool):
        raise InvalidArgument.for_field("parameters.binary_data_output", "must be a boolean")
    request_id = request.get("id")
    return InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=_string("id", request_id, required=False),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        binary_outputs=binary_outputs,
    )


def encode_http_response(response: InferResponse) -> tuple[bytes, int | None]:
    """The REST body, and the JSON part's length when binary tensors follow it."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in response.outputs:
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.binary:
            raw = tensor_to_bytes(output.data)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = _tensor_to_json(output.data)
        outputs.append(tensor)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        document["id"] = response.id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


# --- gRPC -----------------------------------------------------------------------------------


def _contents(field: str, datatype: str, shape: Sequence[int], contents: Any) -> Tensor:
    dtype = _dtype(f"{field}.datatype", datatype)
    count = _element_count(f"{field}.shape", shape)
    name = _CONTENTS_FIELD.get(datatype)
    if name is None:
        raise InvalidArgument.for_field(
            f"{field}.contents", f"{datatype} tensors travel in raw_input_contents only"
        )
    values = list(getattr(contents, name))
    if len(values) != count:
        raise InvalidArgument.for_field(
            f"{field}.contents.{name}",
            f"{len(values)} elements for shape {_shape_text(shape)} ({count} expected)",
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=np.object_)
        array[:] = values
        return array.reshape(tuple(shape))
    try:
        return np.array(values, dtype=dtype).reshape(tuple(shape))
    except OverflowError:
        raise InvalidArgument.for_field(
            f"{field}.contents.{name}", f"an element is out of the range of {datatype}"
        ) from None


def decode_grpc_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest: tensors in raw_input_contents (what tritonclient sends) or contents."""
    raw_contents = list(request.raw_input_contents)
    if raw_contents and len(raw_contents) != len(request.inputs):
        raise InvalidArgument.for_field(
            "raw_input_contents",
            f"{len(raw_contents)} entries for {len(request.inputs)} inputs",
        )
    if not request.inputs:
        raise InvalidArgument.for_field("inputs", "must not be empty")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        field = f"inputs[{i}]"
        if not tensor.name:
            raise InvalidArgument.for_field(f"{field}.name", "must not be empty")
        _refuse_shared_memory(field, tensor.parameters)
        shape = tuple(int(d) for d in tensor.shape)
        if raw_contents:
            if tensor.HasField("contents"):
                raise InvalidArgument.for_field(
                    f"{field}.contents", "given together with raw_input_contents"
                )
            data = tensor_from_bytes(
                f"raw_input_contents[{i}]", tensor.datatype, shape, raw_contents[i]
            )
        else:
            data = _contents(field, tensor.datatype, shape, tensor.contents)
        inputs.append(
            InferInput(name=tensor.name, datatype=tensor.datatype, shape=shape, data=data)
        )
    outputs = []
    for i, output in enumerate(request.outputs):
        field = f"outputs[{i}]"
        _refuse_shared_memory(field, output.parameters)
        if "classification" in output.parameters:
            raise InvalidArgument.for_field(
                f"{field}.parameters.classification",
                "the classification extension is not supported by this server",
            )
        outputs.append(RequestedOutput(name=output.name, binary=True))
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        binary_outputs=True,
    )


def encode_grpc_response(response: InferResponse) -> service_pb2.ModelInferResponse:
    """A ModelInferResponse with every output in raw_output_contents, as Triton sends them."""
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        message.raw_output_contents.append(tensor_to_bytes(output.data))
    return message
