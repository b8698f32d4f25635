"""The server interceptor: request ids, logging, metrics, authentication and error mapping."""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from visionmesh.common.auth import Authenticator, Principal, bind_principal, is_always_public
from visionmesh.common.errors import (
    Internal,
    Unauthenticated,
    VisionMeshError,
    from_rpc_error,
    validate_message,
)
from visionmesh.common.logging import bind_request_id, get_logger, new_request_id
from visionmesh.common.metrics import RpcMetrics

__all__ = ["INTERNAL_ERROR_MESSAGE", "REQUEST_ID_METADATA_KEY", "ServerInterceptor"]

REQUEST_ID_METADATA_KEY = "x-request-id"
INTERNAL_ERROR_MESSAGE = "internal error"

# Caller-supplied ids go into every log line; only accept ones that cannot forge log content.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# Codes that point at the server or its dependencies rather than at the caller's request.
_SERVER_SIDE_CODES = frozenset(
    {
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)

_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

Behavior = Callable[..., Any]


def _metadata_mapping(metadata: Iterable[Any] | None) -> dict[str, str]:
    """First text value per key; binary (`-bin`) entries are skipped."""
    result: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            result.setdefault(key.lower(), value)
    return result


def _status_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code a handler set via set_code/abort, OK when it set none."""
    code: Any = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


class _Call:
    """Book-keeping for one RPC: request id, timing, final code, the log line and metrics."""

    def __init__(
        self,
        interceptor: ServerInterceptor,
        *,
        method: str,
        rpc_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        self.interceptor = interceptor
        self.method = method
        self.rpc_type = rpc_type
        self.metadata = metadata
        supplied = metadata.get(REQUEST_ID_METADATA_KEY, "")
        self.request_id = supplied if _REQUEST_ID_PATTERN.fullmatch(supplied) else new_request_id()
        self.code: grpc.StatusCode | None = None
        self.error: VisionMeshError | None = None
        self.started = time.perf_counter()

    @contextmanager
    def bound(self) -> Iterator[None]:
        metrics = self.interceptor.metrics
        if metrics is not None:
            metrics.observe_started(method=self.method, rpc_type=self.rpc_type)
        with bind_request_id(self.request_id):
            try:
                yield
            except (asyncio.CancelledError, GeneratorExit):
                self.code = self.code or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                self.code = self.code or grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record()

    def _record(self) -> None:
        code = self.code or grpc.StatusCode.OK
        seconds = time.perf_counter() - self.started
        metrics = self.interceptor.metrics
        if metrics is not None:
            metrics.observe_handled(
                method=self.method, rpc_type=self.rpc_type, code=code.name, seconds=seconds
            )
        log = self.interceptor.log
        fields: dict[str, Any] = {
            "method": self.method,
            "code": code.name,
            "duration_ms": round(seconds * 1e3, 3),
        }
        if self.error is not None:
            fields["reason"] = self.error.reason
            fields["error"] = self.error.message
        if is_always_public(self.method):
            log.debug("rpc finished", **fields)
        elif code in _SERVER_SIDE_CODES:
            log.warning("rpc finished", **fields)
        else:
            log.info("rpc finished", **fields)

    async def authenticate(self) -> Principal | None:
        authenticator = self.interceptor.authenticator
        if authenticator is None or is_always_public(self.method):
            return None
        principal = await authenticator.authenticate(method=self.method, metadata=self.metadata)
        if principal is None and not authenticator.is_public(self.method):
            raise Unauthenticated(
                f"{self.method} requires credentials: send 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING",
            )
        return principal

    def succeeded(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.code = _status_code(context)

    def handler_aborted(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        code = _status_code(context)
        self.code = code if code is not grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN

    async def abort_for(self, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The one place exceptions become statuses; always raises (via context.abort)."""
        error: VisionMeshError
        if isinstance(exc, VisionMeshError):
            error = exc
        elif isinstance(exc, grpc.aio.AioRpcError):
            # A downstream call failed and the handler let it through: pass its status on.
            error = from_rpc_error(exc)
        else:
            self.interceptor.log.exception("unhandled exception in rpc handler", method=self.method)
            error = Internal(INTERNAL_ERROR_MESSAGE)
        self.code = error.grpc_code
        self.error = error
        status = error.to_rpc_status()
        status.details.add().Pack(error_details_pb2.RequestInfo(request_id=self.request_id))
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]


def _validate(request: Any) -> None:
    """Contract field rules (buf.validate), checked for every unary request after auth, so
    a caller without credentials learns nothing about the API from validation errors."""
    if isinstance(request, Message):
        validate_message(request)


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every RPC, any arity: binds a request id, authenticates, maps errors, logs, measures.

    Domain errors (VisionMeshError) become their status code with rich details
    (ErrorInfo, BadRequest, ResourceInfo, RequestInfo); failed downstream calls keep their
    status; anything else becomes INTERNAL "internal error" with the traceback logged only.
    With an `authenticator`, a method that is neither always-public (health, reflection)
    nor public for the authenticator needs a principal, which handlers read through
    `visionmesh.common.auth.current_principal()`.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator | None = None,
        metrics: RpcMetrics | None = None,
        logger: structlog.stdlib.BoundLogger | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.metrics = metrics
        self.log = logger if logger is not None else get_logger("visionmesh.rpc")

    async def intercept_service(  # type: ignore[override]  # None means "no such method"
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        method = handler_call_details.method
        metadata = _metadata_mapping(handler_call_details.invocation_metadata)

        def wrap(behavior: Behavior, rpc_type: str, *, streaming_response: bool) -> Behavior:
            streams = inspect.isasyncgenfunction(behavior) or inspect.isgeneratorfunction(behavior)
            if streaming_response and streams:
                return self._wrap_generator(behavior, method, rpc_type, metadata)
            return self._wrap_coroutine(behavior, method, rpc_type, metadata)

        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, "unary", streaming_response=False), **options
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, "server_stream", streaming_response=True), **options
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary, "client_stream", streaming_response=False), **options
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                wrap(handler.stream_stream, "bidi_stream", streaming_response=True), **options
            )
        return handler

    def _wrap_coroutine(
        self, behavior: Behavior, method: str, rpc_type: str, metadata: Mapping[str, str]
    ) -> Behavior:
        """Unary responses, and streaming handlers that write through `context.write`."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(self, method=method, rpc_type=rpc_type, metadata=metadata)
            with call.bound():
                try:
                    with bind_principal(await call.authenticate()):
                        _validate(request)
                        result = behavior(request, context)
                        if inspect.isawaitable(result):
                            result = await result
                    call.succeeded(context)
                    return result
                except grpc.aio.AbortError:
                    call.handler_aborted(context)
                    raise
                except Exception as exc:
                    await call.abort_for(exc, context)
                    raise  # not reached: abort_for always raises

        return handle

    def _wrap_generator(
        self, behavior: Behavior, method: str, rpc_type: str, metadata: Mapping[str, str]
    ) -> Behavior:
        """Streaming handlers written as (async) generators."""

        async def handle(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(self, method=method, rpc_type=rpc_type, metadata=metadata)
            with call.bound():
                try:
                    with bind_principal(await call.authenticate()):
                        _validate(request)
                        responses = behavior(request, context)
                        if hasattr(responses, "__aiter__"):
                            async for response in responses:
                                yield response
                        else:
                            for response in responses:
                                yield response
                    call.succeeded(context)
                except grpc.aio.AbortError:
                    call.handler_aborted(context)
                    raise
                except Exception as exc:
                    await call.abort_for(exc, context)
                    raise  # not reached: abort_for always raises

        return handle
