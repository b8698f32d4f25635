"""An OpenAPI 3.1 document generated from the annotated service descriptors."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from visionmesh.gateway.api.rest._binding import query_parameters
from visionmesh.gateway.api.rest._routes import HttpRoute, resolve_field_path

__all__ = ["OpenApiInfo", "build_openapi", "comments_from_descriptor_set"]

OPENAPI_VERSION = "3.1.0"
_SCHEMA_PREFIX = "#/components/schemas/"
_ERROR_RESPONSE = {"$ref": "#/components/responses/Error"}


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenApiInfo:
    """The `info` and `servers` of the generated document."""

    title: str = "visionmesh API"
    version: str = "v1"
    description: str = "REST/JSON transcoding of the visionmesh gRPC API (proto3 JSON mapping)."
    servers: tuple[str, ...] = ()


_INT32 = {"type": "integer", "format": "int32"}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    # proto3 JSON writes 64-bit integers as decimal strings (JavaScript loses precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WRAPPED = {
    "DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "FloatValue": FieldDescriptor.TYPE_FLOAT,
    "Int64Value": FieldDescriptor.TYPE_INT64,
    "UInt64Value": FieldDescriptor.TYPE_UINT64,
    "Int32Value": FieldDescriptor.TYPE_INT32,
    "UInt32Value": FieldDescriptor.TYPE_UINT32,
    "BoolValue": FieldDescriptor.TYPE_BOOL,
    "StringValue": FieldDescriptor.TYPE_STRING,
    "BytesValue": FieldDescriptor.TYPE_BYTES,
}


def _well_known(full_name: str) -> dict[str, Any] | None:
    """Schemas of the well-known types, which have their own proto3 JSON forms."""
    if not full_name.startswith("google.protobuf."):
        return None
    name = full_name.removeprefix("google.protobuf.")
    if name in _WRAPPED:
        scalar = _SCALARS[_WRAPPED[name]]
        return {**scalar, "type": [scalar["type"], "null"]}
    fixed: dict[str, dict[str, Any]] = {
        "Timestamp": {"type": "string", "format": "date-time"},
        "Duration": {
            "type": "string",
            "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
            "description": "Seconds with an `s` suffix, e.g. `1.5s`.",
        },
        "FieldMask": {"type": "string", "description": "Comma-separated lowerCamelCase paths."},
        "Struct": {"type": "object", "additionalProperties": True},
        "Value": {},
        "ListValue": {"type": "array", "items": {}},
        "Empty": {"type": "object"},
        "Any": {
            "type": "object",
            "properties": {"@type": {"type": "string", "description": "Type URL."}},
            "required": ["@type"],
            "additionalProperties": True,
        },
    }
    found = fixed.get(name)
    return dict(found) if found is not None else None


def comments_from_descriptor_set(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> dict[str, str]:
    """Leading comments by full name (`pkg.Service.Method`, `pkg.Msg.field`, `pkg.Enum`).

    Generated `_pb2` modules drop source info, so doc comments come from a
    FileDescriptorSet built with `--include_source_info` (e.g. `scripts/gen_protos.py`'s
    `build_image()`), shipped as a file; without one the document has summaries only.
    """
    out: dict[str, str] = {}
    for file in descriptor_set.file:
        _file_comments(file, out)
    return out


def _file_comments(file: descriptor_pb2.FileDescriptorProto, out: dict[str, str]) -> None:
    locations = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}

    def note(name: str, path: tuple[int, ...]) -> None:
        text = _clean_comment(locations.get(path, ""))
        if text:
            out[name] = text

    def enum(proto: descriptor_pb2.EnumDescriptorProto, scope: str, path: tuple[int, ...]) -> None:
        name = _join(scope, proto.name)
        note(name, path)
        for index, value in enumerate(proto.value):
            note(f"{name}.{value.name}", (*path, 2, index))

    def message(proto: descriptor_pb2.DescriptorProto, scope: str, path: tuple[int, ...]) -> None:
        name = _join(scope, proto.name)
        note(name, path)
        for index, item in enumerate(proto.field):
            note(f"{name}.{item.name}", (*path, 2, index))
        for index, nested in enumerate(proto.nested_type):
            message(nested, name, (*path, 3, index))
        for index, nested_enum in enumerate(proto.enum_type):
            enum(nested_enum, name, (*path, 4, index))

    for index, service in enumerate(file.service):
        service_name = _join(file.package, service.name)
        note(service_name, (6, index))
        for m_index, method in enumerate(service.method):
            note(f"{service_name}.{method.name}", (6, index, 2, m_index))
    for index, item in enumerate(file.message_type):
        message(item, file.package, (4, index))
    for index, item_enum in enumerate(file.enum_type):
        enum(item_enum, file.package, (5, index))


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def _clean_comment(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def _summary(method_name: str, comment: str) -> str:
    if comment:
        first = re.split(r"(?<=\.)\s", comment.replace("\n", " "), maxsplit=1)[0]
        return first.rstrip(".")
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*|[a-z0-9]+", method_name)
    return " ".join([words[0], *(w.lower() for w in words[1:])]) if words else method_name


@dataclass
class _Schemas:
    comments: Mapping[str, str]
    components: dict[str, Any] = field(default_factory=dict)

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        special = _well_known(descriptor.full_name)
        if special is not None:
            return special
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages terminate at $ref
            self.components[name] = self._object(descriptor, skip=())
        return {"$ref": _SCHEMA_PREFIX + name}

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.components:
            schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in descriptor.values]}
            values = [
                f"- `{v.name}`: {self.comments[f'{name}.{v.name}']}"
                for v in descriptor.values
                if f"{name}.{v.name}" in self.comments
            ]
            text = "\n".join(filter(None, [self.comments.get(name, ""), *values]))
            if text:
                schema["description"] = text
            self.components[name] = schema
        return {"$ref": _SCHEMA_PREFIX + name}

    def body_object(self, descriptor: Descriptor, skip: Collection[str]) -> dict[str, Any]:
        """An inline object schema of `descriptor` without the `skip` (path-bound) fields."""
        if not skip:
            return self.message(descriptor)
        return self._object(descriptor, skip=skip)

    def _object(self, descriptor: Descriptor, skip: Collection[str]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for item in descriptor.fields:
            if item.name in skip:
                continue
            schema = self.field(item)
            notes = [self.comments.get(item.full_name, "")]
            oneof = item.containing_oneof
            if oneof is not None and not _is_synthetic(oneof):
                members = ", ".join(f"`{f.json_name}`" for f in oneof.fields)
                notes.append(f"Part of oneof `{oneof.name}`: at most one of {members} is set.")
            text = "\n\n".join(filter(None, notes))
            if text:
                schema = {**schema, "description": text}
            properties[item.json_name] = schema
        out: dict[str, Any] = {"type": "object", "properties": properties}
        comment = self.comments.get(descriptor.full_name)
        if comment:
            out["description"] = comment
        return out

    def field(self, item: FieldDescriptor) -> dict[str, Any]:
        if item.message_type is not None and item.message_type.GetOptions().map_entry:
            value = item.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        schema = self.single(item)
        if item.is_repeated:
            return {"type": "array", "items": schema}
        return schema

    def single(self, item: FieldDescriptor) -> dict[str, Any]:
        if item.message_type is not None:
            return self.message(item.message_type)
        if item.enum_type is not None:
            if item.enum_type.full_name == "google.protobuf.NullValue":
                return {"type": "null"}
            return self.enum(item.enum_type)
        return dict(_SCALARS[item.type])


def _is_synthetic(oneof: Any) -> bool:
    """proto3 `optional` fields live in a one-member oneof named `_<field>`."""
    return len(oneof.fields) == 1 and oneof.name == f"_{oneof.fields[0].name}"


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every error: the gRPC status name, its HTTP code and google.rpc details.",
        "properties": {
            "code": {"type": "integer", "format": "int32", "description": "HTTP status code."},
            "status": {"type": "string", "description": "gRPC status name, e.g. NOT_FOUND."},
            "message": {"type": "string"},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"@type": {"type": "string"}},
                    "required": ["@type"],
                    "additionalProperties": True,
                },
                "description": "google.rpc.ErrorInfo, BadRequest (field violations), "
                "ResourceInfo, ...",
            },
        },
        "required": ["code", "status", "message", "details"],
    }


def build_openapi(
    routes: Sequence[HttpRoute],
    *,
    info: OpenApiInfo | None = None,
    public_methods: Collection[str] = (),
    comments: Mapping[str, str] | None = None,
    operational_paths: bool = True,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`: the same descriptors the transcoder serves.

    `public_methods` (full gRPC names) get `security: []`; `comments` (from
    `comments_from_descriptor_set`) become descriptions, otherwise summaries are derived
    from method names. `operational_paths` adds /healthz, /readyz, /metrics.
    """
    info = info or OpenApiInfo()
    notes = comments or {}
    schemas = _Schemas(comments=notes)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, str] = {}
    operation_ids: set[str] = set()
    for route in routes:
        service = route.method.containing_service
        tags.setdefault(service.name, notes.get(service.full_name, ""))
        operation = _operation(route, schemas, notes, public=route.full_method in public_methods)
        operation_id = operation["operationId"]
        suffix = 2
        while operation["operationId"] in operation_ids:
            operation["operationId"] = f"{operation_id}_{suffix}"
            suffix += 1
        operation_ids.add(operation["operationId"])
        paths.setdefault(route.template.openapi_path(), {})[route.http_method.lower()] = operation
    if operational_paths:
        paths.update(_operational_paths())
    schemas.components["Error"] = _error_schema()
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {"title": info.title, "version": info.version, "description": info.description},
        "tags": [{"name": n, **({"description": d} if d else {})} for n, d in tags.items()],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "responses": {
                "Error": {
                    "description": "An error; `status` is the gRPC status name.",
                    "content": {"application/json": {"schema": {"$ref": _SCHEMA_PREFIX + "Error"}}},
                }
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An access token from /v1/auth/login or an API key.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }
    if info.servers:
        document["servers"] = [{"url": url} for url in info.servers]
    return document


def _operation(
    route: HttpRoute, schemas: _Schemas, notes: Mapping[str, str], *, public: bool
) -> dict[str, Any]:
    method = route.method
    comment = notes.get(method.full_name, "")
    request = method.input_type
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "tags": [method.containing_service.name],
        "summary": _summary(method.name, comment),
    }
    if comment:
        operation["description"] = comment
    parameters: list[dict[str, Any]] = []
    for variable in route.template.variables:
        leaf = resolve_field_path(request, variable.field_path)[-1]
        parameters.append(
            _parameter(variable.name, "path", schemas.field(leaf), notes.get(leaf.full_name), True)
        )
    for parameter in query_parameters(route):
        leaf = parameter.fields[-1]
        parameters.append(
            _parameter(
                parameter.json_path, "query", schemas.field(leaf), notes.get(leaf.full_name), False
            )
        )
    if route.server_streaming and "after_sequence" in request.fields_by_name:
        parameters.append(
            _parameter(
                "Last-Event-ID",
                "header",
                {"type": "string"},
                "SSE resume point: overrides `afterSequence` (sent by EventSource on reconnect).",
                False,
            )
        )
    if parameters:
        operation["parameters"] = parameters
    if route.body:
        if route.body == "*":
            top_level_path_fields = {
                v.field_path[0] for v in route.template.variables if len(v.field_path) == 1
            }
            body_schema = schemas.body_object(request, top_level_path_fields)
        else:
            body_schema = schemas.field(request.fields_by_name[route.body])
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": body_schema}},
        }
    output = method.output_type
    if route.response_body:
        response_schema = schemas.field(output.fields_by_name[route.response_body])
    else:
        response_schema = schemas.message(output)
    if route.server_streaming:
        success = {
            "description": "Server-Sent Events: each `event: message` carries one "
            f"`{output.name}` as JSON in `data:` (its `sequence` as `id:` when it has one); "
            "`event: end` closes a finished stream, `event: error` carries an Error; "
            "`:` comment lines are heartbeats.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "x-sse-data": response_schema,
                }
            },
        }
    else:
        success = {
            "description": "OK",
            "content": {"application/json": {"schema": response_schema}},
        }
    success["headers"] = {
        "X-Request-Id": {
            "description": "Echoed or generated request id.",
            "schema": {"type": "string"},
        }
    }
    responses: dict[str, Any] = {"200": success, "400": _ERROR_RESPONSE}
    if not public:
        responses["401"] = _ERROR_RESPONSE
    if route.template.variables:
        responses["404"] = _ERROR_RESPONSE
    responses["default"] = _ERROR_RESPONSE
    operation["responses"] = responses
    if public:
        operation["security"] = []
    return operation


def _parameter(
    name: str, where: str, schema: dict[str, Any], description: str | None, required: bool
) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": where, "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    if schema.get("type") == "array":
        parameter["style"] = "form"
        parameter["explode"] = True
    return parameter


def _operational_paths() -> dict[str, Any]:
    def op(operation_id: str, summary: str, content: dict[str, Any], *extra: str) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
        for code in extra:
            responses[code] = {"description": "Not ready", "content": content}
        return {
            "get": {
                "operationId": operation_id,
                "tags": ["Operations"],
                "summary": summary,
                "security": [],
                "responses": responses,
            }
        }

    status_json = {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "status": {"type": "string"},
                    "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                },
            }
        }
    }
    return {
        "/healthz": op("Operations_Healthz", "Process is alive", status_json),
        "/readyz": op("Operations_Readyz", "Dependencies are ready", status_json, "503"),
        "/metrics": op(
            "Operations_Metrics",
            "Prometheus metrics",
            {"text/plain": {"schema": {"type": "string"}}},
        ),
        "/openapi.json": op(
            "Operations_OpenApi",
            "This document",
            {"application/json": {"schema": {"type": "object"}}},
        ),
    }
