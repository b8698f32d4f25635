"""Prometheus metrics on a per-server registry: standard RPC metrics and the /metrics endpoint."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Self
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "MethodMetrics",
    "MetricsHttpServer",
    "RpcMetrics",
    "new_registry",
    "render_metrics",
    "split_method",
    "start_metrics_http_server",
]

# Latency buckets from 1 ms to 5 min: quick lookups and minutes-long batch RPCs both resolve.
_RPC_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


def new_registry(*, process_metrics: bool = True) -> CollectorRegistry:
    """A fresh registry (never the global one, so one process can host many servers in tests)."""
    registry = CollectorRegistry(auto_describe=True)
    if process_metrics:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


@dataclass(frozen=True, slots=True)
class RpcMetrics:
    """Server RPC metrics, named like go-grpc-prometheus so stock dashboards work.

    Every series also carries `transport` (`grpc` or `rest`): the gateway serves the same
    methods over both, through one request pipeline, so a method has one set of series
    per transport and `sum without (transport)` gives the method's total.
    """

    registry: CollectorRegistry
    started: Counter
    handled: Counter
    handling_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Self:
        labels = ("grpc_service", "grpc_method", "grpc_type", "transport")
        return cls(
            registry=registry,
            started=Counter(
                "grpc_server_started",
                "RPCs started on the server.",
                labels,
                registry=registry,
            ),
            handled=Counter(
                "grpc_server_handled",
                "RPCs completed on the server, by status code.",
                (*labels, "grpc_code"),
                registry=registry,
            ),
            handling_seconds=Histogram(
                "grpc_server_handling_seconds",
                "Time from RPC start to its status being sent.",
                labels,
                registry=registry,
                buckets=_RPC_BUCKETS,
            ),
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> RpcMetrics:
        """The RPC metrics of `registry`, created on first use.

        Servers of one process sharing a registry (the gateway's gRPC server and its REST
        transcoder) share one set of metrics instead of failing on duplicate names.
        """
        with _SHARED_LOCK:
            metrics = _SHARED.get(registry)
            if metrics is None:
                metrics = _SHARED[registry] = cls.create(registry)
            return metrics

    def for_method(self, method: str, *, rpc_type: str, transport: str) -> MethodMetrics:
        """The label children of one method, resolved once (`labels()` costs a lock per call)."""
        service, name = split_method(method)
        labels = (service, name, rpc_type, transport)
        return MethodMetrics(
            labels=labels,
            _handled_family=self.handled,
            _started=self.started.labels(*labels),
            _seconds=self.handling_seconds.labels(*labels),
            _handled={},
        )

    def observe_started(self, *, method: str, rpc_type: str, transport: str = "grpc") -> None:
        service, name = split_method(method)
        self.started.labels(service, name, rpc_type, transport).inc()

    def observe_handled(
        self, *, method: str, rpc_type: str, code: str, seconds: float, transport: str = "grpc"
    ) -> None:
        service, name = split_method(method)
        self.handled.labels(service, name, rpc_type, transport, code).inc()
        self.handling_seconds.labels(service, name, rpc_type, transport).observe(seconds)


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, RpcMetrics] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class MethodMetrics:
    """`RpcMetrics` bound to one method and transport; what the request pipeline records."""

    labels: tuple[str, str, str, str]
    _handled_family: Counter
    _started: Counter
    _seconds: Histogram
    _handled: dict[str, Counter]

    def started(self) -> None:
        self._started.inc()

    def handled(self, code: str, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._handled_family.labels(*self.labels, code)
        child.inc()
        self._seconds.observe(seconds)


def split_method(method: str) -> tuple[str, str]:
    """`/pkg.Service/Method` → (`pkg.Service`, `Method`)."""
    service, _, name = method.lstrip("/").partition("/")
    return service, name


@dataclass(frozen=True, slots=True)
class MetricsHttpServer:
    """A running /metrics HTTP endpoint; `port` is the bound port (useful when asked for 0)."""

    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_http_server(
    *, port: int, registry: CollectorRegistry, host: str = "127.0.0.1"
) -> MetricsHttpServer:
    """Serve `registry` over HTTP on a daemon thread; port 0 picks a free port."""
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsHttpServer(port=int(httpd.server_address[1]), _httpd=httpd, _thread=thread)


def render_metrics(registry: CollectorRegistry, *, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its Content-Type, negotiated from an Accept header (gateway)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
