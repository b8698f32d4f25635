"""GrpcServer: one grpc.aio server per service, with health, reflection and graceful shutdown."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry
from visionmesh.common.auth import Authenticator
from visionmesh.common.logging import get_logger
from visionmesh.common.metrics import (
    MetricsHttpServer,
    RpcMetrics,
    new_registry,
    start_metrics_http_server,
)
from visionmesh.common.rpc.interceptors import ServerInterceptor
from visionmesh.common.rpc.pipeline import RequestPipeline
from visionmesh.common.settings import ServiceSettings

__all__ = ["HEALTH_SERVICE_NAME", "GrpcServer", "server_options"]

HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

RegisterFn = Callable[[Any, grpc.aio.Server], None]


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    """Channel arguments every service server uses."""
    return [
        ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
        ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
        # Without this a second process on the same fixed port would silently share it.
        ("grpc.so_reuseport", 0),
    ]


class _GenericOnly:
    """The grpc.aio server as generated `add_*Servicer_to_server` functions see it.

    They register every service twice: a generic handler and "registered" method
    handlers. grpc.aio keeps one pending accept per registered method and waits on all of
    them again for every call it accepts (asyncio.wait over ~30 futures for the gateway:
    ~28 us per accepted call, against ~11 us for one). The generic handler serves the same
    methods with a dict lookup, so only it is passed on.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


@dataclass(frozen=True, slots=True)
class _Registration:
    register: RegisterFn | None
    servicer: Any
    service_name: str


class GrpcServer:
    """A service's gRPC server: interceptors, limits, health, reflection, metrics, shutdown.

    Register services before `start()`::

        server = GrpcServer(settings=settings, authenticator=verifier)
        server.add_service(
            training_pb2_grpc.add_TrainingServiceServicer_to_server,
            TrainingServicer(core),
            service_name="visionmesh.training.v1.TrainingService",
        )
        await server.serve_forever()   # SIGTERM/SIGINT -> NOT_SERVING, drain, stop
    """

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        authenticator: Authenticator | None = None,
        registry: CollectorRegistry | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        enable_reflection: bool = True,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else new_registry()
        self.metrics = RpcMetrics.of(self.registry)
        self.pipeline = RequestPipeline(authenticator=authenticator, metrics=self.metrics)
        """The request pipeline every call runs through; hand it to other transports of
        this process (the gateway's REST layer) so they share auth, errors and metrics."""
        self.health = health_aio.HealthServicer()
        self._interceptor = ServerInterceptor(pipeline=self.pipeline)
        self._extra_interceptors = tuple(interceptors)
        self._reflection = enable_reflection
        self._registrations: list[_Registration] = []
        self._server: grpc.aio.Server | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._port: int | None = None
        self._shutdown_requested: asyncio.Event | None = None
        self._stopped = False
        self._log = get_logger("visionmesh.rpc.server")

    # --- registration -------------------------------------------------------------------

    def add_service(self, register: RegisterFn, servicer: Any, *, service_name: str) -> None:
        """Register a generated servicer: `add_XServicer_to_server`, the servicer, its full name."""
        self._check_not_started()
        self._registrations.append(_Registration(register, servicer, service_name))

    def add_generic_handler(self, handler: grpc.GenericRpcHandler, *, service_name: str) -> None:
        """Register a hand-built handler (`grpc.method_handlers_generic_handler`)."""
        self._check_not_started()
        self._registrations.append(_Registration(None, handler, service_name))

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(r.service_name for r in self._registrations)

    def _check_not_started(self) -> None:
        if self._server is not None:
            raise RuntimeError("register services before GrpcServer.start()")

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when settings asked for 0); only after start()."""
        if self._port is None:
            raise RuntimeError("GrpcServer is not started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.settings.grpc_host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_http.port if self._metrics_http is not None else None

    async def start(self) -> int:
        """Bind, start serving and mark every service SERVING; returns the bound port."""
        self._check_not_started()
        server = grpc.aio.server(
            interceptors=[self._interceptor, *self._extra_interceptors],
            options=server_options(self.settings),
        )
        registrar: Any = _GenericOnly(server)
        for registration in self._registrations:
            if registration.register is None:
                server.add_generic_rpc_handlers((registration.servicer,))
            else:
                registration.register(registration.servicer, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        if self._reflection:
            # What enable_server_reflection does for a grpc.aio.Server (it picks the
            # servicer by the server's type, which the registrar is not).
            names = (*self.service_names, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(names),  # type: ignore[attr-defined]
                registrar,
            )
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind gRPC server to {address}: {exc}") from exc
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC server to {address}")
        self._server = server
        self._port = port
        self._shutdown_requested = asyncio.Event()
        await server.start()
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.settings.metrics_port:
            self._metrics_http = start_metrics_http_server(
                port=self.settings.metrics_port,
                registry=self.registry,
                host=self.settings.grpc_host,
            )
        self._log.info(
            "grpc server started",
            address=self.address,
            services=list(self.service_names),
            metrics_port=self.metrics_port,
        )
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight RPCs finish for `grace` seconds, then stop.

        `grace=None` uses `settings.shutdown_grace_seconds`. Safe to call twice.
        """
        if self._server is None or self._stopped:
            return
        self._stopped = True
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        # Health first, so load balancers and watchers stop routing here before we drain.
        await self.health.enter_graceful_shutdown()
        self._log.info("grpc server stopping", grace_seconds=grace)
        await self._server.stop(grace)
        if self._metrics_http is not None:
            self._metrics_http.close()
            self._metrics_http = None
        self._log.info("grpc server stopped")

    def request_shutdown(self) -> None:
        """Ask `serve_forever` to shut down gracefully; what SIGTERM and SIGINT trigger."""
        if self._shutdown_requested is not None:
            self._shutdown_requested.set()

    async def serve_forever(self) -> None:
        """Start if needed, serve until SIGTERM/SIGINT or `request_shutdown()`, stop gracefully."""
        if self._server is None:
            await self.start()
        assert self._shutdown_requested is not None
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_shutdown)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                # Not the main thread, or a platform without signals: shutdown stays
                # available through request_shutdown().
                pass
        try:
            await self._shutdown_requested.wait()
            self._log.info("shutdown requested")
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
