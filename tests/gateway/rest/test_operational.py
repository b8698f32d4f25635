"""/healthz, /readyz, /metrics, and serving over a real socket with serve_rest."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping

import httpx
import pytest
from prometheus_client import Counter
from visionmesh.common.metrics import new_registry
from visionmesh.gateway.api.rest import RestConfig, RestTranscoder, serve_rest


async def _get(app: RestTranscoder, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        return await http.get(path, headers=headers)


async def test_healthz_needs_no_credentials(app: RestTranscoder) -> None:
    response = await _get(app, "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_checks(app: RestTranscoder, ready_state: dict[str, bool]) -> None:
    response = await _get(app, "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": True, "nats": True}}

    ready_state["nats"] = False
    response = await _get(app, "/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": True, "nats": False}}


async def test_readyz_failing_or_hanging_callback_is_503(make_app) -> None:
    async def broken() -> Mapping[str, bool]:
        raise ConnectionError("db down")

    async def hanging() -> Mapping[str, bool]:
        await asyncio.sleep(60)
        return {}

    assert (await _get(make_app(readiness=broken), "/readyz")).status_code == 503
    slow = make_app(readiness=hanging, config=RestConfig(readiness_timeout_seconds=0.05))
    assert (await _get(slow, "/readyz")).status_code == 503
    assert (await _get(make_app(readiness=None), "/readyz")).status_code == 200


async def test_metrics_renders_the_given_registry(make_app) -> None:
    registry = new_registry(process_metrics=False)
    Counter("visionmesh_test_things", "Things.", registry=registry).inc(3)
    response = await _get(make_app(registry=registry), "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "visionmesh_test_things_total 3.0" in response.text

    openmetrics = await _get(
        make_app(registry=registry), "/metrics", accept="application/openmetrics-text"
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")

    assert (await _get(make_app(registry=None), "/metrics")).status_code == 404


async def test_fixed_routes_only_answer_get(app: RestTranscoder) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as http:
        response = await http.post("/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


async def test_serve_rest_on_an_ephemeral_port(app: RestTranscoder) -> None:
    async with await serve_rest(app, "127.0.0.1", 0) as server:
        assert server.port > 0
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"authorization": "Bearer good-token"},
        ) as http:
            health = await http.get("/healthz")
            job = await http.get("/v1/jobs/j7", headers={"x-request-id": "over-the-wire"})
            created = await http.post("/v1/datasets", json={"name": "cats"})
    assert health.status_code == 200
    assert job.json()["job"]["id"] == "j7"
    assert job.headers["x-request-id"] == "over-the-wire"
    assert "server" not in job.headers
    assert created.status_code == 200
    # Stopped: the port no longer accepts connections.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1):
        pass


async def test_serve_rest_on_a_taken_port_raises(app: RestTranscoder) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await serve_rest(app, "127.0.0.1", port)


async def test_stop_waits_for_in_flight_requests(make_app, jobs) -> None:
    gate = asyncio.Event()
    original = jobs.GetJob

    async def slow_get_job(request, context):
        await gate.wait()
        return await original(request, context)

    jobs.GetJob = slow_get_job
    app = make_app()
    server = await serve_rest(app, "127.0.0.1", 0, grace_seconds=5)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"authorization": "Bearer good-token"},
    ) as http:
        pending = asyncio.ensure_future(http.get("/v1/jobs/j1"))
        await asyncio.sleep(0.2)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.2)
        assert not stopping.done()  # draining, not killing
        gate.set()
        response = await pending
        await stopping
    assert response.status_code == 200


async def test_responses_are_not_held_back_by_nagle(app: RestTranscoder) -> None:
    # Headers and body go out as separate writes; without TCP_NODELAY on the accepted
    # socket each keep-alive response waits for the peer's delayed ACK (~40 ms).
    async with await serve_rest(app, "127.0.0.1", 0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        request = b"GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n"
        loop = asyncio.get_running_loop()
        timings = []
        for _ in range(15):
            started = loop.time()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            timings.append(loop.time() - started)
        writer.close()
        await writer.wait_closed()
    assert sorted(timings)[len(timings) // 2] < 0.02
