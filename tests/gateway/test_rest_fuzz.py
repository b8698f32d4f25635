"""Property-based fuzzing of the REST API from its own OpenAPI document: no 5xx, ever."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from visionmesh.stack import Ports, Stack


@pytest.fixture(scope="module")
def running_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The platform as processes; yields (base URL, admin token)."""
    stack = Stack(data_dir=tmp_path_factory.mktemp("fuzz") / "state", ports=Ports.free())
    asyncio.run(stack.start())
    try:
        base = f"http://127.0.0.1:{stack.ports.gateway_rest}"
        credentials = {"username": f"fuzz-{uuid.uuid4().hex[:6]}", "password": "fuzz-password"}
        with httpx.Client(base_url=base, timeout=30) as client:
            client.post("/v1/auth/signup", json=credentials).raise_for_status()
            token = client.post("/v1/auth/login", json=credentials).json()["accessToken"]
        yield base, token
    finally:
        asyncio.run(stack.stop())


def test_openapi_document_is_valid(running_gateway: tuple[str, str]) -> None:
    from openapi_spec_validator import validate

    base, _ = running_gateway
    document = httpx.get(f"{base}/openapi.json", timeout=30).json()
    validate(document)
    assert "/v1/training/jobs" in document["paths"]


def test_no_request_makes_the_gateway_fail(running_gateway: tuple[str, str]) -> None:
    """Every operation in /openapi.json, with generated valid and invalid inputs."""
    base, token = running_gateway
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    headers = {"authorization": f"Bearer {token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: schemathesis.Case) -> None:
            # An unknown job's event stream answers at once; the timeout bounds the rest.
            response = case.call(base_url=base, headers=headers, timeout=10)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

        call()
    assert operations >= 25  # every annotated gateway RPC, plus the fixed routes
    assert not failures, "\n".join(failures[:20])
