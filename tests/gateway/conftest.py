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
    from visionmesh.export.core.pipeline import ExportPackage

    from tests.gateway.served_inference import InferenceHarness

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


@pytest.fixture(scope="module")
def detect_package(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    """A real export package of a confident random-init YOLO11n at 64 px (once per module)."""
    from visionmesh.api.export.v1 import export_pb2

    from tests.models import export_package, export_target, yolo_checkpoint

    tmp = tmp_path_factory.mktemp("detect-package")
    checkpoint = yolo_checkpoint(tmp / "detect.pt", "yolo11n.yaml", confident=True)
    target = export_target(export_pb2.ExportSpec(), "ultralytics", "detect", ())
    return export_package(tmp / "out", checkpoint, target, images=2)


@pytest.fixture(scope="module")
def classify_package(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    """A real export package of a random-init resnet18 classifier at 64 px (once per module)."""
    from visionmesh.api.export.v1 import export_pb2

    from tests.models import NAMES, classifier_checkpoint, export_package, export_target

    tmp = tmp_path_factory.mktemp("classify-package")
    checkpoint = classifier_checkpoint(tmp / "classify.pt")
    target = export_target(export_pb2.ExportSpec(), "torchvision", "classify", NAMES)
    return export_package(tmp / "out", checkpoint, target, images=2)


@pytest_asyncio.fixture
async def served(
    make_gateway: GatewayFactory,
    nats_server: NatsServer,
    s3_server: SeaweedS3,
    database_url: str,
    tmp_path: Path,
    detect_package: ExportPackage,
) -> AsyncIterator[InferenceHarness]:
    """A gateway in front of the real inference service (served_inference.py), run in-process
    on the gateway's bucket and NATS and verifying the tokens the gateway signs."""
    from visionmesh.common.auth import public_key_pem
    from visionmesh.common.storage import ObjectStoreConfig

    from tests.gateway.served_inference import (
        InferenceHarness,
        inference_settings,
        running_inference,
    )

    key = generate_signing_key()
    key_file = tmp_path / "gateway-signing.pem"
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    public_file = tmp_path / "gateway-public.pem"
    public_file.write_bytes(public_key_pem(key.public_key()))
    store = ObjectStoreConfig(
        endpoint=s3_server.endpoint,
        access_key=S3_ACCESS_KEY,
        secret_key=S3_SECRET_KEY,
        bucket=f"gw-{uuid.uuid4().hex[:16]}",
    )
    # PostgreSQL: one database for both, as deployed (the service keeps its own tables and
    # migration history). SQLite: a file each, so neither waits on the other's write lock.
    inference_db = database_url
    if database_url.startswith("sqlite"):
        inference_db = f"sqlite+aiosqlite:///{tmp_path / 'inference.db'}"
    settings = inference_settings(
        tmp_path / "inference",
        database_url=inference_db,
        store=store,
        public_key_file=public_file,
        nats_url=nats_server.url,
    )
    async with running_inference(settings) as service:
        harness = await make_gateway(
            nats_url=nats_server.url,
            database_url=database_url,
            signing_key_file=key_file,
            inference_addr=f"127.0.0.1:{service.grpc.port}",
            s3_bucket=store.bucket,
        )
        yield InferenceHarness(gateway=harness, service=service, detect=detect_package)
