"""The one visionmesh error hierarchy, with its gRPC status, HTTP status and rich details."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from protovalidate import ValidationError
    from protovalidate.validator import Violation

__all__ = [
    "ERROR_DOMAIN",
    "GRPC_DETAILS_METADATA_KEY",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "VisionMeshError",
    "error_class_for_code",
    "field_path",
    "from_rpc_error",
    "from_rpc_status",
    "from_validation_error",
    "validate_message",
]

ERROR_DOMAIN = "visionmesh.dev"
"""`google.rpc.ErrorInfo.domain` of every error this platform raises."""

GRPC_DETAILS_METADATA_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request: `field` is a dotted path such as `spec.epochs`."""

    field: str
    description: str
    reason: str = ""
    """Machine-readable cause, e.g. the protovalidate rule id `int32.gt`; may be empty."""


class VisionMeshError(Exception):
    """Base of every domain error; the RPC layer maps subclasses to status codes in one place.

    Raise a subclass, not this class: the base maps to INTERNAL. `reason` is an
    UPPER_SNAKE_CASE identifier for machines (defaults to the status name) and
    `metadata` carries string facts about the failure; both travel in a
    `google.rpc.ErrorInfo` detail.
    """

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self._reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        self.rpc_details: tuple[Message, ...] = ()
        """Every detail received with the status (set by `from_rpc_status`), modelled or not."""

    @property
    def status_name(self) -> str:
        """The canonical status name, e.g. `INVALID_ARGUMENT`."""
        return self.grpc_code.name

    @property
    def reason(self) -> str:
        return self._reason or self.status_name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"

    def _extra_details(self) -> list[Message]:
        """Details beyond ErrorInfo that a subclass contributes."""
        return []

    @classmethod
    def _init_kwargs_from_details(cls, details: Sequence[Message]) -> dict[str, Any]:
        """The inverse of `_extra_details`: constructor kwargs rebuilt from received details."""
        return {}

    def detail_messages(self) -> list[Message]:
        """The google.rpc detail messages describing this error (ErrorInfo first)."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        return [info, *self._extra_details()]

    def to_rpc_status(self) -> status_pb2.Status:
        """The `google.rpc.Status` sent in the `grpc-status-details-bin` trailer."""
        status = status_pb2.Status(code=self.grpc_code.value[0], message=self.message)
        for detail in self.detail_messages():
            status.details.add().Pack(detail)
        return status

    def to_json(self) -> dict[str, Any]:
        """The REST error body: `{"code", "status", "message", "details"}` (details carry @type)."""
        return {
            "code": self.http_status,
            "status": self.status_name,
            "message": self.message,
            "details": [_any_to_json(detail) for detail in self.to_rpc_status().details],
        }


def _any_to_json(detail: any_pb2.Any) -> dict[str, Any]:
    return dict(json_format.MessageToDict(detail, preserving_proto_field_name=False))


class InvalidArgument(VisionMeshError):
    """The request is malformed; `field_violations` name each bad field (BadRequest detail)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        field_violations: Iterable[FieldViolation | tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations: tuple[FieldViolation, ...] = tuple(
            v if isinstance(v, FieldViolation) else FieldViolation(field=v[0], description=v[1])
            for v in field_violations
        )

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str | None = None) -> Self:
        """One bad field: `InvalidArgument.for_field("spec.epochs", "must be > 0")`."""
        violations = [FieldViolation(field=field, description=description)]
        return cls(f"{field}: {description}", field_violations=violations, reason=reason)

    def _extra_details(self) -> list[Message]:
        if not self.field_violations:
            return []
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description, reason=v.reason
                    )
                    for v in self.field_violations
                ]
            )
        ]

    @classmethod
    def _init_kwargs_from_details(cls, details: Sequence[Message]) -> dict[str, Any]:
        violations = [
            FieldViolation(field=v.field, description=v.description, reason=v.reason)
            for d in details
            if isinstance(d, error_details_pb2.BadRequest)
            for v in d.field_violations
        ]
        return {"field_violations": violations}


class _ResourceError(VisionMeshError):
    """An error about one named resource, described by a ResourceInfo detail."""

    _default_message: ClassVar[str] = "{type} {id!r}"

    def __init__(
        self,
        message: str | None = None,
        *,
        resource_type: str = "",
        resource_id: str = "",
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if message is None:
            message = self._default_message.format(type=resource_type or "resource", id=resource_id)
        super().__init__(message, reason=reason, metadata=metadata)
        self.resource_type = resource_type
        self.resource_id = resource_id

    def _extra_details(self) -> list[Message]:
        if not (self.resource_type or self.resource_id):
            return []
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type,
                resource_name=self.resource_id,
                description=self.message,
            )
        ]

    @classmethod
    def _init_kwargs_from_details(cls, details: Sequence[Message]) -> dict[str, Any]:
        for d in details:
            if isinstance(d, error_details_pb2.ResourceInfo):
                return {"resource_type": d.resource_type, "resource_id": d.resource_name}
        return {}


class NotFound(_ResourceError):
    """The resource does not exist, or belongs to another tenant (never PERMISSION_DENIED)."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404
    _default_message = "{type} {id!r} not found"


class AlreadyExists(_ResourceError):
    """A resource with this identity exists already."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    _default_message = "{type} {id!r} already exists"


class PermissionDenied(VisionMeshError):
    """The caller is known but may not do this."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unauthenticated(VisionMeshError):
    """Credentials are missing, malformed, expired or not for this service."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401


class FailedPrecondition(VisionMeshError):
    """The system is not in a state for this operation (e.g. dataset not READY); don't retry.

    `field_violations` name the request fields this deployment cannot honour (e.g.
    `spec.formats` asking for TensorRT without a GPU); they travel as the violations of a
    PreconditionFailure detail, the field as `subject` and the reason as `type`.
    """

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400

    def __init__(
        self,
        message: str,
        *,
        field_violations: Iterable[FieldViolation | tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations: tuple[FieldViolation, ...] = tuple(
            v if isinstance(v, FieldViolation) else FieldViolation(field=v[0], description=v[1])
            for v in field_violations
        )

    @classmethod
    def for_field(cls, field: str, description: str, *, reason: str | None = None) -> Self:
        """One field that cannot be honoured: `FailedPrecondition.for_field("spec.half", ...)`."""
        violations = [FieldViolation(field=field, description=description)]
        return cls(f"{field}: {description}", field_violations=violations, reason=reason)

    def _extra_details(self) -> list[Message]:
        if not self.field_violations:
            return []
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.reason, subject=v.field, description=v.description
                    )
                    for v in self.field_violations
                ]
            )
        ]

    @classmethod
    def _init_kwargs_from_details(cls, details: Sequence[Message]) -> dict[str, Any]:
        violations = [
            FieldViolation(field=v.subject, description=v.description, reason=v.type)
            for d in details
            if isinstance(d, error_details_pb2.PreconditionFailure)
            for v in d.violations
        ]
        return {"field_violations": violations}


class Aborted(VisionMeshError):
    """A concurrency conflict (e.g. stale etag, concurrent job transition); retry the sequence."""

    grpc_code = grpc.StatusCode.ABORTED
    http_status = 409


class OutOfRange(VisionMeshError):
    """Iteration past the valid range (e.g. a page token past the end)."""

    grpc_code = grpc.StatusCode.OUT_OF_RANGE
    http_status = 400


class ResourceExhausted(VisionMeshError):
    """A quota or capacity limit (GPU slots, rate limit) is exhausted."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(VisionMeshError):
    """Transiently unable to serve; clients retry with backoff."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class DeadlineExceeded(VisionMeshError):
    """The deadline expired before the operation completed."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


class Cancelled(VisionMeshError):
    """The caller cancelled the operation."""

    grpc_code = grpc.StatusCode.CANCELLED
    http_status = 499


class Unimplemented(VisionMeshError):
    """The operation is not implemented or not supported by this deployment (e.g. no TensorRT)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class Internal(VisionMeshError):
    """A server bug; on the client side also stands for UNKNOWN and DATA_LOSS."""

    grpc_code = grpc.StatusCode.INTERNAL
    http_status = 500


_CLASS_BY_CODE: Mapping[grpc.StatusCode, type[VisionMeshError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}

_CODE_BY_NUMBER: Mapping[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}

_KNOWN_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


def error_class_for_code(code: grpc.StatusCode) -> type[VisionMeshError]:
    """The exception class for a status code; UNKNOWN, DATA_LOSS (and OK) map to `Internal`."""
    return _CLASS_BY_CODE.get(code, Internal)


def _unpack_details(status: status_pb2.Status) -> list[Message]:
    unpacked: list[Message] = []
    for packed in status.details:
        for detail_type in _KNOWN_DETAIL_TYPES:
            if packed.Is(detail_type.DESCRIPTOR):
                detail = detail_type()
                packed.Unpack(detail)
                unpacked.append(detail)
                break
    return unpacked


def from_rpc_status(status: status_pb2.Status) -> VisionMeshError:
    """Rebuild the matching VisionMeshError from a `google.rpc.Status` (undoes to_rpc_status)."""
    cls = error_class_for_code(_CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN))
    details = _unpack_details(status)
    reason: str | None = None
    metadata: dict[str, str] = {}
    for detail in details:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            reason = detail.reason or None
            metadata = dict(detail.metadata)
            break
    kwargs = cls._init_kwargs_from_details(details)
    error = cls(status.message, reason=reason, metadata=metadata, **kwargs)
    # Details we do not model (RequestInfo, RetryInfo, ...) stay reachable for callers.
    error.rpc_details = tuple(details)
    return error


class _RpcErrorLike(Protocol):
    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...
    def trailing_metadata(self) -> Any: ...


def from_rpc_error(error: _RpcErrorLike) -> VisionMeshError:
    """Turn a failed call (`grpc.aio.AioRpcError` or sync `grpc.RpcError`) into a VisionMeshError.

    Uses the `grpc-status-details-bin` trailer when present (so field violations,
    resource info and reason survive the hop); otherwise code and details alone.
    """
    code = error.code()
    for key, value in error.trailing_metadata() or ():
        if key == GRPC_DETAILS_METADATA_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                break
            # A proxy could rewrite the code; the transport's code is the truth.
            if status.code == code.value[0]:
                return from_rpc_status(status)
            break
    status = status_pb2.Status(code=code.value[0], message=error.details() or "")
    return from_rpc_status(status)


def field_path(violation: Violation) -> str:
    """A protovalidate violation's field as a dotted path: `spec.epochs`, `items[0].name`."""
    parts: list[str] = []
    proto = violation.proto
    for element in proto.field.elements:
        part = element.field_name
        subscript = element.WhichOneof("subscript")
        if subscript == "index":
            part += f"[{element.index}]"
        elif subscript == "bool_key":
            part += f"[{str(element.bool_key).lower()}]"
        elif subscript in ("int_key", "uint_key"):
            part += f"[{getattr(element, subscript)}]"
        elif subscript == "string_key":
            part += f'["{element.string_key}"]'
        parts.append(part)
    return ".".join(parts)


def from_validation_error(
    error: ValidationError, *, message_name: str | None = None
) -> InvalidArgument:
    """Convert a protovalidate ValidationError into InvalidArgument, one violation per field."""
    violations = [
        FieldViolation(
            field=field_path(v),
            description=v.proto.message or v.proto.rule_id,
            reason=v.proto.rule_id,
        )
        for v in error.violations
    ]
    return _invalid(violations, message_name)


def _invalid(violations: list[FieldViolation], message_name: str | None) -> InvalidArgument:
    summary = "; ".join(
        f"{v.field}: {v.description}" if v.field else v.description for v in violations
    )
    prefix = f"invalid {message_name}" if message_name else "invalid request"
    message = f"{prefix}: {summary}" if summary else prefix
    return InvalidArgument(message, field_violations=violations)


def validate_message(message: Message) -> None:
    """Check `message` against its `buf.validate` rules; raise InvalidArgument naming each field.

    Standard rules run as compiled checks (see visionmesh.common.validation); message types
    with rules those do not cover go through protovalidate.
    """
    from visionmesh.common.validation import collect_violations

    violations = collect_violations(message)
    if violations is None:
        protovalidate_message(message)
    elif violations:
        raise _invalid(violations, message.DESCRIPTOR.name)


def protovalidate_message(message: Message) -> None:
    """The reference check: protovalidate itself (slow: it interprets CEL in Python)."""
    # Imported here because protovalidate compiles CEL on import and needs the generated
    # buf.validate module; code that only raises or converts errors should not pay for it.
    import protovalidate

    try:
        protovalidate.validate(message)
    except protovalidate.ValidationError as exc:
        raise from_validation_error(exc, message_name=message.DESCRIPTOR.name) from exc
