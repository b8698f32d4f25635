"""REST → servicer transcoding: binding, auth, validation, errors, request ids."""

from __future__ import annotations

import httpx
import pytest
import structlog
from visionmesh.gateway.api.rest import RestTranscoder


async def test_path_variable_binds_request_field_and_response_uses_proto3_json(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/jobs/job-42")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    job = response.json()["job"]
    assert job["id"] == "job-42"
    assert job["tenantId"] == "tenant-1"  # lowerCamelCase names, principal was bound
    assert job["kind"] == "JOB_KIND_TRAINING"  # enums by name
    assert job["lastEventSequence"] == str(2**53 + 1)  # int64 as a string, exact
    assert job["createTime"] == "2023-11-14T22:13:20Z"  # Timestamp as RFC 3339
    # Fields without presence are always written, so the frontend never sees gaps.
    assert job["attempts"] == 0
    assert job["modelVersionId"] == ""
    assert job["metrics"] == {}
    assert "error" not in job  # unset messages stay absent


async def test_percent_encoded_path_value_is_decoded(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/a%20b%2Fc")
    assert response.status_code == 200
    assert response.json()["job"]["id"] == "a b/c"


async def test_custom_verb_routes(client: httpx.AsyncClient) -> None:
    finalize = await client.post("/v1/datasets/ds-7:finalize")
    assert finalize.status_code == 200
    assert finalize.json()["dataset"] == {
        **finalize.json()["dataset"],
        "id": "ds-7",
        "state": "DATASET_STATE_READY",
    }

    cancel = await client.post("/v1/jobs/j1:cancel", json={})
    assert cancel.status_code == 200
    assert cancel.json()["job"]["state"] == "JOB_STATE_CANCELLING"

    # `:download` is annotated but the fake does not implement it: the generated base
    # class answers UNIMPLEMENTED, which maps to 501 — the route itself matched.
    download = await client.get("/v1/artifacts/a1:download")
    assert download.status_code == 501
    assert download.json()["status"] == "UNIMPLEMENTED"


async def test_custom_verb_on_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    # Not GetDataset of an id "ds-7:finalize": the `:finalize` route, with the wrong method.
    response = await client.get("/v1/datasets/ds-7:finalize")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    response = await client.delete("/v1/jobs/j1:cancel")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    # A colon that is no custom verb of ours stays part of the id.
    response = await client.get("/v1/jobs/ns:j1")
    assert response.status_code == 200
    assert response.json()["job"]["id"] == "ns:j1"


async def test_query_binding_with_enum_names_numbers_and_both_spellings(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/v1/jobs", params={"kind": "JOB_KIND_TRAINING", "pageSize": "5", "state": "3"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["jobs"][0]["kind"] == "JOB_KIND_TRAINING"
    assert body["jobs"][0]["state"] == "JOB_STATE_RUNNING"
    assert body["nextPageToken"] == "size=5;token="

    snake = await client.get("/v1/jobs?page_size=7&page_token=abc")
    assert snake.json()["nextPageToken"] == "size=7;token=abc"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("kind=JOB_KIND_NOPE", "kind"),
        ("pageSize=five", "page_size"),
        ("pageSize=99999999999", "page_size"),
        ("pageSize=1&pageSize=2", "page_size"),
    ],
)
async def test_bad_query_values_are_400_naming_the_field(
    client: httpx.AsyncClient, violations, query: str, field: str
) -> None:
    response = await client.get(f"/v1/jobs?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "INVALID_ARGUMENT"
    assert violations(body) == [field]


async def test_unknown_query_parameters_are_400_naming_them(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.get("/v1/jobs?pageSize=1&colour=red&flavour=x")
    assert response.status_code == 400
    assert violations(response.json()) == ["colour", "flavour"]
    # body "*" routes take every field from the body: any query parameter is unknown.
    response = await client.post("/v1/datasets?name=x", json={"name": "y"})
    assert response.status_code == 400
    assert violations(response.json()) == ["name"]


async def test_protovalidate_rules_run_before_the_servicer(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.get("/v1/jobs?pageSize=5000")
    assert response.status_code == 400
    assert violations(response.json()) == ["page_size"]


async def test_json_body_is_parsed_into_the_request(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/datasets", json={"name": "cats", "description": "many cats"})
    assert response.status_code == 200
    body = response.json()
    assert body["dataset"]["name"] == "cats"
    assert body["dataset"]["state"] == "DATASET_STATE_UPLOADING"
    assert body["uploadExpiresIn"] == "3600"


async def test_proto_field_names_are_accepted_in_bodies(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/datasets", json={"name": "cats", "description": "d"})
    assert response.status_code == 200


async def test_unknown_json_field_is_rejected_and_named(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.post("/v1/datasets", json={"name": "cats", "colour": "red"})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "INVALID_ARGUMENT"
    assert violations(body) == ["colour"]

    nested = await client.post(
        "/v1/training/jobs", json={"datasetId": "d", "spec": {"dataLoading": {"workers": 2}}}
    )
    # JobService.CreateTrainingJob is not implemented by the fake, but binding fails first.
    assert nested.status_code == 400
    assert violations(nested.json()) == ["spec.data_loading.workers"]


async def test_wrongly_typed_json_value_names_the_field(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.post(
        "/v1/training/jobs", json={"spec": {"epochs": "many"}, "datasetId": "d"}
    )
    assert response.status_code == 400
    assert violations(response.json()) == ["spec.epochs"]


@pytest.mark.parametrize(
    "body", [b'{"name": ', b"[1, 2]", b"\xff\xfe", b'{"name": "a", "name": "b"}']
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/datasets", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["status"] == "INVALID_ARGUMENT"


async def test_validation_violation_names_the_field(client: httpx.AsyncClient, violations) -> None:
    response = await client.post("/v1/datasets", json={"name": "", "description": "x"})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 400
    assert violations(body) == ["name"]

    empty = await client.post("/v1/datasets")  # no body at all: every field is empty
    assert empty.status_code == 400
    assert violations(empty.json()) == ["name"]


async def test_not_found_is_404_with_json_error_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/jobs/unknown:cancel", json={})
    assert response.status_code == 404
    body = response.json()
    assert body["code"] == 404
    assert body["status"] == "NOT_FOUND"
    assert "unknown" in body["message"]
    types = [d["@type"] for d in body["details"]]
    assert "type.googleapis.com/google.rpc.ResourceInfo" in types


async def test_context_abort_maps_to_the_matching_status(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/aborted")
    assert response.status_code == 403
    assert response.json()["status"] == "PERMISSION_DENIED"
    assert response.json()["message"] == "not yours"


async def test_missing_token_on_non_public_route_is_401(app: RestTranscoder) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as anonymous:
        response = await anonymous.get("/v1/jobs/j1")
        assert response.status_code == 401
        assert response.json()["status"] == "UNAUTHENTICATED"
        assert response.headers["www-authenticate"] == "Bearer"

        # Auth happens before the body is read: no schema hints for anonymous callers.
        response = await anonymous.post("/v1/datasets", json={"bogus": 1})
        assert response.status_code == 401

        public = await anonymous.get("/v1/jobs/j1/metrics")
        assert public.status_code == 200


async def test_bad_token_is_401_even_on_public_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/j1/metrics", headers={"authorization": "Bearer nope"})
    assert response.status_code == 401


async def test_authenticator_sees_grpc_method_and_headers(
    client: httpx.AsyncClient, authenticator
) -> None:
    await client.get("/v1/jobs/j1", headers={"x-tenant-hint": "t"})
    method, metadata = authenticator.calls[-1]
    assert method == "/visionmesh.gateway.v1.JobService/GetJob"
    assert metadata["authorization"] == "Bearer good-token"
    assert metadata["x-tenant-hint"] == "t"


async def test_servicer_context_exposes_metadata_and_peer(client: httpx.AsyncClient, jobs) -> None:
    await client.get("/v1/jobs/j1", headers={"x-request-id": "req-1"})
    assert ("x-request-id", "req-1") in jobs.seen_metadata
    assert jobs.seen_peer == "ipv4:10.1.2.3:4567"


async def test_unexpected_exception_is_500_generic_and_logged(
    client: httpx.AsyncClient,
) -> None:
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/v1/jobs/boom", headers={"x-request-id": "req-boom"})
    assert response.status_code == 500
    body = response.json()
    assert body["status"] == "INTERNAL"
    assert body["message"] == "internal error"
    assert "secret" not in response.text
    assert body["details"][0]["metadata"] == {"request_id": "req-boom"}
    [entry] = [e for e in logs if e["log_level"] == "error"]
    assert entry["method"] == "/visionmesh.gateway.v1.JobService/GetJob"
    assert "secret details" in str(entry["exc_info"])


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/v1/jobs/j1", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"

    generated = await client.get("/v1/jobs/j1")
    assert len(generated.headers["x-request-id"]) == 32

    hostile = await client.get("/v1/jobs/j1", headers={"x-request-id": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"

    error = await client.get("/v1/nothing-here", headers={"x-request-id": "abc-404"})
    assert error.status_code == 404
    assert error.headers["x-request-id"] == "abc-404"


async def test_unknown_route_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["status"] == "NOT_FOUND"
    trailing = await client.get("/v1/jobs/")
    assert trailing.status_code == 404


async def test_body_over_the_limit_is_413(make_app) -> None:
    from visionmesh.gateway.api.rest import RestConfig

    app: RestTranscoder = make_app(config=RestConfig(max_body_bytes=64))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"authorization": "Bearer good-token"},
    ) as http:
        response = await http.post("/v1/datasets", json={"name": "x" * 100})
    assert response.status_code == 413
    assert response.json()["status"] == "RESOURCE_EXHAUSTED"


async def test_validation_can_be_left_to_another_layer(make_app) -> None:
    from visionmesh.gateway.api.rest import RestConfig

    app: RestTranscoder = make_app(config=RestConfig(validate_requests=False))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"authorization": "Bearer good-token"},
    ) as http:
        response = await http.post("/v1/datasets", json={"name": ""})
    assert response.status_code == 200


async def test_mounted_under_a_prefix(app: RestTranscoder) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/api", app=app)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer),
        base_url="http://gateway",
        headers={"authorization": "Bearer good-token"},
    ) as http:
        response = await http.get("/api/v1/jobs/j9")
    assert response.status_code == 200
    assert response.json()["job"]["id"] == "j9"
