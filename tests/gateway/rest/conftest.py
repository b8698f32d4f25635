"""Fakes for the REST transcoder tests: in-test servicers over the real generated services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2  # noqa: F401  (registers google.api.http)
from google.protobuf import (  # noqa: F401  (loads their files)
    descriptor_pb2,
    descriptor_pool,
    text_format,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import ServiceDescriptor
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.gateway.v1 import datasets_pb2, datasets_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from visionmesh.common.auth import Principal, current_principal
from visionmesh.common.errors import NotFound, Unauthenticated
from visionmesh.gateway.api.rest import RestConfig, RestTranscoder

TOKEN = "good-token"
PUBLIC_METHODS = frozenset({"/visionmesh.gateway.v1.JobService/ListJobMetrics"})
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
DATASET_SERVICE = datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"]


class FakeAuthenticator:
    """Accepts `Bearer good-token`; anything else sent is rejected, nothing sent is None."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []

    def is_public(self, method: str) -> bool:
        return method in PUBLIC_METHODS

    async def authenticate(self, *, method: str, metadata: Mapping[str, str]) -> Principal | None:
        self.calls.append((method, dict(metadata)))
        value = metadata.get("authorization")
        if value is None:
            return None
        if value != f"Bearer {TOKEN}":
            raise Unauthenticated("bad token", reason="TOKEN_INVALID")
        return Principal(subject="user-1", tenant_id="tenant-1", role="member", kind="user")


class FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    """A servicer as the gateway's would be: it only converts (here: fabricates) data."""

    def __init__(self) -> None:
        self.watch_closed = asyncio.Event()
        self.watch_forever = False
        self.seen_metadata: tuple[tuple[str, str], ...] = ()
        self.seen_peer = ""

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: Any
    ) -> jobs_pb2.GetJobResponse:
        principal = current_principal()
        assert principal is not None
        self.seen_metadata = tuple(context.invocation_metadata())
        self.seen_peer = context.peer()
        if request.id == "boom":
            raise RuntimeError("database exploded with secret details")
        if request.id == "aborted":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
        job = job_pb2.Job(
            id=request.id,
            tenant_id=principal.tenant_id,
            kind=job_pb2.JOB_KIND_TRAINING,
            state=job_pb2.JOB_STATE_RUNNING,
            last_event_sequence=2**53 + 1,
        )
        job.create_time.FromSeconds(1_700_000_000)
        return jobs_pb2.GetJobResponse(job=job)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Any
    ) -> jobs_pb2.ListJobsResponse:
        # Echo the filters so tests can see how the query string was bound.
        return jobs_pb2.ListJobsResponse(
            jobs=[job_pb2.Job(id="j1", kind=request.kind, state=request.state)],
            next_page_token=f"size={request.page_size};token={request.page_token}",
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: Any
    ) -> jobs_pb2.CancelJobResponse:
        if request.id != "j1":
            raise NotFound(resource_type="job", resource_id=request.id)
        return jobs_pb2.CancelJobResponse(
            job=job_pb2.Job(id=request.id, state=job_pb2.JOB_STATE_CANCELLING)
        )

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        if request.id == "missing":
            raise NotFound(resource_type="job", resource_id=request.id)
        assert current_principal() is not None
        try:
            for sequence in range(request.after_sequence + 1, 4):
                event = jobs_pb2.WatchJobResponse(
                    sequence=sequence, job=job_pb2.Job(id=request.id, last_event_sequence=sequence)
                )
                event.progress.epoch = sequence
                yield event
            if request.id == "fails-midway":
                raise RuntimeError("lost the event bus")
            if self.watch_forever:
                await asyncio.Event().wait()  # a live job that never ends
        finally:
            self.watch_closed.set()

    async def ListJobMetrics(
        self, request: jobs_pb2.ListJobMetricsRequest, context: Any
    ) -> jobs_pb2.ListJobMetricsResponse:
        # Public in the fake authenticator: the principal may be None.
        return jobs_pb2.ListJobMetricsResponse()


class FakeDatasets(datasets_pb2_grpc.DatasetServiceServicer):
    async def CreateDataset(
        self, request: datasets_pb2.CreateDatasetRequest, context: Any
    ) -> datasets_pb2.CreateDatasetResponse:
        dataset = datasets_pb2.Dataset(
            id="d1",
            name=request.name,
            description=request.description,
            state=datasets_pb2.DATASET_STATE_UPLOADING,
        )
        return datasets_pb2.CreateDatasetResponse(
            dataset=dataset, upload_url="http://s3/upload", upload_expires_in=3600
        )

    async def FinalizeDataset(
        self, request: datasets_pb2.FinalizeDatasetRequest, context: Any
    ) -> datasets_pb2.FinalizeDatasetResponse:
        return datasets_pb2.FinalizeDatasetResponse(
            dataset=datasets_pb2.Dataset(id=request.id, state=datasets_pb2.DATASET_STATE_READY)
        )


# A service defined here (not in protos/) to exercise binding features the real
# contracts do not use yet: nested and multi-segment path variables, body "<field>",
# repeated/bool/bytes/Timestamp/wrapper query parameters, response_body.
_LIBRARY_PROTO = """
name: "vmtest/rest/library.proto"
package: "vmtest.rest"
dependency: "google/api/annotations.proto"
dependency: "google/protobuf/timestamp.proto"
dependency: "google/protobuf/wrappers.proto"
syntax: "proto3"
enum_type {
  name: "Genre"
  value { name: "GENRE_UNSPECIFIED" number: 0 }
  value { name: "GENRE_FICTION" number: 1 }
  value { name: "GENRE_POETRY" number: 2 }
}
message_type {
  name: "Book"
  field { name: "name" number: 1 type: TYPE_STRING }
  field { name: "title" number: 2 type: TYPE_STRING }
  field { name: "page_count" number: 3 type: TYPE_INT64 }
  field { name: "genre" number: 4 type: TYPE_ENUM type_name: ".vmtest.rest.Genre" }
  field { name: "related" number: 5 type: TYPE_MESSAGE type_name: ".vmtest.rest.Book" }
  field {
    name: "labels" number: 6 type: TYPE_MESSAGE label: LABEL_REPEATED
    type_name: ".vmtest.rest.Book.LabelsEntry"
  }
  nested_type {
    name: "LabelsEntry"
    field { name: "key" number: 1 type: TYPE_STRING }
    field { name: "value" number: 2 type: TYPE_STRING }
    options { map_entry: true }
  }
}
message_type {
  name: "Filter"
  field {
    name: "genres" number: 1 type: TYPE_ENUM label: LABEL_REPEATED
    type_name: ".vmtest.rest.Genre"
  }
  field { name: "since" number: 2 type: TYPE_MESSAGE type_name: ".google.protobuf.Timestamp" }
  field { name: "min_pages" number: 3 type: TYPE_MESSAGE type_name: ".google.protobuf.Int32Value" }
}
message_type {
  name: "GetBookRequest"
  field { name: "name" number: 1 type: TYPE_STRING }
}
message_type {
  name: "SearchBooksRequest"
  field { name: "shelf" number: 1 type: TYPE_STRING }
  field { name: "path" number: 2 type: TYPE_STRING }
  field { name: "authors" number: 3 type: TYPE_STRING label: LABEL_REPEATED }
  field { name: "available" number: 4 type: TYPE_BOOL }
  field { name: "max_price" number: 5 type: TYPE_DOUBLE }
  field { name: "cursor" number: 6 type: TYPE_BYTES }
  field { name: "filter" number: 7 type: TYPE_MESSAGE type_name: ".vmtest.rest.Filter" }
  field { name: "limit" number: 8 type: TYPE_UINT32 }
}
message_type {
  name: "SearchBooksResponse"
  field { name: "echo" number: 1 type: TYPE_MESSAGE type_name: ".vmtest.rest.SearchBooksRequest" }
}
message_type {
  name: "UpdateBookRequest"
  field { name: "book" number: 1 type: TYPE_MESSAGE type_name: ".vmtest.rest.Book" }
  field { name: "validate_only" number: 2 type: TYPE_BOOL }
}
message_type {
  name: "UpdateBookResponse"
  field { name: "book" number: 1 type: TYPE_MESSAGE type_name: ".vmtest.rest.Book" }
  field { name: "validate_only" number: 2 type: TYPE_BOOL }
}
service {
  name: "LibraryService"
  method {
    name: "GetBook"
    input_type: ".vmtest.rest.GetBookRequest"
    output_type: ".vmtest.rest.Book"
    options { [google.api.http] { get: "/v1/{name=shelves/*/books/*}" } }
  }
  method {
    name: "SearchBooks"
    input_type: ".vmtest.rest.SearchBooksRequest"
    output_type: ".vmtest.rest.SearchBooksResponse"
    options { [google.api.http] { get: "/v1/shelves/{shelf}/search/{path=**}" } }
  }
  method {
    name: "UpdateBook"
    input_type: ".vmtest.rest.UpdateBookRequest"
    output_type: ".vmtest.rest.UpdateBookResponse"
    options {
      [google.api.http] {
        patch: "/v1/books/{book.name}"
        body: "book"
        response_body: "book"
        additional_bindings { put: "/v1/books/{book.name}" body: "book" response_body: "book" }
      }
    }
  }
}
"""


def load_test_file(text: str) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    text_format.Parse(text, proto)
    return proto


def _library_service() -> ServiceDescriptor:
    pool = descriptor_pool.Default()
    proto = load_test_file(_LIBRARY_PROTO)
    try:
        file = pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
        file = pool.FindFileByName(proto.name)
    return file.services_by_name["LibraryService"]


LIBRARY_SERVICE = _library_service()


class FakeLibrary:
    """A duck-typed servicer (no generated base class) for the test-only service."""

    async def GetBook(self, request: Any, context: Any) -> Any:
        from google.protobuf import message_factory

        book_class = message_factory.GetMessageClass(
            LIBRARY_SERVICE.methods_by_name["GetBook"].output_type
        )
        return book_class(name=request.name, title="Dune", page_count=412, genre=1)

    def SearchBooks(self, request: Any, context: Any) -> Any:  # a plain function works too
        from google.protobuf import message_factory

        output = LIBRARY_SERVICE.methods_by_name["SearchBooks"].output_type
        response: Any = message_factory.GetMessageClass(output)()
        response.echo.CopyFrom(request)
        return response

    async def UpdateBook(self, request: Any, context: Any) -> Any:
        from google.protobuf import message_factory

        output = LIBRARY_SERVICE.methods_by_name["UpdateBook"].output_type
        return message_factory.GetMessageClass(output)(
            book=request.book, validate_only=request.validate_only
        )


@pytest.fixture
def authenticator() -> FakeAuthenticator:
    return FakeAuthenticator()


@pytest.fixture
def jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def ready_state() -> dict[str, bool]:
    return {"database": True, "nats": True}


AppFactory = Callable[..., RestTranscoder]


@pytest.fixture
def make_app(
    authenticator: FakeAuthenticator, jobs: FakeJobs, ready_state: dict[str, bool]
) -> AppFactory:
    """A transcoder over the fakes; keyword arguments override RestTranscoder's."""
    from visionmesh.common.metrics import new_registry

    async def readiness() -> Mapping[str, bool]:
        return dict(ready_state)

    def factory(**overrides: Any) -> RestTranscoder:
        options: dict[str, Any] = {
            "authenticator": authenticator,
            "readiness": readiness,
            "registry": new_registry(process_metrics=False),
            "config": RestConfig(heartbeat_seconds=0.05, stream_error_grace_seconds=0.2),
        }
        options.update(overrides)
        services = options.pop(
            "services",
            [
                (JOB_SERVICE, jobs),
                (DATASET_SERVICE, FakeDatasets()),
                (LIBRARY_SERVICE, FakeLibrary()),
            ],
        )
        return RestTranscoder(services, **options)

    return factory


@pytest.fixture
def app(make_app: AppFactory) -> RestTranscoder:
    return make_app()


@pytest.fixture
async def client(app: RestTranscoder) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://gateway",
        headers={"authorization": f"Bearer {TOKEN}"},
    ) as http:
        yield http


def _violations(body: dict[str, Any]) -> list[str]:
    return [
        violation["field"]
        for detail in body["details"]
        if detail["@type"].endswith("google.rpc.BadRequest")
        for violation in detail["fieldViolations"]
    ]


@pytest.fixture
def violations() -> Callable[[dict[str, Any]], list[str]]:
    """The field paths named by a REST error body's BadRequest detail."""
    return _violations


@pytest.fixture
def library_service() -> ServiceDescriptor:
    return LIBRARY_SERVICE
