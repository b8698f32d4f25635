"""RPC plumbing every service shares: server bootstrap, client channel, the request pipeline."""

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
from visionmesh.common.rpc.interceptors import ServerInterceptor
from visionmesh.common.rpc.pipeline import (
    INTERNAL_ERROR_MESSAGE,
    REQUEST_ID_METADATA_KEY,
    TRANSPORT_GRPC,
    TRANSPORT_REST,
    MethodChain,
    RequestPipeline,
    ResponseStream,
    RpcFailure,
    request_id_from,
)
from visionmesh.common.rpc.server import HEALTH_SERVICE_NAME, GrpcServer, server_options

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "HEALTH_SERVICE_NAME",
    "INTERNAL_ERROR_MESSAGE",
    "REQUEST_ID_METADATA_KEY",
    "TRANSPORT_GRPC",
    "TRANSPORT_REST",
    "CallPolicy",
    "GrpcClient",
    "GrpcServer",
    "MethodChain",
    "RequestPipeline",
    "ResponseStream",
    "RetryPolicy",
    "RpcFailure",
    "ServerInterceptor",
    "TokenProvider",
    "client_interceptors",
    "connect",
    "request_id_from",
    "server_options",
]
