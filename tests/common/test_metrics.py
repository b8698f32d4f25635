"""RPC metrics on per-server registries, the /metrics HTTP endpoint and text rendering."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from prometheus_client import CollectorRegistry
from visionmesh.common.errors import NotFound
from visionmesh.common.metrics import (
    RpcMetrics,
    new_registry,
    render_metrics,
    start_metrics_http_server,
)
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import ServiceSettings

pytestmark = pytest.mark.timeout(20)

SERVICE = "visionmesh.tests.v1.Metered"
StringValue = wrappers_pb2.StringValue


async def _echo(request: StringValue, context: Any) -> StringValue:
    if request.value == "missing":
        raise NotFound(resource_type="thing", resource_id="1")
    return request


def _server(**overrides: Any) -> GrpcServer:
    settings = ServiceSettings(**({"grpc_port": 0} | overrides))
    server = GrpcServer(settings=settings)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, StringValue.FromString, StringValue.SerializeToString
            )
        },
    )
    server.add_generic_handler(handler, service_name=SERVICE)
    return server


def _handled(registry: CollectorRegistry, code: str) -> float | None:
    return registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": SERVICE,
            "grpc_method": "Echo",
            "grpc_type": "unary",
            "transport": "grpc",
            "grpc_code": code,
        },
    )


async def test_server_counts_rpcs_by_method_and_code() -> None:
    async with (
        _server() as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        echo = channel.unary_unary(
            f"/{SERVICE}/Echo",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=StringValue.FromString,
        )
        await echo(StringValue(value="a"))
        await echo(StringValue(value="b"))
        with pytest.raises(grpc.aio.AioRpcError):
            await echo(StringValue(value="missing"))

    assert _handled(server.registry, "OK") == 2
    assert _handled(server.registry, "NOT_FOUND") == 1
    labels = {
        "grpc_service": SERVICE,
        "grpc_method": "Echo",
        "grpc_type": "unary",
        "transport": "grpc",
    }
    assert server.registry.get_sample_value("grpc_server_started_total", labels) == 3
    assert server.registry.get_sample_value("grpc_server_handling_seconds_count", labels) == 3


def test_registries_are_independent() -> None:
    first, second = new_registry(), new_registry(process_metrics=False)
    RpcMetrics.create(first)
    RpcMetrics.create(second)  # would raise "Duplicated timeseries" on a shared registry
    with pytest.raises(ValueError, match="Duplicated"):
        RpcMetrics.create(first)


async def test_http_endpoint_serves_registry_on_ephemeral_port() -> None:
    registry = new_registry(process_metrics=False)
    metrics = RpcMetrics.create(registry)
    metrics.observe_handled(method="/pkg.Svc/Do", rpc_type="unary", code="OK", seconds=0.01)
    server = start_metrics_http_server(port=0, registry=registry)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert server.port > 0
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b'grpc_server_handled_total{grpc_code="OK",grpc_method="Do"' in body
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_grpc_server_exposes_metrics_port_from_settings() -> None:
    async with _server(metrics_port=_free_port()) as server:
        assert server.metrics_port is not None
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"grpc_server_started_total" in body or b"# HELP grpc_server_started" in body
    assert server.metrics_port is None


async def test_metrics_disabled_by_default() -> None:
    async with _server() as server:
        assert server.metrics_port is None


def test_render_metrics_negotiates_format() -> None:
    registry = new_registry(process_metrics=False)
    RpcMetrics.create(registry).observe_started(method="/pkg.Svc/Do", rpc_type="unary")
    body, content_type = render_metrics(registry)
    assert content_type.startswith("text/plain")
    assert b'grpc_server_started_total{grpc_method="Do",grpc_service="pkg.Svc"' in body
    body, content_type = render_metrics(registry, accept="application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
