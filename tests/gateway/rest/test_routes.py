"""Routes come only from google.api.http annotations; no two may collide."""

from __future__ import annotations

import itertools
import re

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from hypothesis import given
from hypothesis import strategies as st
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.gateway.v1 import auth_pb2, datasets_pb2, jobs_pb2, models_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.gateway.api.rest import (
    PathTemplateError,
    RouteConflictError,
    http_routes,
    parse_template,
)

ALL_SERVICES: list[ServiceDescriptor] = [
    service
    for module in (
        auth_pb2,
        datasets_pb2,
        jobs_pb2,
        models_pb2,
        training_pb2,
        export_pb2,
        inference_pb2,
    )
    for service in module.DESCRIPTOR.services_by_name.values()
]


def test_every_annotated_rpc_becomes_exactly_one_route() -> None:
    routes = http_routes(ALL_SERVICES)
    annotated = [
        m.full_name
        for s in ALL_SERVICES
        for m in s.methods
        if m.GetOptions().ListFields()  # every public RPC carries google.api.http
    ]
    assert sorted(r.method.full_name for r in routes) == sorted(annotated)
    by_name = {r.method.full_name: r for r in routes}
    assert by_name["visionmesh.gateway.v1.JobService.CancelJob"].http_method == "POST"
    assert by_name["visionmesh.gateway.v1.JobService.CancelJob"].template.verb == "cancel"
    assert by_name["visionmesh.gateway.v1.JobService.WatchJob"].server_streaming
    assert by_name["visionmesh.gateway.v1.AuthService.RevokeApiKey"].http_method == "DELETE"


def _sample_path(template_text: str, value: str) -> str:
    return re.sub(r"\{[^}]*\}", value, template_text)


def test_real_routes_never_collide_and_each_sample_path_reaches_only_its_route(
    authenticator,
) -> None:
    from visionmesh.gateway.api.rest import RestTranscoder

    routes = http_routes(ALL_SERVICES)
    keys = [(r.http_method, r.template.canonical()) for r in routes]
    assert len(keys) == len(set(keys))

    app = RestTranscoder([(s, _AnyServicer()) for s in ALL_SERVICES], authenticator=authenticator)
    for route in routes:
        endpoint, values = app._match(route.http_method, _sample_path(route.template.text, "x1"))
        assert endpoint is not None, route.template.text
        assert endpoint.route == route, (route.template.text, endpoint.route.template.text)
        assert values == ("x1",) * len(route.template.variables)


@pytest.mark.parametrize(
    "http_method, path, rpc, values",
    [
        ("GET", "/v1/exports/e-1", "ModelService.GetExport", ("e-1",)),
        ("GET", "/v1/exports/e-1:download", "ModelService.GetExportDownloadUrl", ("e-1",)),
        ("POST", "/v1/export/jobs", "JobService.CreateExportJob", ()),
        ("GET", "/v1/export/capabilities", "ExportService.GetCapabilities", ()),
    ],
)
def test_export_routes_reach_their_own_rpc(
    authenticator, http_method: str, path: str, rpc: str, values: tuple[str, ...]
) -> None:
    from visionmesh.gateway.api.rest import RestTranscoder

    app = RestTranscoder([(s, _AnyServicer()) for s in ALL_SERVICES], authenticator=authenticator)
    endpoint, matched = app._match(http_method, path)
    assert endpoint is not None
    assert endpoint.route.method.full_name.split(".", 3)[-1] == rpc
    assert matched == values


@pytest.mark.parametrize(
    "http_method, path, rpc, values",
    [
        ("POST", "/v1/deployments", "InferenceService.LoadModel", ()),
        ("GET", "/v1/deployments", "InferenceService.ListDeployments", ()),
        ("GET", "/v1/deployments/dets", "InferenceService.GetDeployment", ("dets",)),
        ("DELETE", "/v1/deployments/dets", "InferenceService.UnloadModel", ("dets",)),
        ("POST", "/v1/deployments/dets:predict", "InferenceService.Predict", ("dets",)),
        (
            "POST",
            "/v1/batch-inference/spec:validate",
            "InferenceService.ValidateBatchSpec",
            (),
        ),
        ("POST", "/v1/batch-inference/uploads", "JobService.CreateBatchInputUpload", ()),
        ("POST", "/v1/batch-inference/jobs", "JobService.CreateBatchInferenceJob", ()),
        (
            "GET",
            "/v1/batch-inference/jobs/j-1/results",
            "JobService.ListBatchInferenceResults",
            ("j-1",),
        ),
        # A batch job's status is the plain job route's: one GET per path, never shadowed.
        ("GET", "/v1/jobs/j-1", "JobService.GetJob", ("j-1",)),
        ("GET", "/v1/jobs/j-1/events", "JobService.WatchJob", ("j-1",)),
        ("GET", "/v1/jobs/j-1/artifacts", "JobService.ListJobArtifacts", ("j-1",)),
        ("POST", "/v1/jobs/j-1:cancel", "JobService.CancelJob", ("j-1",)),
    ],
)
def test_inference_and_batch_routes_reach_their_own_rpc(
    authenticator, http_method: str, path: str, rpc: str, values: tuple[str, ...]
) -> None:
    from visionmesh.gateway.api.rest import RestTranscoder

    app = RestTranscoder([(s, _AnyServicer()) for s in ALL_SERVICES], authenticator=authenticator)
    endpoint, matched = app._match(http_method, path)
    assert endpoint is not None
    assert endpoint.route.method.full_name.split(".", 3)[-1] == rpc
    assert matched == values


def test_no_path_has_two_routes_of_one_verb_and_no_prefix_is_doubled() -> None:
    routes = http_routes(ALL_SERVICES)
    texts = [(r.http_method, r.template.text) for r in routes]
    assert len(texts) == len(set(texts))
    for _, text in texts:
        segments = [s for s in text.split("/") if s]
        assert segments[0] == "v1" and "v1" not in segments[1:], text
        assert all(a != b for a, b in itertools.pairwise(segments)), text
    gets = {text for method, text in texts if method == "GET"}
    assert "/v1/jobs/{id}" in gets and "/v1/batch-inference/jobs/{id}/results" in gets
    assert "/v1/batch-inference/jobs/{id}" not in gets  # the job itself is GetJob's


class _AnyServicer:
    def __getattr__(self, name: str):
        async def handler(request, context):
            raise NotImplementedError

        return handler


def _service(name: str, methods: str) -> ServiceDescriptor:
    from google.protobuf import descriptor_pb2, text_format

    proto = descriptor_pb2.FileDescriptorProto()
    text_format.Parse(
        f"""
        name: "visionmesh_test/rest/{name}.proto"
        package: "visionmesh.test.{name}"
        dependency: "google/api/annotations.proto"
        syntax: "proto3"
        message_type {{
          name: "Req"
          field {{ name: "id" number: 1 type: TYPE_STRING }}
          field {{ name: "tags" number: 2 type: TYPE_STRING label: LABEL_REPEATED }}
        }}
        service {{ name: "S" {methods} }}
        """,
        proto,
    )
    pool = descriptor_pool.Default()
    try:
        file = pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
        file = pool.FindFileByName(proto.name)
    return file.services_by_name["S"]


def _method(name: str, rule: str) -> str:
    request = ".visionmesh.test.{pkg}.Req"
    return (
        f'method {{ name: "{name}" input_type: "{request}" output_type: "{request}" '
        f"options {{ [google.api.http] {{ {rule} }} }} }}"
    )


def _conflicting(pkg: str, *rules: tuple[str, str]) -> ServiceDescriptor:
    methods = " ".join(_method(n, r).replace("{pkg}", pkg) for n, r in rules)
    return _service(pkg, methods)


def test_two_rpcs_on_the_same_route_are_rejected() -> None:
    service = _conflicting(
        "conflict", ("A", 'get: "/v1/things/{id}"'), ("B", 'get: "/v1/things/{id=*}"')
    )
    with pytest.raises(RouteConflictError, match="collides"):
        http_routes([service])


def test_same_path_different_verbs_or_custom_verbs_do_not_collide() -> None:
    service = _conflicting(
        "noconflict",
        ("A", 'get: "/v1/things/{id}"'),
        ("B", 'delete: "/v1/things/{id}"'),
        ("C", 'post: "/v1/things/{id}:archive" body: "*"'),
    )
    assert len(http_routes([service])) == 3


@pytest.mark.parametrize(
    ("pkg", "rule", "message"),
    [
        ("badfield", 'get: "/v1/things/{nope}"', "no field"),
        ("badrepeated", 'get: "/v1/things/{tags}"', "singular scalar"),
        ("badbody", 'post: "/v1/things" body: "nope"', "body field"),
        ("badtemplate", 'get: "v1/things"', "must start"),
    ],
)
def test_invalid_annotations_fail_at_startup(pkg: str, rule: str, message: str) -> None:
    with pytest.raises(RouteConflictError, match=message):
        http_routes([_conflicting(pkg, ("A", rule))])


@pytest.mark.parametrize(
    "text",
    ["/v1/{id", "/v1/{a.}", "/v1/{id}/{id}", "/v1/**/x", "/v1/x:", "/v1/{a={b}}", "/v1/a b"],
)
def test_malformed_templates_are_rejected(text: str) -> None:
    with pytest.raises(PathTemplateError):
        parse_template(text)


def test_template_shapes() -> None:
    template = parse_template("/v1/{parent=projects/*}/items/{item.id}:move")
    assert template.verb == "move"
    assert [v.name for v in template.variables] == ["parent", "item.id"]
    assert template.canonical() == "/v1/projects/*/items/*:move"
    assert template.openapi_path() == "/v1/{parent}/items/{item.id}:move"
    rx = re.compile(template.regex("r"))
    found = rx.fullmatch("/v1/projects/p1/items/i:9:move")
    assert found is not None
    assert found.group("r_0", "r_1") == ("projects/p1", "i:9")
    assert rx.fullmatch("/v1/projects/p1/x/items/i9:move") is None


_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
)


@given(value=_segment)
async def test_any_path_value_round_trips_through_percent_encoding(value: str) -> None:
    from urllib.parse import quote

    from visionmesh.gateway.api.rest._binding import RequestBinder

    route = next(r for r in http_routes(ALL_SERVICES) if r.method.name == "GetJob")
    binder = RequestBinder(route)
    rx = re.compile(route.template.regex("r"))
    found = rx.fullmatch("/v1/jobs/" + quote(value, safe=""))
    assert found is not None
    request = binder.bind([found.group("r_0")], b"", b"")
    assert request.id == value  # type: ignore[attr-defined]
