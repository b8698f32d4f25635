"""Every public RPC has a sound google.api.http rule, and no two rules collide."""

from __future__ import annotations

import functools
import importlib
import itertools
import pkgutil
from dataclasses import dataclass

import pytest
import visionmesh.api
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor

# Services whose RPCs must be present, so an import problem cannot make the checks vacuous.
EXPECTED_SERVICES = {
    "visionmesh.gateway.v1.AuthService",
    "visionmesh.gateway.v1.DatasetService",
    "visionmesh.gateway.v1.JobService",
    "visionmesh.gateway.v1.ModelService",
    "visionmesh.training.v1.TrainingService",
    "visionmesh.export.v1.ExportService",
    "visionmesh.inference.v1.InferenceService",
    "visionmesh.embedding.v1.EmbeddingService",
}


@dataclass(frozen=True)
class Route:
    """One HTTP binding of an RPC (its main rule or one of its additional_bindings)."""

    rpc: str
    method: descriptor.MethodDescriptor
    verb: str
    path: str
    body: str
    response_body: str


def _methods() -> list[descriptor.MethodDescriptor]:
    methods = []
    for info in pkgutil.walk_packages(visionmesh.api.__path__, "visionmesh.api."):
        if not info.name.endswith("_pb2"):
            continue
        file = importlib.import_module(info.name).DESCRIPTOR
        for service in file.services_by_name.values():
            if service.full_name.startswith("visionmesh."):
                methods.extend(service.methods)
    return methods


def _http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    return options.Extensions[annotations_pb2.http]


def _routes_of(method: descriptor.MethodDescriptor, rule: http_pb2.HttpRule) -> list[Route]:
    routes = []
    for binding in [rule, *rule.additional_bindings]:
        kind = binding.WhichOneof("pattern")
        if kind == "custom":
            verb, path = binding.custom.kind.lower(), binding.custom.path
        else:
            verb, path = kind, getattr(binding, kind)
        routes.append(
            Route(method.full_name, method, verb, path, binding.body, binding.response_body)
        )
    return routes


METHODS = _methods()
ROUTES = [
    route
    for method in METHODS
    if (rule := _http_rule(method)) is not None
    for route in _routes_of(method, rule)
]


def _ids(route: Route) -> str:
    return f"{route.rpc} {route.verb.upper()} {route.path}"


# --- path templates (google/api/http.proto grammar) --------------------------------------


@dataclass(frozen=True)
class Template:
    """A parsed path template: normalised segments, variable field paths, custom verb."""

    segments: tuple[str, ...]
    variables: tuple[str, ...]
    custom_verb: str


ONE, MANY = "{}", "{**}"


def _split_top(text: str, sep: str) -> list[str]:
    """Splits on sep outside braces."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_template(path: str) -> Template:
    """Parses "/v1/a/{id}/b/{name=x/*}:verb"; `*` and `{v}` become {}, `**` {**}."""
    assert path.startswith("/"), f"template must start with '/': {path!r}"
    raw = _split_top(path[1:], "/")
    last = _split_top(raw[-1], ":")
    assert len(last) <= 2, f"more than one ':' in the last segment: {path!r}"
    raw[-1], custom_verb = last[0], (last[1] if len(last) == 2 else "")
    segments: list[str] = []
    variables: list[str] = []
    for segment in raw:
        assert segment, f"empty segment in {path!r}"
        if segment.startswith("{"):
            assert segment.endswith("}"), f"unbalanced braces in {path!r}"
            field, _, pattern = segment[1:-1].partition("=")
            variables.append(field)
            inner = pattern.split("/") if pattern else ["*"]
        else:
            inner = [segment]
        segments += [ONE if s == "*" else MANY if s == "**" else s for s in inner]
    return Template(tuple(segments), tuple(variables), custom_verb)


@functools.cache
def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether some URL path matches both normalised segment lists ({**}: any number)."""
    if not a or not b:
        return all(s == MANY for s in a or b)
    x, y = a[0], b[0]
    if x == MANY:
        return _overlap(a[1:], b) or _overlap(a, b[1:])
    if y == MANY:
        return _overlap(a, b[1:]) or _overlap(a[1:], b)
    return (x == y or ONE in (x, y)) and _overlap(a[1:], b[1:])


def _repeated_literal(template: Template) -> str | None:
    """A literal segment directly followed by itself (/v1/x/x/...), if any."""
    for first, second in itertools.pairwise(template.segments):
        if first == second and first not in (ONE, MANY):
            return first
    return None


# --- the checkers work ------------------------------------------------------------------


def test_template_normalisation() -> None:
    assert parse_template("/v1/a/{id}").segments == parse_template("/v1/a/{name=*}").segments
    assert parse_template("/v1/a/*").segments == ("v1", "a", ONE)
    assert parse_template("/v1/{x=**}").segments == parse_template("/v1/**").segments
    nested = parse_template("/v1/{name=datasets/*/snapshots/*}:pin")
    assert nested == Template(("v1", "datasets", ONE, "snapshots", ONE), ("name",), "pin")
    assert parse_template("/v1/training/spec:validate").custom_verb == "validate"


def test_overlap_detection() -> None:
    def seg(path: str) -> tuple[str, ...]:
        return parse_template(path).segments

    assert _overlap(seg("/v1/jobs/{id}"), seg("/v1/jobs/{name}"))
    assert _overlap(seg("/v1/jobs/{id}"), seg("/v1/jobs/summary"))
    assert _overlap(seg("/v1/{x=**}"), seg("/v1/jobs/{id}/events"))
    assert not _overlap(seg("/v1/jobs/{id}"), seg("/v1/jobs/{id}/events"))
    assert not _overlap(seg("/v1/jobs/{id}"), seg("/v1/models/{id}"))


def test_repeated_prefix_detection() -> None:
    assert _repeated_literal(parse_template("/v1/x/x/{id}")) == "x"
    assert _repeated_literal(parse_template("/v1/{a}/{b}")) is None
    assert _repeated_literal(parse_template("/v1/datasets/{id}/snapshots")) is None


# --- the contracts ------------------------------------------------------------------------


def test_services_found() -> None:
    found = {method.containing_service.full_name for method in METHODS}
    assert found >= EXPECTED_SERVICES, EXPECTED_SERVICES - found


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_every_rpc_has_a_v1_rule(method: descriptor.MethodDescriptor) -> None:
    rule = _http_rule(method)
    assert rule is not None, f"{method.full_name} has no google.api.http rule"
    for route in _routes_of(method, rule):
        assert route.verb in {"get", "post", "put", "patch", "delete"}, route
        assert route.path.startswith("/v1/"), f"{_ids(route)}: not under /v1/"


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_route_repeats_no_segment(route: Route) -> None:
    repeated = _repeated_literal(parse_template(route.path))
    assert repeated is None, f"{_ids(route)}: repeats /{repeated}/"
    assert parse_template(route.path).segments.count(MANY) <= 1, f"{_ids(route)}: two '**'"


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_path_variables_are_request_fields(route: Route) -> None:
    template = parse_template(route.path)
    assert len(set(template.variables)) == len(template.variables), f"{_ids(route)}: duplicate"
    for variable in template.variables:
        message = route.method.input_type
        *parents, leaf = variable.split(".")
        for name in parents:
            field = message.fields_by_name.get(name)
            assert field is not None, f"{_ids(route)}: {message.name} has no field {name!r}"
            assert field.message_type is not None and not field.is_repeated, (
                f"{_ids(route)}: {variable!r} goes through {name!r}, not a singular message"
            )
            message = field.message_type
        field = message.fields_by_name.get(leaf)
        assert field is not None, f"{_ids(route)}: {message.name} has no field {leaf!r}"
        assert field.message_type is None and not field.is_repeated, (
            f"{_ids(route)}: {variable!r} must be a singular scalar field"
        )


@pytest.mark.parametrize("route", ROUTES, ids=_ids)
def test_bodies(route: Route) -> None:
    if route.verb in {"get", "delete"}:
        assert not route.body, f"{_ids(route)}: {route.verb.upper()} with a body"
    if route.body == "*":
        assert route.verb != "get", f"{_ids(route)}: GET with body '*'"
    for name, message in (
        (route.body, route.method.input_type),
        (route.response_body, route.method.output_type),
    ):
        if name and name != "*":
            assert name in message.fields_by_name, f"{_ids(route)}: no field {name!r}"


def test_no_two_rules_are_equivalent() -> None:
    seen: dict[tuple[str, tuple[str, ...], str], Route] = {}
    for route in ROUTES:
        template = parse_template(route.path)
        key = (route.verb, template.segments, template.custom_verb)
        assert key not in seen, f"{_ids(route)} and {_ids(seen[key])} are the same route"
        seen[key] = route


def test_no_two_rules_overlap() -> None:
    # Stricter than equivalence: GET /v1/jobs/{id} and GET /v1/jobs/summary could both
    # match /v1/jobs/summary, and which one wins would depend on the router.
    for a, b in itertools.combinations(ROUTES, 2):
        ta, tb = parse_template(a.path), parse_template(b.path)
        if a.verb == b.verb and ta.custom_verb == tb.custom_verb:
            assert not _overlap(ta.segments, tb.segments), f"{_ids(a)} and {_ids(b)} overlap"
