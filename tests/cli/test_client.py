"""GatewayClient against httpx.MockTransport: errors, SSE parsing and resume, transfers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from visionmesh.cli.client import (
    ApiError,
    FieldViolation,
    GatewayClient,
    IntegrityError,
    TransportError,
    iter_sse,
)

BAD_REQUEST = {
    "code": 400,
    "status": "INVALID_ARGUMENT",
    "message": "spec.imgsz: must be a multiple of 32",
    "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_SPEC"},
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [
                {"field": "spec.imgsz", "description": "must be a multiple of 32"},
                {"field": "spec.epochs", "description": "must be greater than 0"},
            ],
        },
    ],
}


def _client(handler: Any, **kwargs: Any) -> GatewayClient:
    return GatewayClient(
        "http://gw", transport=httpx.MockTransport(handler), backoff_seconds=0, **kwargs
    )


def test_api_error_carries_status_reason_and_field_violations() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=BAD_REQUEST, headers={"x-request-id": "r1"})

    with _client(handler, token="t") as client, pytest.raises(ApiError) as failure:
        client.create_training_job({"spec": {}})
    error = failure.value
    assert error.http_status == 400 and error.status == "INVALID_ARGUMENT"
    assert error.reason == "INVALID_SPEC" and error.request_id == "r1"
    assert error.field_violations == (
        FieldViolation("spec.imgsz", "must be a multiple of 32"),
        FieldViolation("spec.epochs", "must be greater than 0"),
    )
    assert str(error) == "INVALID_ARGUMENT: spec.imgsz: must be a multiple of 32"


def test_object_store_xml_errors_are_readable() -> None:
    xml = (
        "<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code>"
        "<Message>The request signature does not match.</Message></Error>"
    )
    response = httpx.Response(403, text=xml, request=httpx.Request("PUT", "http://s3/x"))
    error = ApiError.from_response(response)
    assert error.status == "SignatureDoesNotMatch"
    assert error.message == "The request signature does not match."


def test_bearer_token_goes_to_the_gateway_but_never_to_presigned_urls(tmp_path: Path) -> None:
    seen: dict[str, httpx.Request] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request
        if request.url.host == "s3":
            request.read()
            return httpx.Response(200)
        return httpx.Response(200, json={"user": {}})

    archive = tmp_path / "a.zip"
    archive.write_bytes(b"x" * (2 * 1024 * 1024 + 5))
    progress: list[int] = []
    with _client(handler, token="secret") as client:
        client.me()
        client.upload(
            "http://s3/bucket/key?X-Amz-Signature=abc", archive, on_progress=progress.append
        )
    assert seen["gw"].headers["authorization"] == "Bearer secret"
    put = seen["s3"]
    assert "authorization" not in put.headers
    # Streamed in chunks, with an explicit length (S3 refuses chunked uploads).
    assert put.headers["content-length"] == str(archive.stat().st_size)
    assert "transfer-encoding" not in put.headers
    assert put.content == archive.read_bytes()
    assert len(progress) == 3 and sum(progress) == archive.stat().st_size


def test_gets_are_retried_on_unavailable_but_posts_are_not() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) < 3:
            return httpx.Response(503, json={"code": 503, "status": "UNAVAILABLE", "message": "x"})
        return httpx.Response(200, json={"job": {"id": "j1"}})

    with _client(handler) as client:
        assert client.get_job("j1") == {"job": {"id": "j1"}}
        assert calls == ["GET", "GET", "GET"]
        calls.clear()
        with pytest.raises(ApiError) as failure:
            client.cancel_job("j1")
        assert failure.value.status == "UNAVAILABLE" and calls == ["POST"]


def test_unreachable_gateway_is_a_transport_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _client(handler) as client, pytest.raises(TransportError, match="cannot reach"):
        client.me()


def test_paginate_follows_page_tokens_up_to_the_limit() -> None:
    pages = {"": (["a", "b"], "p2"), "p2": (["c", "d"], "p3"), "p3": (["e"], "")}
    sizes: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sizes.append(request.url.params.get("pageSize"))
        items, token = pages[request.url.params.get("pageToken", "")]
        return httpx.Response(
            200, json={"jobs": [{"id": i} for i in items], "nextPageToken": token}
        )

    with _client(handler) as client:
        assert [j["id"] for j in client.list_jobs()] == ["a", "b", "c", "d", "e"]
        assert [j["id"] for j in client.list_jobs(limit=3)] == ["a", "b", "c"]
    assert sizes[-2:] == ["3", "1"]


def test_iter_sse_parses_ids_events_multiline_data_and_skips_comments() -> None:
    stream = (
        ': keep-alive\n\nid: 1\nevent: message\ndata: {"a":\ndata: 1}\n\n'
        "data: plain\n\nevent: end\ndata: {}\n\n"
    )
    events = list(iter_sse(stream.splitlines(keepends=True)))
    assert [(e.id, e.event, e.data) for e in events] == [
        ("1", "message", '{"a":\n1}'),
        (None, "message", "plain"),
        (None, "end", "{}"),
    ]


def _frame(sequence: int, **payload: Any) -> bytes:
    body = {"sequence": str(sequence), "job": {"id": "j1"}, **payload}
    return f"id: {sequence}\nevent: message\ndata: {json.dumps(body)}\n\n".encode()


class _Dropping(httpx.SyncByteStream):
    """Sends some frames, then the connection breaks."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames

    def __iter__(self) -> Iterator[bytes]:
        yield from self.frames
        raise httpx.ReadError("connection reset by peer")


def test_watch_resumes_with_last_event_id_after_a_drop() -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        headers = {"content-type": "text/event-stream"}
        if len(requests) == 1:
            return httpx.Response(200, headers=headers, stream=_Dropping([_frame(1), _frame(2)]))
        if len(requests) == 2:
            # A gateway restart: the stream closes cleanly but without `event: end`.
            return httpx.Response(200, headers=headers, content=_frame(3))
        if len(requests) == 3:
            return httpx.Response(503, json={"code": 503, "status": "UNAVAILABLE", "message": ""})
        # Replays event 3 (already seen), then the rest.
        return httpx.Response(
            200, headers=headers, content=_frame(3) + _frame(4) + b"event: end\ndata: {}\n\n"
        )

    reconnects: list[tuple[int, str]] = []
    with _client(handler) as client:
        events = list(
            client.watch_job("j1", on_reconnect=lambda n, why: reconnects.append((n, why)))
        )
    assert [int(e["sequence"]) for e in events] == [1, 2, 3, 4]
    assert [r.headers.get("last-event-id") for r in requests] == [None, "2", "3", "3"]
    assert all(r.headers["accept"] == "text/event-stream" for r in requests)
    assert [n for n, _ in reconnects] == [1, 1, 2]  # the count resets after each event
    assert "ReadError" in reconnects[0][1]


def test_watch_gives_up_after_too_many_reconnects_and_raises_server_errors() -> None:
    def dropping(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=_Dropping([]))

    with _client(dropping) as client, pytest.raises(TransportError, match="gave up after 2"):
        list(client.watch_job("j1", max_reconnects=2))

    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"code": 404, "status": "NOT_FOUND", "message": "no job"})

    with _client(not_found) as client, pytest.raises(ApiError, match="NOT_FOUND"):
        list(client.watch_job("j1"))

    def error_event(request: httpx.Request) -> httpx.Response:
        data = json.dumps({"code": 403, "status": "PERMISSION_DENIED", "message": "nope"})
        return httpx.Response(200, content=f"event: error\ndata: {data}\n\n".encode())

    with _client(error_event) as client, pytest.raises(ApiError, match="PERMISSION_DENIED"):
        list(client.watch_job("j1"))


def test_download_verifies_sha256_and_keeps_nothing_on_mismatch(tmp_path: Path) -> None:
    content = b"weights" * 1000

    def handler(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        return httpx.Response(200, content=content)

    good = hashlib.sha256(content).hexdigest()
    dest = tmp_path / "best.pt"
    with _client(handler, token="t") as client:
        assert client.download("http://s3/k", dest, expected_sha256=good.upper()) == good
        assert dest.read_bytes() == content
        dest.unlink()
        with pytest.raises(IntegrityError, match="checksum mismatch"):
            client.download("http://s3/k", dest, expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
