"""HTTP routes read from the `google.api.http` annotations of service descriptors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from visionmesh.gateway.api.rest._template import PathTemplate, PathTemplateError, parse_template

__all__ = ["HttpRoute", "RouteConflictError", "http_routes", "resolve_field_path"]


class RouteConflictError(ValueError):
    """Two annotated RPCs claim the same HTTP method and path, or an annotation is invalid."""


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One (HTTP method, path template) → RPC binding taken from a `google.api.http` rule."""

    http_method: str
    """Upper case: GET, POST, PUT, PATCH, DELETE, or a custom rule's kind."""
    template: PathTemplate
    body: str
    """`""` (no body), `"*"` (every field not bound by the path) or one top-level field name."""
    response_body: str
    """`""` for the whole response message, else the response field sent as the body."""
    method: MethodDescriptor

    @property
    def full_method(self) -> str:
        """`/visionmesh.gateway.v1.JobService/GetJob`, the gRPC method name auth uses."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        return f"{self.method.containing_service.name}_{self.method.name}"


def http_routes(services: Iterable[ServiceDescriptor]) -> list[HttpRoute]:
    """Every annotated method of `services` (incl. additional_bindings); unannotated are skipped.

    Raises RouteConflictError when an annotation is malformed (bad template, unknown
    field, client streaming) or when two bindings share a method and path pattern.
    """
    routes: list[HttpRoute] = []
    claimed: dict[tuple[str, str], HttpRoute] = {}
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
            for binding in (rule, *rule.additional_bindings):
                route = _route(method, binding)
                key = (route.http_method, route.template.canonical())
                other = claimed.get(key)
                if other is not None:
                    raise RouteConflictError(
                        f"{route.http_method} {route.template.text} of {route.full_method} "
                        f"collides with {other.template.text} of {other.full_method}"
                    )
                claimed[key] = route
                routes.append(route)
    return routes


def _route(method: MethodDescriptor, rule: http_pb2.HttpRule) -> HttpRoute:
    where = f"google.api.http of {method.full_name}"
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise RouteConflictError(f"{where}: no HTTP method/path")
    if pattern == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    if method.client_streaming:
        raise RouteConflictError(f"{where}: client-streaming RPCs cannot be transcoded")
    try:
        template = parse_template(path)
    except PathTemplateError as exc:
        raise RouteConflictError(f"{where}: {exc}") from None
    request = method.input_type
    for variable in template.variables:
        try:
            leaf = resolve_field_path(request, variable.field_path)[-1]
        except KeyError as exc:
            raise RouteConflictError(f"{where}: {exc.args[0]}") from None
        if leaf.is_repeated or leaf.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            raise RouteConflictError(
                f"{where}: path variable {variable.name!r} must be a singular scalar field"
            )
    if rule.body not in ("", "*") and rule.body not in request.fields_by_name:
        raise RouteConflictError(f"{where}: body field {rule.body!r} not in {request.full_name}")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise RouteConflictError(f"{where}: response_body {rule.response_body!r} is not a field")
    return HttpRoute(
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        method=method,
    )


def resolve_field_path(message: Descriptor, path: tuple[str, ...]) -> tuple[FieldDescriptor, ...]:
    """The field descriptors along `("dataset", "id")`; KeyError names a missing step."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in path:
        field = current.fields_by_name.get(name) if current is not None else None
        if field is None:
            raise KeyError(f"no field {'.'.join(path)!r} in {message.full_name}")
        if fields and (fields[-1].is_repeated or fields[-1].message_type is None):
            raise KeyError(f"{'.'.join(path)!r} crosses a repeated or scalar field")
        fields.append(field)
        current = field.message_type
    return tuple(fields)
