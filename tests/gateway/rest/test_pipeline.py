"""One request pipeline under both transports: the same servicers served over gRPC (a real
grpc.aio server) and REST (the transcoder) must authenticate, validate, map errors, count
and log identically; only the `transport` label and log field tell them apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import httpx
import pytest
import structlog
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from visionmesh.api.gateway.v1 import datasets_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import ServiceSettings
from visionmesh.gateway.api.rest import RestTranscoder

from tests.gateway.rest.conftest import (
    DATASET_SERVICE,
    JOB_SERVICE,
    TOKEN,
    FakeAuthenticator,
    FakeDatasets,
    FakeJobs,
)

pytestmark = pytest.mark.timeout(30)

JOBS = JOB_SERVICE.full_name
REQUEST_ID = "req-same-1"


@dataclass
class Both:
    """The gateway's shape: one GrpcServer, a RestTranscoder sharing its pipeline."""

    server: GrpcServer
    app: RestTranscoder
    http: httpx.AsyncClient
    jobs: jobs_pb2_grpc.JobServiceStub

    def sample(self, name: str, labels: dict[str, str]) -> float | None:
        return self.server.registry.get_sample_value(name, labels)


@pytest.fixture(params=["shared-pipeline", "shared-registry"])
async def both(
    request: pytest.FixtureRequest, authenticator: FakeAuthenticator, jobs: FakeJobs
) -> AsyncIterator[Both]:
    server = GrpcServer(
        settings=ServiceSettings(grpc_port=0, shutdown_grace_seconds=0.5),
        authenticator=authenticator,
    )
    server.add_service(
        jobs_pb2_grpc.add_JobServiceServicer_to_server, jobs, service_name=JOB_SERVICE.full_name
    )
    datasets = FakeDatasets()
    server.add_service(
        datasets_pb2_grpc.add_DatasetServiceServicer_to_server,
        datasets,
        service_name=DATASET_SERVICE.full_name,
    )
    services = [(JOB_SERVICE, jobs), (DATASET_SERVICE, datasets)]
    if request.param == "shared-pipeline":
        app = RestTranscoder(services, pipeline=server.pipeline, registry=server.registry)
    else:
        # How the gateway wires it: the same authenticator and the server's registry.
        app = RestTranscoder(services, authenticator=authenticator, registry=server.registry)
    async with (
        server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as http,
    ):
        yield Both(server, app, http, jobs_pb2_grpc.JobServiceStub(channel))


def _auth(token: str | None = TOKEN) -> dict[str, str]:
    headers = {"x-request-id": REQUEST_ID}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def _labels(method: str, transport: str, rpc_type: str = "unary") -> dict[str, str]:
    return {
        "grpc_service": JOBS,
        "grpc_method": method,
        "grpc_type": rpc_type,
        "transport": transport,
    }


# --- metrics and access log ----------------------------------------------------------------


def _total(both: Both, name: str, **labels: str) -> float:
    """Sum of a sample over every series whose labels include `labels`."""
    return sum(
        sample.value
        for family in both.server.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_rest_calls_are_counted_like_grpc_calls(both: Both) -> None:
    """REST used to bypass the interceptor: its calls were in no grpc_server_* series."""
    await both.jobs.GetJob(jobs_pb2.GetJobRequest(id="j1"), metadata=tuple(_auth().items()))
    assert (await both.http.get("/v1/jobs/j1", headers=_auth())).status_code == 200

    assert _total(both, "grpc_server_started_total", grpc_method="GetJob") == 2
    assert _total(both, "grpc_server_handled_total", grpc_method="GetJob", grpc_code="OK") == 2
    for transport in ("grpc", "rest"):
        labels = _labels("GetJob", transport)
        assert both.sample("grpc_server_started_total", labels) == 1, transport
        assert both.sample("grpc_server_handled_total", labels | {"grpc_code": "OK"}) == 1
        assert both.sample("grpc_server_handling_seconds_count", labels) == 1


async def test_errors_are_counted_by_code_on_both(both: Both) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await both.jobs.CancelJob(
            jobs_pb2.CancelJobRequest(id="nope"), metadata=tuple(_auth().items())
        )
    assert (await both.http.post("/v1/jobs/nope:cancel", headers=_auth())).status_code == 404
    for transport in ("grpc", "rest"):
        labels = _labels("CancelJob", transport) | {"grpc_code": "NOT_FOUND"}
        assert both.sample("grpc_server_handled_total", labels) == 1, transport


async def test_streams_are_counted_on_both(both: Both) -> None:
    call = both.jobs.WatchJob(jobs_pb2.WatchJobRequest(id="j1"), metadata=tuple(_auth().items()))
    assert [event.sequence async for event in call] == [1, 2, 3]
    response = await both.http.get("/v1/jobs/j1/events", headers=_auth())
    assert response.status_code == 200
    for transport in ("grpc", "rest"):
        labels = _labels("WatchJob", transport, "server_stream")
        assert both.sample("grpc_server_handled_total", labels | {"grpc_code": "OK"}) == 1


async def test_each_call_writes_one_access_log_line(both: Both) -> None:
    with structlog.testing.capture_logs() as logs:
        await both.jobs.GetJob(jobs_pb2.GetJobRequest(id="j1"), metadata=tuple(_auth().items()))
        await both.http.get("/v1/jobs/j1", headers=_auth())
        await both.http.post("/v1/jobs/nope:cancel", headers=_auth())
        # The line is written right after the response (off the call's latency).
        await asyncio.sleep(0)
    lines = [
        {k: entry[k] for k in ("method", "transport", "code", "log_level")}
        for entry in logs
        if entry["event"] == "rpc finished"
    ]
    assert lines == [
        {"method": f"/{JOBS}/GetJob", "transport": "grpc", "code": "OK", "log_level": "info"},
        {"method": f"/{JOBS}/GetJob", "transport": "rest", "code": "OK", "log_level": "info"},
        {
            "method": f"/{JOBS}/CancelJob",
            "transport": "rest",
            "code": "NOT_FOUND",
            "log_level": "info",
        },
    ]
    access = [entry for entry in logs if entry["event"] == "rpc finished"]
    assert all(isinstance(entry["duration_ms"], float) for entry in access)
    assert [entry["request_id"] for entry in access] == [REQUEST_ID] * 3


# --- one error path ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """The same failing call, as a gRPC stub call and as an HTTP request."""

    grpc_call: Callable[[jobs_pb2_grpc.JobServiceStub, tuple[tuple[str, str], ...]], Any]
    http_method: str
    path: str
    token: str | None = TOKEN


CASES = {
    "invalid-argument-with-field": Case(
        lambda stub, md: stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=5000), metadata=md),
        "GET",
        "/v1/jobs?pageSize=5000",
    ),
    "not-found": Case(
        lambda stub, md: stub.CancelJob(jobs_pb2.CancelJobRequest(id="unknown"), metadata=md),
        "POST",
        "/v1/jobs/unknown:cancel",
    ),
    "unauthenticated-missing": Case(
        lambda stub, md: stub.GetJob(jobs_pb2.GetJobRequest(id="j1"), metadata=md),
        "GET",
        "/v1/jobs/j1",
        token=None,
    ),
    "unauthenticated-bad-token": Case(
        lambda stub, md: stub.GetJob(jobs_pb2.GetJobRequest(id="j1"), metadata=md),
        "GET",
        "/v1/jobs/j1",
        token="forged",
    ),
    "internal": Case(
        lambda stub, md: stub.GetJob(jobs_pb2.GetJobRequest(id="boom"), metadata=md),
        "GET",
        "/v1/jobs/boom",
    ),
    # The fake does not implement it: the generated base class sets UNIMPLEMENTED and
    # raises NotImplementedError. gRPC used to answer INTERNAL, REST 501.
    "unimplemented": Case(
        lambda stub, md: stub.GetArtifactDownloadUrl(
            jobs_pb2.GetArtifactDownloadUrlRequest(id="a1"), metadata=md
        ),
        "GET",
        "/v1/artifacts/a1:download",
    ),
}


def _status_json(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """A gRPC failure in the REST error body's shape (minus the HTTP code)."""
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None, "no grpc-status-details-bin trailer"
    return {
        "status": error.code().name,
        "message": error.details(),
        "details": [
            json_format.MessageToDict(detail, preserving_proto_field_name=False)
            for detail in status.details
        ],
    }


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_same_error_maps_identically_on_both(both: Both, case: str) -> None:
    spec = CASES[case]
    headers = _auth(spec.token)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await spec.grpc_call(both.jobs, tuple(headers.items()))
    response = await both.http.request(spec.http_method, spec.path, headers=headers)

    over_grpc = _status_json(raised.value)
    over_rest = response.json()
    assert over_rest.pop("code") == response.status_code
    assert over_rest == over_grpc
    # The details end with the call's request id on both.
    assert over_grpc["details"][-1] == {
        "@type": "type.googleapis.com/google.rpc.RequestInfo",
        "requestId": REQUEST_ID,
    }
    expected = {
        "invalid-argument-with-field": ("INVALID_ARGUMENT", 400),
        "not-found": ("NOT_FOUND", 404),
        "unauthenticated-missing": ("UNAUTHENTICATED", 401),
        "unauthenticated-bad-token": ("UNAUTHENTICATED", 401),
        "internal": ("INTERNAL", 500),
        "unimplemented": ("UNIMPLEMENTED", 501),
    }[case]
    assert (over_grpc["status"], response.status_code) == expected


async def test_field_violation_names_the_field_on_both(both: Both) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await CASES["invalid-argument-with-field"].grpc_call(both.jobs, tuple(_auth().items()))
    status = rpc_status.from_call(cast(Any, raised.value))
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert any(detail.Unpack(bad_request) for detail in status.details)
    assert [v.field for v in bad_request.field_violations] == ["page_size"]


async def test_internal_errors_leak_nothing_on_either(both: Both) -> None:
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await both.jobs.GetJob(
                jobs_pb2.GetJobRequest(id="boom"), metadata=tuple(_auth().items())
            )
        response = await both.http.get("/v1/jobs/boom", headers=_auth())
    assert "secret" not in repr(raised.value.trailing_metadata()) + (raised.value.details() or "")
    assert "secret" not in response.text
    tracebacks = [e for e in logs if e["event"] == "unhandled exception in rpc handler"]
    assert [e["transport"] for e in tracebacks] == ["grpc", "rest"]
    assert all("secret details" in str(e["exc_info"]) for e in tracebacks)


async def test_handler_abort_keeps_its_status_on_both(both: Both) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await both.jobs.GetJob(
            jobs_pb2.GetJobRequest(id="aborted"), metadata=tuple(_auth().items())
        )
    response = await both.http.get("/v1/jobs/aborted", headers=_auth())
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (response.json()["status"], response.json()["message"]) == (
        "PERMISSION_DENIED",
        raised.value.details(),
    )
    for transport in ("grpc", "rest"):
        labels = _labels("GetJob", transport) | {"grpc_code": "PERMISSION_DENIED"}
        # context.abort() sends the status itself, before the pipeline sees AbortError:
        # the caller can have it a moment before the call is recorded.
        for _ in range(100):
            if both.sample("grpc_server_handled_total", labels) is not None:
                break
            await asyncio.sleep(0.01)
        assert both.sample("grpc_server_handled_total", labels) == 1, transport


async def test_a_standalone_transcoder_builds_the_same_pipeline(
    authenticator: FakeAuthenticator, jobs: FakeJobs
) -> None:
    """Without a shared pipeline, `registry` still gets the RPC metrics (once per registry)."""
    from visionmesh.common.metrics import new_registry

    registry = new_registry(process_metrics=False)
    first = RestTranscoder([(JOB_SERVICE, jobs)], authenticator=authenticator, registry=registry)
    second = RestTranscoder([(JOB_SERVICE, jobs)], authenticator=authenticator, registry=registry)
    assert first.pipeline.metrics is second.pipeline.metrics
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=first), base_url="http://gateway"
    ) as http:
        assert (await http.get("/v1/jobs/j1", headers=_auth())).status_code == 200
    labels = _labels("GetJob", "rest") | {"grpc_code": "OK"}
    assert registry.get_sample_value("grpc_server_handled_total", labels) == 1
