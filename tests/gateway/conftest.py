"""A real gateway in-process, with a real training service for spec validation and, when a
test asks for one, an export service answering from the shared rules."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.api.training.v1 import training_pb2_grpc
from visionmesh.common.auth import (
    ServiceTokenVerifier,
    generate_signing_key,
    private_key_pem,
)
from visionmesh.common.embedded import NatsServer, SeaweedS3
from visionmesh.common.events import EventBus
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.specs.export import ExportCapabilities, check_export_spec
from visionmesh.export.config import ExportSettings
from visionmesh.gateway.app import Gateway
from visionmesh.gateway.config import GatewaySettings
from visionmesh.training.api.servicer import TrainingServicer
from visionmesh.training.config import TrainingSettings

if TYPE_CHECKING:
    from tests.gateway.inference_service import InferenceHarness

S3_ACCESS_KEY = "visionmesh-test"
S3_SECRET_KEY = "visionmesh-test-secret"


@dataclass
class GatewayHarness:
    gateway: Gateway
    rest_url: str
    grpc_target: str
    nats_url: str
    tmp: Path

    @property
    def settings(self) -> GatewaySettings:
        return self.gateway.settings

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.rest_url, headers=headers, timeout=30)

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.grpc_target)

    async def signup_and_login(self, username: str | None = None) -> str:
        """Signs up (the first user becomes admin) and returns an access token."""
        username = username or f"user-{uuid.uuid4().hex[:8]}"
        async with self.http() as client:
            response = await client.post(
                "/v1/auth/signup", json={"username": username, "password": "correct-horse-1"}
            )
            assert response.status_code == 200, response.text
            response = await client.post(
                "/v1/auth/login", json={"username": username, "password": "correct-horse-1"}
            )
            assert response.status_code == 200, response.text
            return str(response.json()["accessToken"])


async def start_training_server(tmp: Path, public_key_pem: bytes) -> GrpcServer:
    settings = TrainingSettings(
        grpc_port=0,
        nats_url="nats://unused:4222",
        s3_endpoint="unused:9000",
        s3_access_key="unused",
        s3_secret_key="unused",
        data_dir=tmp,
    )
    server = GrpcServer(
        settings=settings,
        authenticator=ServiceTokenVerifier.from_pem([public_key_pem], audience="training"),
    )
    server.add_service(
        training_pb2_grpc.add_TrainingServiceServicer_to_server,
        TrainingServicer(),
        service_name="visionmesh.training.v1.TrainingService",
    )
    await server.start()
    return server


class RulesExportService(export_pb2_grpc.ExportServiceServicer):
    """An export service with fixed capabilities (the real one probes its GPU and TensorRT),
    answering ValidateSpec with the shared rules as the real one does."""

    def __init__(self, capabilities: ExportCapabilities) -> None:
        self.capabilities = capabilities
        self.validated: list[export_pb2.ValidateSpecRequest] = []

    async def GetCapabilities(
        self, request: export_pb2.GetCapabilitiesRequest, context: Any
    ) -> export_pb2.GetCapabilitiesResponse:
        return self.capabilities.to_proto()

    async def ValidateSpec(
        self, request: export_pb2.ValidateSpecRequest, context: Any
    ) -> export_pb2.ValidateSpecResponse:
        self.validated.append(request)
        spec = check_export_spec(
            request.spec,
            framework=request.model_framework,
            task=request.model_task,
            model_imgsz=request.model_imgsz,
            capabilities=self.capabilities,
        )
        return export_pb2.ValidateSpecResponse(spec=spec)


async def start_export_server(
    tmp: Path, public_key_pem: bytes, service: RulesExportService
) -> GrpcServer:
    settings = ExportSettings(
        grpc_port=0,
        nats_url="nats://unused:4222",
        s3_endpoint="unused:9000",
        s3_access_key="unused",
        s3_secret_key="unused",
        data_dir=tmp,
    )
    server = GrpcServer(
        settings=settings,
        authenticator=ServiceTokenVerifier.from_pem([public_key_pem], audience="export"),
    )
    server.add_service(
        export_pb2_grpc.add_ExportServiceServicer_to_server,
        service,
        service_name="visionmesh.export.v1.ExportService",
    )
    await server.start()
    return server


def dead_address() -> str:
    """A local port nobody listens on: a service that is down (or still starting)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


GatewayFactory = Callable[..., Awaitable[GatewayHarness]]


@pytest_asyncio.fixture
async def make_gateway(
    tmp_path: Path, s3_server: SeaweedS3, database_url: str
) -> AsyncIterator[GatewayFactory]:
    """Builds gateways on free ports; each gets its own bucket and key.

    Depends on `database_url` so its gateways stop before that database is dropped.
    """
    started: list[tuple[Gateway, list[GrpcServer]]] = []

    async def make(
        *,
        nats_url: str,
        database_url: str,
        export_service: RulesExportService | None = None,
        **overrides: Any,
    ) -> GatewayHarness:
        """`export_service`: served to the gateway; without it, no export service answers."""
        root = tmp_path / f"gw-{len(started)}"
        root.mkdir()
        # Replicas of one deployment share a key file: pass `signing_key_file`.
        key_file = overrides.get("signing_key_file") or root / "signing.pem"
        if key_file.exists():
            key = load_pem_private_key(key_file.read_bytes(), password=None)
        else:
            key = generate_signing_key()
            key_file.write_bytes(private_key_pem(key))
            key_file.chmod(0o600)
        from visionmesh.common.auth import public_key_pem

        assert isinstance(key, Ed25519PrivateKey)
        public_pem = public_key_pem(key.public_key())
        training = await start_training_server(root, public_pem)
        peers = [training]
        export_addr = dead_address()
        if export_service is not None:
            export = await start_export_server(root, public_pem, export_service)
            peers.append(export)
            export_addr = f"127.0.0.1:{export.port}"
        settings = GatewaySettings(
            **{
                "grpc_port": 0,
                "rest_port": 0,
                "data_dir": root,
                "database_url": database_url,
                "nats_url": nats_url,
                "s3_endpoint": s3_server.endpoint,
                "s3_access_key": S3_ACCESS_KEY,
                "s3_secret_key": S3_SECRET_KEY,
                "s3_bucket": f"gw-{uuid.uuid4().hex[:16]}",
                "training_addr": f"127.0.0.1:{training.port}",
                "export_addr": export_addr,
                "signing_key_file": key_file,
                "outbox_poll_seconds": 0.2,
                **overrides,  # e.g. training_addr of a training service that is down
            }
        )
        gateway = Gateway(settings)
        await gateway.start()
        started.append((gateway, peers))
        assert gateway.rest is not None
        return GatewayHarness(
            gateway=gateway,
            rest_url=f"http://127.0.0.1:{gateway.rest.port}",
            grpc_target=f"127.0.0.1:{gateway.grpc.port}",
            nats_url=nats_url,
            tmp=root,
        )

    yield make
    for gateway, peers in reversed(started):
        await gateway.stop()
        for peer in peers:
            await peer.stop(0)


@pytest_asyncio.fixture
async def harness(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> GatewayHarness:
    """A gateway on the shared NATS server, once per database backend."""
    return await make_gateway(nats_url=nats_server.url, database_url=database_url)


@pytest_asyncio.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EventBus]:
    async with EventBus(servers=nats_server.url, name="test-worker") as event_bus:
        yield event_bus


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest_asyncio.fixture
async def served(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str, tmp_path: Path
) -> AsyncIterator[InferenceHarness]:
    """A gateway whose inference service is the recording stand-in (inference_service.py)."""
    from visionmesh.common.auth import public_key_pem

    from tests.gateway.inference_service import (
        InferenceHarness,
        RecordingInference,
        start_inference_server,
    )

    key = generate_signing_key()
    key_file = tmp_path / "gateway-signing.pem"
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    service = RecordingInference()
    server = await start_inference_server(tmp_path, public_key_pem(key.public_key()), service)
    try:
        harness = await make_gateway(
            nats_url=nats_server.url,
            database_url=database_url,
            signing_key_file=key_file,
            inference_addr=f"127.0.0.1:{server.port}",
        )
        yield InferenceHarness(gateway=harness, service=service)
    finally:
        await server.stop(0)
