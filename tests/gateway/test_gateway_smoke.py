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


async def test_training_rpcs_are_served_through_the_gateway(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        capabilities = (await client.get("/v1/training/capabilities")).json()
        frameworks = {f["name"]: f for f in capabilities["frameworks"]}
        assert set(frameworks) == {"ultralytics", "torchvision"}
        detect = next(t for t in frameworks["ultralytics"]["tasks"] if t["task"] == "detect")
        assert "yolo11n.yaml" in detect["architectures"]
        assert any(d["name"] == "cpu" for d in capabilities["devices"])
        spec = {
            "framework": "ultralytics",
            "task": "detect",
            "model": "yolo11n.yaml",
            "epochs": 1,
            "imgsz": 100,
        }
        bad = await client.post("/v1/training/spec:validate", json={"spec": spec})
        assert bad.status_code == 400
        fields = [v["field"] for d in bad.json()["details"] for v in d.get("fieldViolations", [])]
        assert fields == ["spec.imgsz"]
        good = await client.post("/v1/training/spec:validate", json={"spec": {**spec, "imgsz": 64}})
        assert good.status_code == 200 and good.json()["spec"]["batch"] == 16
    async with harness.http() as anonymous:
        assert (await anonymous.get("/v1/training/capabilities")).status_code == 401
