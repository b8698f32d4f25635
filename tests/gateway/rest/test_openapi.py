"""The OpenAPI document is generated from the same descriptors as the routes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import descriptor_pb2
from visionmesh.api.gateway.v1 import auth_pb2, datasets_pb2, jobs_pb2, models_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.gateway.api.rest import (
    RestTranscoder,
    build_openapi,
    comments_from_descriptor_set,
    http_routes,
)

ROOT = Path(__file__).resolve().parents[3]
SERVICES = [
    service
    for module in (auth_pb2, datasets_pb2, jobs_pb2, models_pb2, training_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
]
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, verb, operation)
        for path, item in document["paths"].items()
        for verb, operation in item.items()
        if verb in _METHODS
    ]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def check_openapi_structure(document: dict[str, Any]) -> None:
    """What openapi-spec-validator would catch that matters here (it is not a dependency)."""
    assert document["openapi"].startswith("3.1.")
    assert {"title", "version"} <= document["info"].keys()
    assert all(path.startswith("/") for path in document["paths"])
    operation_ids = [op["operationId"] for _, _, op in _operations(document)]
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    for ref in _refs(document):
        _resolve(document, ref)  # every $ref resolves
    for name in document["components"]["schemas"]:
        assert re.fullmatch(r"[a-zA-Z0-9.\-_]+", name), name
    for path, verb, operation in _operations(document):
        assert operation["responses"], (path, verb)
        for code in operation["responses"]:
            assert code == "default" or re.fullmatch(r"[1-5][0-9X]{2}", code)
        parameters = operation.get("parameters", [])
        keys = [(p["name"], p["in"]) for p in parameters]
        assert len(keys) == len(set(keys)), (path, verb)
        templated = re.findall(r"\{([^}]+)\}", path)
        declared = [p["name"] for p in parameters if p["in"] == "path"]
        assert sorted(templated) == sorted(declared), (path, verb)
        assert all(p["required"] for p in parameters if p["in"] == "path")
        for parameter in parameters:
            assert parameter["in"] in ("path", "query", "header", "cookie")
            assert "schema" in parameter
        for scheme in operation.get("security", document.get("security", [])):
            for scheme_name in scheme:
                assert scheme_name in document["components"]["securitySchemes"]


@pytest.fixture
def document(app: RestTranscoder) -> dict[str, Any]:
    return app.openapi_document


async def test_openapi_json_is_served_and_well_formed(
    client: httpx.AsyncClient, app: RestTranscoder
) -> None:
    anonymous = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g")
    async with anonymous:
        response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document == app.openapi_document
    check_openapi_structure(document)


def test_document_validates_with_openapi_spec_validator(document: dict[str, Any]) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


def test_every_annotated_rpc_appears_exactly_once_with_its_verb(authenticator) -> None:
    app = RestTranscoder([(s, _Any()) for s in SERVICES], authenticator=authenticator)
    document = app.openapi_document
    check_openapi_structure(document)
    found: dict[str, tuple[str, str]] = {}
    for path, verb, operation in _operations(document):
        if operation["tags"] == ["Operations"]:
            continue
        assert operation["operationId"] not in found
        found[operation["operationId"]] = (verb.upper(), path)
    expected = {
        r.operation_id: (r.http_method, r.template.openapi_path()) for r in http_routes(SERVICES)
    }
    assert found == expected
    assert found["JobService_CancelJob"] == ("POST", "/v1/jobs/{id}:cancel")
    assert found["DatasetService_FinalizeDataset"] == ("POST", "/v1/datasets/{id}:finalize")
    assert found["JobService_GetArtifactDownloadUrl"] == ("GET", "/v1/artifacts/{id}:download")
    assert found["AuthService_RevokeApiKey"] == ("DELETE", "/v1/apikeys/{id}")


class _Any:
    def __getattr__(self, name: str) -> Any:
        return lambda request, context: None


def test_schemas_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    job = schemas["visionmesh.common.v1.Job"]["properties"]
    assert job["lastEventSequence"] == {"type": "string", "format": "int64"}
    assert job["attempts"] == {"type": "integer", "format": "int32"}
    assert job["kind"] == {"$ref": "#/components/schemas/visionmesh.common.v1.JobKind"}
    assert job["metrics"] == {
        "type": "object",
        "additionalProperties": {"type": "number", "format": "double"},
    }
    assert job["createTime"] == {"type": "string", "format": "date-time"}
    assert job["spec"]["required"] == ["@type"]
    assert schemas["visionmesh.common.v1.JobKind"]["enum"][:2] == [
        "JOB_KIND_UNSPECIFIED",
        "JOB_KIND_TRAINING",
    ]
    dataset = schemas["visionmesh.gateway.v1.Dataset"]["properties"]
    assert dataset["classNames"] == {"type": "array", "items": {"type": "string"}}
    # Oneof members are plain optional properties, documented as such.
    watch = schemas["visionmesh.gateway.v1.WatchJobResponse"]["properties"]
    assert "oneof `event`" in watch["progress"]["description"]
    # Recursive messages end in a $ref instead of recursing forever.
    book = schemas["vmtest.rest.Book"]["properties"]
    assert book["related"] == {"$ref": "#/components/schemas/vmtest.rest.Book"}


def test_operations_document_parameters_bodies_and_errors(document: dict[str, Any]) -> None:
    paths = document["paths"]
    list_jobs = paths["/v1/jobs"]["get"]
    query = {p["name"]: p for p in list_jobs["parameters"]}
    assert set(query) == {"pageSize", "pageToken", "kind", "state"}
    assert query["kind"]["in"] == "query"
    assert query["kind"]["schema"] == {"$ref": "#/components/schemas/visionmesh.common.v1.JobKind"}
    assert list_jobs["responses"]["400"] == {"$ref": "#/components/responses/Error"}
    assert "404" not in list_jobs["responses"]  # no path variables: nothing to be missing

    search = paths["/v1/shelves/{shelf}/search/{path}"]["get"]
    params = {p["name"]: p for p in search["parameters"]}
    assert params["authors"]["schema"]["type"] == "array"
    assert params["authors"]["explode"] is True
    assert params["filter.since"]["schema"] == {"type": "string", "format": "date-time"}

    cancel = paths["/v1/jobs/{id}:cancel"]["post"]
    assert cancel["requestBody"]["content"]["application/json"]["schema"] == {
        "type": "object",
        "properties": {},
    }  # `id` comes from the path, so the body has nothing left
    create = paths["/v1/datasets"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/visionmesh.gateway.v1.CreateDatasetRequest"
    }
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/visionmesh.gateway.v1.CreateDatasetResponse"
    }
    assert create["responses"]["401"] == {"$ref": "#/components/responses/Error"}
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "status", "message", "details"]


def test_streaming_route_is_documented_as_event_stream(document: dict[str, Any]) -> None:
    watch = document["paths"]["/v1/jobs/{id}/events"]["get"]
    content = watch["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    assert content["text/event-stream"]["x-sse-data"] == {
        "$ref": "#/components/schemas/visionmesh.gateway.v1.WatchJobResponse"
    }
    headers = [p["name"] for p in watch["parameters"] if p["in"] == "header"]
    assert headers == ["Last-Event-ID"]


def test_security_is_bearer_and_public_methods_opt_out(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/v1/jobs/{id}/metrics"]["get"]["security"] == []
    assert "401" not in document["paths"]["/v1/jobs/{id}/metrics"]["get"]["responses"]
    assert "security" not in document["paths"]["/v1/jobs/{id}"]["get"]
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_summaries_without_source_info_come_from_method_names(document: dict[str, Any]) -> None:
    assert document["paths"]["/v1/jobs/{id}"]["get"]["summary"] == "Get job"
    assert "description" not in document["paths"]["/v1/jobs/{id}"]["get"]


def test_doc_comments_from_a_descriptor_set_with_source_info(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen_protos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_protos)
    image = gen_protos.build_image(tmp_path / "image.binpb")
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes())

    comments = comments_from_descriptor_set(descriptor_set)
    document = build_openapi(http_routes(SERVICES), comments=comments)

    check_openapi_structure(document)
    get_job = document["paths"]["/v1/jobs/{id}"]["get"]
    assert get_job["summary"] == "Returns one job"
    assert "NOT_FOUND" in get_job["description"]
    assert get_job["parameters"][0]["description"] == "Job id."
    request = document["components"]["schemas"]["visionmesh.gateway.v1.CreateDatasetRequest"]
    assert request["properties"]["name"]["description"] == "Display name, 1-128 characters."
    state = document["components"]["schemas"]["visionmesh.gateway.v1.DatasetState"]
    assert "`DATASET_STATE_READY`: Validated and usable for training." in state["description"]
    assert {"name": "JobService", "description": comments["visionmesh.gateway.v1.JobService"]} in (
        document["tags"]
    )
