"""Server-streaming RPCs as Server-Sent Events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from visionmesh.gateway.api.rest import RestTranscoder, serve_rest


def parse_events(text: str) -> list[dict[str, Any]]:
    """SSE frames as dicts (`id`, `event`, `data`); comment-only frames as `{"comment": ...}`."""
    events: list[dict[str, Any]] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        event: dict[str, Any] = {}
        for line in frame.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "":
                event["comment"] = value
            elif field == "data":
                event["data"] = json.loads(value)
            else:
                event[field] = value
        events.append(event)
    return events


async def test_stream_is_served_as_server_sent_events(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/j1/events", headers={"x-request-id": "sse-1"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-request-id"] == "sse-1"
    events = [e for e in parse_events(response.text) if "comment" not in e]
    messages = [e for e in events if e["event"] == "message"]
    assert [e["id"] for e in messages] == ["1", "2", "3"]
    assert [e["data"]["sequence"] for e in messages] == ["1", "2", "3"]
    assert messages[0]["data"]["progress"]["epoch"] == 1
    assert messages[0]["data"]["job"]["id"] == "j1"
    assert response.text.count("data: ") == 4  # three messages and the end marker
    assert events[-1] == {"event": "end", "data": {}}


async def test_last_event_id_resumes_the_stream(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/j1/events", headers={"last-event-id": "1"})
    ids = [e["id"] for e in parse_events(response.text) if e.get("event") == "message"]
    assert ids == ["2", "3"]

    # EventSource reconnects to the same URL: the header wins over the query.
    response = await client.get(
        "/v1/jobs/j1/events?afterSequence=0", headers={"last-event-id": "2"}
    )
    ids = [e["id"] for e in parse_events(response.text) if e.get("event") == "message"]
    assert ids == ["3"]

    response = await client.get("/v1/jobs/j1/events?afterSequence=2")
    ids = [e["id"] for e in parse_events(response.text) if e.get("event") == "message"]
    assert ids == ["3"]


async def test_bad_last_event_id_is_400(client: httpx.AsyncClient, violations) -> None:
    response = await client.get("/v1/jobs/j1/events", headers={"last-event-id": "yesterday"})
    assert response.status_code == 400
    assert violations(response.json()) == ["after_sequence"]
    response = await client.get("/v1/jobs/j1/events", headers={"last-event-id": "-5"})
    assert response.status_code == 400  # protovalidate: after_sequence >= 0


async def test_error_before_the_first_event_gets_its_http_status(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/jobs/missing/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status"] == "NOT_FOUND"


async def test_error_mid_stream_is_an_error_event(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/jobs/fails-midway/events")
    assert response.status_code == 200
    events = [e for e in parse_events(response.text) if "comment" not in e]
    assert [e["event"] for e in events] == ["message"] * 3 + ["error"]
    error = events[-1]["data"]
    assert error["status"] == "INTERNAL"
    assert "event bus" not in json.dumps(error)


async def test_heartbeats_and_disconnect_over_a_real_socket(app: RestTranscoder, jobs) -> None:
    jobs.watch_forever = True
    server = await serve_rest(app, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"authorization": "Bearer good-token"},
            timeout=5,
        ) as http:
            async with http.stream("GET", "/v1/jobs/j1/events") as response:
                assert response.status_code == 200
                received = ""
                async for chunk in response.aiter_text():
                    received += chunk
                    if received.count(": keep-alive") >= 2:
                        break
            events = parse_events(received)
            assert [e["id"] for e in events if e.get("event") == "message"] == ["1", "2", "3"]
            assert {"comment": "keep-alive"} in events
        # Leaving the `stream` block closed the connection: the servicer's generator is
        # cancelled and its `finally` runs (the core stops following the job).
        await asyncio.wait_for(jobs.watch_closed.wait(), timeout=5)
    finally:
        await server.stop()


async def test_stopping_the_server_ends_open_streams(app: RestTranscoder, jobs) -> None:
    jobs.watch_forever = True
    server = await serve_rest(app, "127.0.0.1", 0, grace_seconds=5)
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"authorization": "Bearer good-token"},
            timeout=5,
        ) as http,
        http.stream("GET", "/v1/jobs/j1/events") as response,
    ):
        iterator = response.aiter_text()
        first = await anext(iterator)
        assert "event: message" in first
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop()
        rest = "".join([chunk async for chunk in iterator])
        assert loop.time() - started < 3  # closed at once, not after the grace period
    assert "event: end" not in rest  # no end marker: EventSource reconnects elsewhere
    assert jobs.watch_closed.is_set()


@pytest.mark.parametrize("accept", ["text/event-stream", "*/*"])
async def test_accept_header_does_not_change_the_stream(
    client: httpx.AsyncClient, accept: str
) -> None:
    response = await client.get("/v1/jobs/j1/events", headers={"accept": accept})
    assert response.headers["content-type"] == "text/event-stream"
