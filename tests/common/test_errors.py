"""The error hierarchy: codes, HTTP statuses, rich details both ways, protovalidate conversion."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from visionmesh.common.errors import (
    GRPC_DETAILS_METADATA_KEY,
    Aborted,
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    VisionMeshError,
    error_class_for_code,
    from_rpc_error,
    from_rpc_status,
    validate_message,
)

EXPECTED: list[tuple[type[VisionMeshError], grpc.StatusCode, int]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, 409),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, 403),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (Aborted, grpc.StatusCode.ABORTED, 409),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE, 400),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (Cancelled, grpc.StatusCode.CANCELLED, 499),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED, 501),
    (Internal, grpc.StatusCode.INTERNAL, 500),
]


@pytest.mark.parametrize(("cls", "code", "http"), EXPECTED)
def test_each_class_knows_its_codes(
    cls: type[VisionMeshError], code: grpc.StatusCode, http: int
) -> None:
    error = cls("boom")
    assert isinstance(error, VisionMeshError)
    assert (error.grpc_code, error.http_status, error.status_name) == (code, http, code.name)
    assert error_class_for_code(code) is cls


@pytest.mark.parametrize(("cls", "code", "http"), EXPECTED)
def test_rpc_status_round_trip_keeps_class_reason_and_metadata(
    cls: type[VisionMeshError], code: grpc.StatusCode, http: int
) -> None:
    error = cls("it broke", reason="GPU_BUSY", metadata={"gpu": "0"})
    status = error.to_rpc_status()
    assert status.code == code.value[0]
    rebuilt = from_rpc_status(status_pb2.Status.FromString(status.SerializeToString()))
    assert type(rebuilt) is cls
    assert (rebuilt.message, rebuilt.reason, rebuilt.metadata) == (
        "it broke",
        "GPU_BUSY",
        {"gpu": "0"},
    )


def test_reason_defaults_to_status_name() -> None:
    assert Aborted("x").reason == "ABORTED"
    info = error_details_pb2.ErrorInfo()
    Aborted("x").to_rpc_status().details[0].Unpack(info)
    assert (info.reason, info.domain) == ("ABORTED", "visionmesh.dev")


def test_invalid_argument_for_field_round_trips_violations() -> None:
    error = InvalidArgument.for_field("spec.epochs", "must be > 0")
    assert error.message == "spec.epochs: must be > 0"
    assert error.field_violations == (FieldViolation("spec.epochs", "must be > 0"),)
    rebuilt = from_rpc_status(error.to_rpc_status())
    assert isinstance(rebuilt, InvalidArgument)
    assert rebuilt.field_violations == error.field_violations


def test_invalid_argument_accepts_plain_tuples() -> None:
    error = InvalidArgument("bad", field_violations=[("a", "x"), FieldViolation("b", "y", "r")])
    assert [v.field for v in error.field_violations] == ["a", "b"]
    assert error.field_violations[1].reason == "r"


def test_not_found_describes_resource() -> None:
    error = NotFound(resource_type="job", resource_id="j-1")
    assert error.message == "job 'j-1' not found"
    rebuilt = from_rpc_status(error.to_rpc_status())
    assert isinstance(rebuilt, NotFound)
    assert (rebuilt.resource_type, rebuilt.resource_id) == ("job", "j-1")
    assert (
        AlreadyExists(resource_type="model", resource_id="m").message == "model 'm' already exists"
    )


def test_to_json_is_the_rest_error_body() -> None:
    body = InvalidArgument.for_field("spec.epochs", "must be > 0").to_json()
    assert json.loads(json.dumps(body)) == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "spec.epochs: must be > 0",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_ARGUMENT",
                "domain": "visionmesh.dev",
            },
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "spec.epochs", "description": "must be > 0"}],
            },
        ],
    }
    not_found = NotFound(resource_type="job", resource_id="j-1").to_json()
    assert not_found["code"] == 404
    assert not_found["details"][1]["resourceName"] == "j-1"


class FakeRpcError:
    """Stands in for AioRpcError: the three methods from_rpc_error reads."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailers


def test_from_rpc_error_without_details_uses_the_code() -> None:
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert isinstance(error, Unavailable)
    assert error.message == "connection refused"
    assert isinstance(from_rpc_error(FakeRpcError(grpc.StatusCode.UNKNOWN, "?")), Internal)
    assert isinstance(from_rpc_error(FakeRpcError(grpc.StatusCode.DATA_LOSS, "?")), Internal)


def test_from_rpc_error_uses_rich_details() -> None:
    status = InvalidArgument.for_field("name", "required").to_rpc_status()
    trailers = ((GRPC_DETAILS_METADATA_KEY, status.SerializeToString()),)
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, status.message, trailers))
    assert isinstance(error, InvalidArgument)
    assert error.field_violations == (FieldViolation("name", "required"),)
    assert any(isinstance(d, error_details_pb2.BadRequest) for d in error.rpc_details)


def test_from_rpc_error_trusts_transport_code_over_mismatched_details() -> None:
    status = NotFound(resource_type="job", resource_id="x").to_rpc_status()
    trailers = ((GRPC_DETAILS_METADATA_KEY, status.SerializeToString()),)
    error = from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "proxy down", trailers))
    assert isinstance(error, Unavailable)
    garbage = ((GRPC_DETAILS_METADATA_KEY, b"\xff\xff\xff"),)
    assert isinstance(from_rpc_error(FakeRpcError(grpc.StatusCode.ABORTED, "x", garbage)), Aborted)


# --- protovalidate ------------------------------------------------------------------------


def _rules(field: descriptor_pb2.FieldDescriptorProto) -> validate_pb2.FieldRules:
    extensions: Any = field.options.Extensions  # typeshed cannot type generated extensions
    rules: validate_pb2.FieldRules = extensions[validate_pb2.field]
    return rules


def _validated_request_class() -> type[Message]:
    """A message with buf.validate rules, built at runtime so the test needs no codegen."""
    pool = descriptor_pool.Default()
    name = "visionmesh_tests/common/validated.proto"
    try:
        pool.FindFileByName(name)
    except KeyError:
        field = descriptor_pb2.FieldDescriptorProto
        proto = descriptor_pb2.FileDescriptorProto(
            name=name,
            package="visionmesh.tests.validated.v1",
            syntax="proto3",
            dependency=["buf/validate/validate.proto"],
        )
        spec = proto.message_type.add(name="Spec")
        epochs = spec.field.add(
            name="epochs", number=1, type=field.TYPE_INT32, label=field.LABEL_OPTIONAL
        )
        _rules(epochs).int32.gt = 0
        request = proto.message_type.add(name="TrainRequest")
        request.field.add(
            name="spec",
            number=1,
            type=field.TYPE_MESSAGE,
            type_name=".visionmesh.tests.validated.v1.Spec",
            label=field.LABEL_OPTIONAL,
        )
        display = request.field.add(
            name="name", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL
        )
        _rules(display).string.min_len = 1
        tags = request.field.add(
            name="tags", number=3, type=field.TYPE_STRING, label=field.LABEL_REPEATED
        )
        _rules(tags).repeated.items.string.min_len = 1
        pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("visionmesh.tests.validated.v1.TrainRequest")
    )


def test_validate_message_names_each_bad_field() -> None:
    request_class = _validated_request_class()
    request: Any = request_class(name="", tags=["ok", ""])
    request.spec.epochs = 0
    with pytest.raises(InvalidArgument) as excinfo:
        validate_message(request)
    violations = {v.field: v for v in excinfo.value.field_violations}
    assert set(violations) == {"spec.epochs", "name", "tags[1]"}
    assert violations["spec.epochs"].reason == "int32.gt"
    assert "greater than 0" in violations["spec.epochs"].description
    assert excinfo.value.message.startswith("invalid TrainRequest: ")
    assert "spec.epochs" in excinfo.value.message


def test_validate_message_accepts_valid_message() -> None:
    request: Any = _validated_request_class()(name="resnet", tags=["a"])
    request.spec.epochs = 3
    validate_message(request)
