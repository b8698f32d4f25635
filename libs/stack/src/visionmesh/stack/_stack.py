"""Starts NATS, the S3 server and the services in order, health-checked; stops them in reverse."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionmesh.common.auth import generate_signing_key, private_key_pem, public_key_pem
from visionmesh.common.embedded import (
    ManagedProcess,
    NatsServer,
    ProcessError,
    ReadyCheck,
    SeaweedPorts,
    SeaweedS3,
    free_ports,
)

# Local-only credentials for the embedded S3 server; it binds 127.0.0.1 only.
S3_ACCESS_KEY = "visionmesh"
S3_SECRET_KEY = "visionmesh-local-secret"


@dataclass(frozen=True, slots=True)
class Ports:
    """Every port the stack listens on. NATS and S3 avoid their standard ports (4222,
    8333), which a system NATS or S3 server may hold already (CI machines run NATS)."""

    gateway_rest: int = 8080
    gateway_grpc: int = 50051
    training_grpc: int = 50061
    export_grpc: int = 50071
    inference_grpc: int = 50081
    kserve_grpc: int = 50082
    kserve_http: int = 50083
    embedding_grpc: int = 50091
    nats: int = 14222
    s3: int = 18333
    s3_internal_base: int = 18340

    @classmethod
    def free(cls) -> Ports:
        """All-ephemeral ports, for tests running a stack next to another."""
        (rest, grpc_port, training, export, inference, kserve, kserve_http, embedding, nats, s3) = (
            free_ports(10)
        )
        return cls(
            gateway_rest=rest,
            gateway_grpc=grpc_port,
            training_grpc=training,
            export_grpc=export,
            inference_grpc=inference,
            kserve_grpc=kserve,
            kserve_http=kserve_http,
            embedding_grpc=embedding,
            nats=nats,
            s3=s3,
            s3_internal_base=0,
        )

    def seaweed(self) -> SeaweedPorts:
        if self.s3_internal_base:
            return SeaweedPorts.fixed(s3=self.s3, base=self.s3_internal_base)
        return SeaweedPorts.pick(s3=self.s3)


DEFAULT_PORTS = Ports()
WORKER_SERVICES = ("training", "export", "inference", "embedding")
"""The worker services `make up` runs next to the gateway, in start order."""


def grpc_health_probe(port: int) -> ReadyCheck:
    async def check() -> bool:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def _ensure_keypair(keys_dir: Path) -> tuple[Path, Path]:
    """The gateway's Ed25519 signing key and its public half, made once per data dir."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    private, public = keys_dir / "gateway-signing-key.pem", keys_dir / "gateway-public-key.pem"
    if not private.exists():
        key = generate_signing_key()
        private.write_bytes(private_key_pem(key))
        private.chmod(0o600)
        public.write_bytes(public_key_pem(key.public_key()))
    return private, public


class Stack:
    """The platform on one machine; state lives under `data_dir`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        ports: Ports = DEFAULT_PORTS,
        extra_env: dict[str, str] | None = None,
        training_workers: int = 1,
        workers: Sequence[str] = WORKER_SERVICES,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.ports = ports
        self.extra_env = dict(extra_env or {})
        self.training_workers = training_workers
        unknown = set(workers) - set(WORKER_SERVICES)
        if unknown:
            raise ValueError(f"unknown worker services {sorted(unknown)}")
        self.workers = tuple(workers)
        """The worker services to run; a test that needs only some starts fewer processes."""
        self.logs = self.data_dir / "logs"
        self.nats = NatsServer(store_dir=self.data_dir / "nats", port=ports.nats, log_dir=self.logs)
        self.s3 = SeaweedS3(
            data_dir=self.data_dir / "s3",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            ports=ports.seaweed(),
            log_dir=self.logs,
        )
        self.services: list[ManagedProcess] = []
        self.restarts: dict[str, int] = {}
        self.held: set[str] = set()
        """Names the supervisor leaves stopped (a test taking a service down on purpose)."""

    def common_env(self) -> dict[str, str]:
        private_key, public_key = _ensure_keypair(self.data_dir / "keys")
        return {
            "VISIONMESH_DATA_DIR": str(self.data_dir),
            "VISIONMESH_NATS_URL": self.nats.url,
            "VISIONMESH_S3_ENDPOINT": self.s3.endpoint,
            "VISIONMESH_S3_ACCESS_KEY": S3_ACCESS_KEY,
            "VISIONMESH_S3_SECRET_KEY": S3_SECRET_KEY,
            "VISIONMESH_S3_BUCKET": "visionmesh",
            "VISIONMESH_SIGNING_KEY_FILE": str(private_key),
            "VISIONMESH_SERVICE_TOKEN_PUBLIC_KEY_FILE": str(public_key),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _service(self, name: str, module: str, port: int, env: dict[str, str]) -> ManagedProcess:
        return ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", module],
            env={**self.common_env(), **env},
            log_dir=self.logs,
            ready_check=grpc_health_probe(port),
            ready_timeout=120.0,
        )

    def plan(self) -> list[ManagedProcess]:
        p = self.ports
        planned: list[ManagedProcess] = []
        if "training" in self.workers:
            planned.append(
                self._service(
                    "training",
                    "visionmesh.training",
                    p.training_grpc,
                    {
                        "VISIONMESH_GRPC_PORT": str(p.training_grpc),
                        "VISIONMESH_WORKERS": str(self.training_workers),
                    },
                )
            )
        if "export" in self.workers:
            planned.append(
                self._service(
                    "export",
                    "visionmesh.export",
                    p.export_grpc,
                    {"VISIONMESH_GRPC_PORT": str(p.export_grpc)},
                )
            )
        if "inference" in self.workers:
            planned.append(
                self._service(
                    "inference",
                    "visionmesh.inference",
                    p.inference_grpc,
                    {
                        "VISIONMESH_GRPC_PORT": str(p.inference_grpc),
                        "VISIONMESH_KSERVE_GRPC_PORT": str(p.kserve_grpc),
                        "VISIONMESH_KSERVE_HTTP_PORT": str(p.kserve_http),
                        # Checks users' API keys and access tokens on the KServe ports.
                        "VISIONMESH_GATEWAY_ADDR": f"127.0.0.1:{p.gateway_grpc}",
                    },
                )
            )
        if "embedding" in self.workers:
            planned.append(
                self._service(
                    "embedding",
                    "visionmesh.embedding",
                    p.embedding_grpc,
                    {
                        "VISIONMESH_GRPC_PORT": str(p.embedding_grpc),
                        # Scene matching asks the inference service for detections.
                        "VISIONMESH_INFERENCE_ADDR": f"127.0.0.1:{p.inference_grpc}",
                    },
                )
            )
        gateway = self._service(
            "gateway",
            "visionmesh.gateway",
            p.gateway_grpc,
            {
                "VISIONMESH_GRPC_PORT": str(p.gateway_grpc),
                "VISIONMESH_REST_PORT": str(p.gateway_rest),
                "VISIONMESH_TRAINING_ADDR": f"127.0.0.1:{p.training_grpc}",
                "VISIONMESH_EXPORT_ADDR": f"127.0.0.1:{p.export_grpc}",
                "VISIONMESH_INFERENCE_ADDR": f"127.0.0.1:{p.inference_grpc}",
                "VISIONMESH_EMBEDDING_ADDR": f"127.0.0.1:{p.embedding_grpc}",
            },
        )
        return [*planned, gateway]

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for infra in (self.nats, self.s3):
            await infra.start()
        for infra in (self.nats, self.s3):
            await infra.wait_ready()
        self.services = self.plan()
        try:
            for service in self.services:
                await service.start()
            for service in self.services:
                await service.wait_ready()
        except BaseException:
            await self.stop()
            raise

    def service(self, name: str) -> ManagedProcess:
        return next(process for process in self.services if process.name == name)

    async def replace_service(self, name: str) -> ManagedProcess:
        """Starts a fresh process for service `name` (e.g. after it was killed)."""
        fresh = next(process for process in self.plan() if process.name == name)
        old = self.service(name)
        if old.running:
            await old.stop()
        await fresh.start()
        await fresh.wait_ready()
        self.services[self.services.index(old)] = fresh
        return fresh

    async def stop(self) -> None:
        for process in [*reversed(self.services), self.s3, self.nats]:
            if process.running:
                await process.stop()

    async def supervise(
        self,
        *,
        report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
        poll: float = 0.5,
        max_backoff: float = 30.0,
        healthy_after: float = 60.0,
    ) -> None:
        """Restarts any process of the stack that exits, with backoff; the others keep running.

        Each restart is reported (and counted in `restarts`). A process that stays up for
        `healthy_after` seconds earns its backoff back down to one second.
        """
        backoff: dict[str, float] = {}
        started: dict[str, float] = {}
        while True:
            await asyncio.sleep(poll)
            for process in [self.nats, self.s3, *self.services]:
                if process.name in self.held:
                    continue
                if process.running:
                    if time.monotonic() - started.get(process.name, 0.0) > healthy_after:
                        backoff[process.name] = 1.0
                    continue
                delay = backoff.get(process.name, 1.0)
                count = self.restarts.get(process.name, 0) + 1
                report(
                    f"{process.name} exited (code {process.returncode}); restarting in "
                    f"{delay:.0f}s (restart {count}; log: {process.log_path})"
                )
                await asyncio.sleep(delay)
                backoff[process.name] = min(delay * 2, max_backoff)
                await process.stop()  # closes the old log handle
                self.restarts[process.name] = count
                started[process.name] = time.monotonic()
                try:
                    await process.start()
                    await process.wait_ready()
                except ProcessError as exc:
                    report(f"{process.name} failed to restart: {exc}")
                    continue
                report(f"{process.name} is back (pid {process.pid})")

    def endpoints(self) -> dict[str, str]:
        p = self.ports
        return {
            "gateway REST": f"http://127.0.0.1:{p.gateway_rest}  (OpenAPI: /openapi.json)",
            "gateway gRPC": f"127.0.0.1:{p.gateway_grpc}",
            "training gRPC": f"127.0.0.1:{p.training_grpc}",
            "export gRPC": f"127.0.0.1:{p.export_grpc}",
            "inference gRPC": f"127.0.0.1:{p.inference_grpc}",
            "embedding gRPC": f"127.0.0.1:{p.embedding_grpc}",
            "KServe v2 (Triton clients)": (
                f"grpc 127.0.0.1:{p.kserve_grpc}, http://127.0.0.1:{p.kserve_http}/v2"
            ),
            "NATS": self.nats.url,
            "S3": f"http://{self.s3.endpoint}  (key {S3_ACCESS_KEY})",
            "state": str(self.data_dir),
            "logs": str(self.logs),
        }

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def data_dir_from_env() -> Path:
    return Path(os.environ.get("VISIONMESH_DATA_DIR", ".visionmesh"))
