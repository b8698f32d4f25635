"""gRPC plumbing every service shares: server bootstrap, client channel, the one interceptor."""

from __future__ import annotations

from visionmesh.common.rpc.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    CallPolicy,
    GrpcClient,
    RetryPolicy,
    TokenProvider,
    client_interceptors,
    connect,
)
from visionmesh.common.rpc.interceptors import (
    INTERNAL_ERROR_MESSAGE,
    REQUEST_ID_METADATA_KEY,
    ServerInterceptor,
)
from visionmesh.common.rpc.server import HEALTH_SERVICE_NAME, GrpcServer, server_options

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "HEALTH_SERVICE_NAME",
    "INTERNAL_ERROR_MESSAGE",
    "REQUEST_ID_METADATA_KEY",
    "CallPolicy",
    "GrpcClient",
    "GrpcServer",
    "RetryPolicy",
    "ServerInterceptor",
    "TokenProvider",
    "client_interceptors",
    "connect",
    "server_options",
]
