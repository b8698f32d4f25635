"""The gRPC adapter of the request pipeline: a grpc.aio server interceptor.

All the work of a call (request id, authentication, validation, error mapping, metrics,
access log) is the shared `RequestPipeline`; this module only plugs it into grpc.aio and
turns a pipeline failure into the call's status (`abort_with_status`, rich details in the
`grpc-status-details-bin` trailer).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import structlog
from visionmesh.common.auth import Authenticator
from visionmesh.common.metrics import RpcMetrics
from visionmesh.common.rpc.pipeline import (
    INTERNAL_ERROR_MESSAGE,
    REQUEST_ID_METADATA_KEY,
    TRANSPORT_GRPC,
    MethodChain,
    RequestPipeline,
    RpcFailure,
    RpcType,
)

__all__ = ["INTERNAL_ERROR_MESSAGE", "REQUEST_ID_METADATA_KEY", "ServerInterceptor"]

Behavior = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_mapping(metadata: Iterable[Any] | None) -> dict[str, str]:
    """First text value per key; binary (`-bin`) entries are skipped."""
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            result.setdefault(key.lower(), value)
    return result


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs every RPC, any arity, through the request pipeline.

    Domain errors (VisionMeshError) become their status code with rich details
    (ErrorInfo, BadRequest, ResourceInfo, RequestInfo); failed downstream calls keep their
    status; anything else becomes INTERNAL "internal error" with the traceback logged only.
    With an `authenticator`, a method that is neither always-public (health, reflection)
    nor public for the authenticator needs a principal, which handlers read through
    `visionmesh.common.auth.current_principal()`. Pass `pipeline` to share one with
    another transport (the gateway's REST layer); otherwise one is built from the rest.

    grpc.aio asks the interceptor for a handler on every call. The wrapped handler of a
    method is built once and reused for as long as the server returns the same inner
    handler, so a call costs a dict lookup here instead of new closures and a new
    RpcMethodHandler; per-call data (metadata) is read from the servicer context.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator | None = None,
        metrics: RpcMetrics | None = None,
        logger: structlog.stdlib.BoundLogger | None = None,
        pipeline: RequestPipeline | None = None,
    ) -> None:
        self.pipeline = pipeline or RequestPipeline(
            authenticator=authenticator, metrics=metrics, logger=logger
        )
        # method -> (the inner handler it was built for, the wrapped handler)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def authenticator(self) -> Authenticator | None:
        return self.pipeline.authenticator

    @property
    def metrics(self) -> RpcMetrics | None:
        return self.pipeline.metrics

    async def intercept_service(  # type: ignore[override]  # None means "no such method"
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._behavior(method, handler.unary_unary, "unary", streams=False), **options
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._behavior(method, handler.unary_stream, "server_stream", streams=True),
                **options,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._behavior(method, handler.stream_unary, "client_stream", streams=False),
                **options,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._behavior(method, handler.stream_stream, "bidi_stream", streams=True),
                **options,
            )
        return handler

    def _behavior(
        self, method: str, behavior: Behavior, rpc_type: RpcType, *, streams: bool
    ) -> Behavior:
        chain = self.pipeline.method(method, rpc_type=rpc_type, transport=TRANSPORT_GRPC)
        generator = inspect.isasyncgenfunction(behavior) or inspect.isgeneratorfunction(behavior)
        if streams and generator:
            return _streaming(chain, behavior)
        # Single responses, and streaming handlers that write through `context.write`.
        return _single(chain, behavior)


def _single(chain: MethodChain, behavior: Behavior) -> Behavior:
    async def handle(request: Any, context: Context) -> Any:
        metadata = _metadata_mapping(context.invocation_metadata())
        try:
            return await chain.unary(metadata, request, behavior, context)
        except RpcFailure as failure:
            await context.abort_with_status(failure.grpc_status())  # type: ignore[attr-defined]

    return handle


def _streaming(chain: MethodChain, behavior: Behavior) -> Behavior:
    async def handle(request: Any, context: Context) -> AsyncIterator[Any]:
        metadata = _metadata_mapping(context.invocation_metadata())
        try:
            responses = await chain.open_stream(metadata, request, behavior, context)
            try:
                async for response in responses:
                    yield response
            finally:
                # Reached early only when grpc closes this generator (call cancelled).
                await responses.aclose()
        except RpcFailure as failure:
            await context.abort_with_status(failure.grpc_status())  # type: ignore[attr-defined]

    return handle
