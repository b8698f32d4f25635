"""Builds a request message from path variables, query parameters and a JSON body."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from visionmesh.common.errors import FieldViolation, InvalidArgument
from visionmesh.gateway.api.rest._routes import HttpRoute, resolve_field_path

__all__ = ["RESUME_FIELD", "RequestBinder", "parse_error_to_invalid_argument"]

RESUME_FIELD = "after_sequence"
"""Streaming requests with this integer field resume from an SSE `Last-Event-ID`."""

# Message types that bind from one query/path string, with their proto3 JSON spelling.
_STRING_WKTS = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
# Query-parameter binding follows singular sub-messages this deep (guards recursive types).
_MAX_QUERY_DEPTH = 4

_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})

Parser = Callable[[str], Any]


def _int_parser(low: int, high: int) -> Parser:
    def parse(text: str) -> int:
        if not _INTEGER.fullmatch(text):
            raise ValueError(f"{text!r} is not an integer")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{text} is out of range [{low}, {high}]")
        return value

    return parse


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_bytes(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text!r} is not base64") from None


def _enum_parser(field: FieldDescriptor) -> Parser:
    enum = field.enum_type
    assert enum is not None
    by_name = {v.name: v.number for v in enum.values}
    numbers = frozenset(by_name.values())
    names = ", ".join(by_name)

    def parse(text: str) -> int:
        number = by_name.get(text)
        if number is not None:
            return number
        if _INTEGER.fullmatch(text):
            value = int(text)
            # Open (proto3) enums keep unknown numbers like the binary format does;
            # `enum.defined_only` rules reject them at validation.
            if value in numbers or not enum.is_closed:
                return value
        raise ValueError(f"{text!r} is not a {enum.name} (one of {names})")

    return parse


def _scalar_parser(field: FieldDescriptor) -> Parser:
    kind = field.type
    if kind in _INT_RANGES:
        return _int_parser(*_INT_RANGES[kind])
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _parse_float
    if kind == FieldDescriptor.TYPE_BOOL:
        return _parse_bool
    if kind == FieldDescriptor.TYPE_STRING:
        return str
    if kind == FieldDescriptor.TYPE_BYTES:
        return _parse_bytes
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum_parser(field)
    raise TypeError(f"{field.full_name} is not a scalar field")


def _message_parser(message_type: Descriptor) -> Parser:
    """A string → message parser for the well-known types with a string JSON form."""
    full_name = message_type.full_name
    cls = _message_class(message_type)
    if full_name in _WRAPPERS:
        inner = _scalar_parser(message_type.fields_by_name["value"])

        def parse_wrapper(text: str) -> Message:
            return cls(value=inner(text))

        return parse_wrapper

    def parse_string_wkt(text: str) -> Message:
        message = cls()
        try:
            message.FromJsonString(text)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{text!r} is not a valid {message_type.name}: {exc}") from None
        return message

    return parse_string_wkt


def _message_class(message_type: Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(message_type)


def is_string_bindable(field: FieldDescriptor) -> bool:
    """Whether a field can take its value from one path or query string."""
    if field.message_type is None:
        return True
    if field.message_type.GetOptions().map_entry:
        return False
    return field.message_type.full_name in _STRING_WKTS | _WRAPPERS


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one string value goes: a parser and the field chain to set it on."""

    proto_path: str
    parents: tuple[str, ...]
    field_name: str
    parse: Parser
    repeated: bool
    is_message: bool

    def assign(self, request: Message, text: str) -> None:
        try:
            value = self.parse(text)
        except ValueError as exc:
            raise InvalidArgument.for_field(self.proto_path, str(exc)) from None
        target = request
        for name in self.parents:
            target = getattr(target, name)
        if self.repeated:
            container = getattr(target, self.field_name)
            if self.is_message:
                container.add().CopyFrom(value)
            else:
                container.append(value)
        elif self.is_message:
            getattr(target, self.field_name).CopyFrom(value)
        else:
            setattr(target, self.field_name, value)


def _target(fields: Sequence[FieldDescriptor]) -> _Target:
    leaf = fields[-1]
    message_type = leaf.message_type
    is_message = message_type is not None
    return _Target(
        proto_path=".".join(f.name for f in fields),
        parents=tuple(f.name for f in fields[:-1]),
        field_name=leaf.name,
        parse=_message_parser(message_type) if message_type is not None else _scalar_parser(leaf),
        repeated=leaf.is_repeated,
        is_message=is_message,
    )


@dataclass(frozen=True, slots=True)
class QueryParameter:
    """A request field bindable from the query string (also used for OpenAPI)."""

    json_path: str
    proto_path: str
    fields: tuple[FieldDescriptor, ...]


def query_parameters(route: HttpRoute) -> list[QueryParameter]:
    """Fields of the request not bound by the path or the body, reachable by dotted names."""
    if route.body == "*":
        return []
    path_bound = {v.field_path for v in route.template.variables}
    excluded_top = {route.body} if route.body else set()
    out: list[QueryParameter] = []

    def walk(
        message: Descriptor, prefix: tuple[FieldDescriptor, ...], seen: frozenset[str]
    ) -> None:
        for field in message.fields:
            chain = (*prefix, field)
            names = tuple(f.name for f in chain)
            if names in path_bound or (len(chain) == 1 and field.name in excluded_top):
                continue
            if is_string_bindable(field):
                out.append(
                    QueryParameter(
                        json_path=".".join(f.json_name for f in chain),
                        proto_path=".".join(names),
                        fields=chain,
                    )
                )
            elif (
                field.message_type is not None
                and not field.is_repeated
                and field.message_type.full_name not in seen
                and len(chain) < _MAX_QUERY_DEPTH
            ):
                walk(field.message_type, chain, seen | {field.message_type.full_name})

    walk(route.method.input_type, (), frozenset({route.method.input_type.full_name}))
    return out


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidArgument.for_field(key, "duplicate key in JSON body")
            seen.add(key)
    return result


class RequestBinder:
    """Precompiled request building for one route: everything per-request is a lookup."""

    __slots__ = (
        "_body",
        "_body_field",
        "_descriptor",
        "_path_targets",
        "_query_targets",
        "_resume_target",
        "message_class",
    )

    def __init__(self, route: HttpRoute) -> None:
        request = route.method.input_type
        self._descriptor = request
        self.message_class: type[Message] = _message_class(request)
        self._body = route.body
        self._body_field = (
            request.fields_by_name[route.body] if route.body not in ("", "*") else None
        )
        self._path_targets = tuple(
            (_target(resolve_field_path(request, v.field_path)), v.multi_segment)
            for v in route.template.variables
        )
        targets: dict[str, _Target] = {}
        for parameter in query_parameters(route):
            target = _target(parameter.fields)
            # Both spellings, like grpc-gateway: `pageSize` (proto3 JSON) and `page_size`.
            targets[parameter.json_path] = target
            targets[parameter.proto_path] = target
        self._query_targets = targets
        resume = request.fields_by_name.get(RESUME_FIELD)
        self._resume_target = (
            _target((resume,))
            if route.server_streaming
            and resume is not None
            and not resume.is_repeated
            and resume.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
            else None
        )

    @property
    def resumable(self) -> bool:
        return self._resume_target is not None

    def bind(
        self,
        path_values: Sequence[str],
        query_string: bytes,
        body: bytes,
        last_event_id: str | None = None,
    ) -> Message:
        request = self.message_class()
        if self._body and body.strip():
            self._bind_body(request, body)
        if query_string:
            self._bind_query(request, query_string)
        # Path values win over the same fields in the body (google.api.http semantics).
        for (target, multi_segment), raw in zip(self._path_targets, path_values, strict=True):
            try:
                value = _decode_path_value(raw, multi_segment)
            except UnicodeDecodeError:
                raise InvalidArgument.for_field(target.proto_path, "not valid UTF-8") from None
            target.assign(request, value)
        if last_event_id is not None and self._resume_target is not None:
            self._resume_target.assign(request, last_event_id.strip())
        return request

    def _bind_body(self, request: Message, body: bytes) -> None:
        try:
            data = json.loads(body, object_pairs_hook=_reject_duplicate_keys)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"request body is not valid JSON: {exc}", reason="MALFORMED_JSON"
            ) from None
        if self._body_field is not None:
            data = {self._body_field.name: data}
        elif not isinstance(data, dict):
            raise InvalidArgument(
                "request body must be a JSON object", reason="MALFORMED_JSON"
            ) from None
        try:
            json_format.ParseDict(data, request, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            raise parse_error_to_invalid_argument(exc, self._descriptor) from None

    def _bind_query(self, request: Message, query_string: bytes) -> None:
        targets = self._query_targets
        unknown: list[str] = []
        seen: set[int] = set()
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            target = targets.get(name)
            if target is None:
                unknown.append(name)
                continue
            if not target.repeated:
                if id(target) in seen:
                    raise InvalidArgument.for_field(
                        target.proto_path, "given more than once but is not repeated"
                    )
                seen.add(id(target))
            target.assign(request, value)
        if unknown:
            raise InvalidArgument(
                f"unknown query parameter(s): {', '.join(unknown)}",
                field_violations=[
                    FieldViolation(field=n, description="unknown query parameter", reason="UNKNOWN")
                    for n in unknown
                ],
                reason="UNKNOWN_QUERY_PARAMETER",
            )


def _decode_path_value(raw: str, multi_segment: bool) -> str:
    if "%" not in raw:
        return raw
    if multi_segment:
        # A multi-segment value keeps `%2F` escaped so `/` inside one segment stays distinct.
        raw = re.sub("%2[Ff]", "%252F", raw)
    return unquote(raw, errors="strict")


_UNKNOWN_FIELD = re.compile(r'has no field named "(?P<name>[^"]*)" at "(?P<at>[^"]*)"')
_FAILED_FIELD = re.compile(r"Failed to parse (\S+) field: ")
# json_format passes Python's own conversion errors through; say the same in API terms.
_FRIENDLIER = (
    (re.compile(r"invalid literal for int\(\) with base 10: (.*)"), r"\1 is not an integer"),
    (
        re.compile(r"expected string or bytes-like object, got '(\w+)'"),
        r"expected a string, got \1",
    ),
)
_AT_PATH = re.compile(r' at "?(?P<at>[A-Za-z_][^" ]*?)"?\.*$')


def parse_error_to_invalid_argument(
    error: json_format.ParseError, descriptor: Descriptor
) -> InvalidArgument:
    """A json_format ParseError as InvalidArgument naming the field (proto names, dotted)."""
    text = str(error).split("\n", 1)[0]
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        parent = _path_after_root(unknown["at"])
        path = _proto_path(descriptor, [*parent, unknown["name"]])
        return InvalidArgument(
            f"unknown field {path!r} in request body",
            field_violations=[
                FieldViolation(field=path, description="unknown field", reason="UNKNOWN_FIELD")
            ],
            reason="UNKNOWN_FIELD",
        )
    chain = _FAILED_FIELD.findall(text)
    description = _FAILED_FIELD.sub("", text).rstrip(".") or "invalid value"
    at = _AT_PATH.search(description)
    if at:
        description = description[: at.start()]
        components = _path_after_root(at["at"])
        if len(components) >= len(chain):
            chain = components
    for pattern, replacement in _FRIENDLIER:
        description = pattern.sub(replacement, description)
    if not chain:
        return InvalidArgument(f"invalid request body: {description}", reason="MALFORMED_JSON")
    path = _proto_path(descriptor, chain)
    return InvalidArgument.for_field(path, description)


def _path_after_root(at: str) -> list[str]:
    """`CreateTrainingJobRequest.spec.augment[a]` → `["spec", "augment[a]"]`."""
    parts = at.split(".")
    return parts[1:] if len(parts) > 1 else []


def _proto_path(descriptor: Descriptor, components: Sequence[str]) -> str:
    """Rewrite JSON names (`dataLoading`) into proto names (`data_loading`) where known."""
    out: list[str] = []
    current: Descriptor | None = descriptor
    for component in components:
        name, bracket, rest = component.partition("[")
        field = None
        if current is not None:
            field = current.fields_by_name.get(name) or next(
                (f for f in current.fields if f.json_name == name), None
            )
        out.append((field.name if field is not None else name) + bracket + rest)
        if field is None or field.message_type is None:
            current = None
        elif field.message_type.GetOptions().map_entry:
            current = field.message_type.fields_by_name["value"].message_type if bracket else None
        else:
            current = field.message_type
    return ".".join(out)
