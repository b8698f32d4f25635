"""The gateway starts on real NATS, S3 and SQL and answers over REST and gRPC."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.gateway.conftest import GatewayHarness


async def test_gateway_serves_health_openapi_and_auth(harness: GatewayHarness) -> None:
    async with harness.http() as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        spec = (await client.get("/openapi.json")).json()
        assert "/v1/training/jobs" in spec["paths"]
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        me = (await client.get("/v1/me")).json()
        assert me["user"]["role"] == "ROLE_ADMIN"
    async with harness.channel() as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
