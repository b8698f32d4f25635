"""One request pipeline under every transport: auth -> validation -> call -> error mapping,
with RPC metrics and the access log around it.

Like KServe's dataplane under its REST and gRPC servers, the transports are thin adapters:
the grpc.aio interceptor (`visionmesh.common.rpc.interceptors`) and the gateway's REST
transcoder hand this pipeline the caller's metadata, the request (or a way to bind it) and
the servicer method, and turn its outcome back into their wire format. Which credentials a
method needs, which requests are rejected before the servicer runs, the status and rich
details of every error, the metric series and the access-log line therefore come from one
place and are the same for both transports; only the `transport` label and log field say
which one carried the call.

Everything that does not change between calls (metric label children, whether a method is
public, whether it is validated) is resolved once per method in a `MethodChain`, so a call
pays only for the steps themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, Protocol

import grpc
import structlog
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from visionmesh.common.auth import Authenticator, Principal, bind_principal, is_always_public
from visionmesh.common.errors import (
    Internal,
    Unauthenticated,
    VisionMeshError,
    error_class_for_code,
    from_rpc_error,
    validate_message,
)
from visionmesh.common.logging import bind_request_id, get_logger, new_request_id
from visionmesh.common.metrics import MethodMetrics, RpcMetrics

__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "REQUEST_ID_METADATA_KEY",
    "TRANSPORT_GRPC",
    "TRANSPORT_REST",
    "MethodChain",
    "RequestPipeline",
    "ResponseStream",
    "RpcFailure",
    "RpcType",
    "request_id_from",
]

REQUEST_ID_METADATA_KEY: Final = "x-request-id"
INTERNAL_ERROR_MESSAGE: Final = "internal error"
TRANSPORT_GRPC: Final = "grpc"
TRANSPORT_REST: Final = "rest"

RpcType = Literal["unary", "server_stream", "client_stream", "bidi_stream"]

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
_OK = grpc.StatusCode.OK
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

Handler = Callable[[Any, Any], Any]
"""A servicer method: `(request, context)` returning the response, an awaitable of it, or
(streaming) an iterator of responses."""

Binder = Callable[[], Awaitable[Any]]
"""Produces the request after authentication (REST reads and binds the body only then)."""


class StatusContext(Protocol):
    """What the pipeline reads from a servicer context: a status the handler set itself."""

    def code(self) -> Any: ...

    def details(self) -> Any: ...


def request_id_from(metadata: Mapping[str, str]) -> str:
    """The caller's `x-request-id` when it is safe to log, else a fresh one."""
    supplied = metadata.get(REQUEST_ID_METADATA_KEY)
    if supplied and _REQUEST_ID_PATTERN.fullmatch(supplied):
        return supplied
    return new_request_id()


def _set_code(context: StatusContext) -> grpc.StatusCode | None:
    """The code a handler set via `set_code`/`abort` (None when none, or OK)."""
    code = context.code()
    if code is None or code is _OK:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        found = _CODE_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
        return None if found is _OK else found
    return grpc.StatusCode.UNKNOWN


def _error_for_code(code: grpc.StatusCode, details: Any) -> VisionMeshError:
    """A status a handler set itself (`set_code`/`set_details`), as the matching error."""
    if not (isinstance(details, str) and details):
        details = code.name.lower().replace("_", " ")
    return error_class_for_code(code)(details)


class RpcFailure(Exception):
    """A failed call as every transport reports it.

    `error` is the VisionMeshError the failure mapped to (status code, HTTP status,
    message, reason); `status` is the one `google.rpc.Status` both transports send: the
    error's rich details followed by a RequestInfo naming the call's request id. gRPC
    sends it as the call status (`grpc_status()`), REST as the JSON error body (`to_json()`).
    """

    def __init__(self, error: VisionMeshError, request_id: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id
        status = error.to_rpc_status()
        status.details.add().Pack(error_details_pb2.RequestInfo(request_id=request_id))
        self.status: status_pb2.Status = status

    @property
    def code(self) -> grpc.StatusCode:
        return self.error.grpc_code

    def grpc_status(self) -> grpc.Status:
        """The status for `context.abort_with_status`: code, message, details trailer."""
        return rpc_status.to_status(self.status)

    def to_json(self) -> dict[str, Any]:
        """The REST error body: `{"code", "status", "message", "details"}`, details with @type."""
        return {
            "code": self.error.http_status,
            "status": self.error.status_name,
            "message": self.status.message,
            "details": [
                json_format.MessageToDict(detail, preserving_proto_field_name=False)
                for detail in self.status.details
            ],
        }


class RequestPipeline:
    """The chain every call runs through, whichever transport carried it.

    1. request id: the caller's `x-request-id` when safe, else a new one, bound for logs;
    2. authentication: with an `authenticator`, every method that is neither always
       public (health, reflection) nor public for the authenticator needs a principal
       (UNAUTHENTICATED otherwise); handlers read it via `current_principal()`;
    3. binding (REST: the body is read and bound only for authenticated callers);
    4. validation: buf.validate rules of the request, after auth, so callers without
       credentials learn nothing about the API from validation errors;
    5. the servicer method;
    6. error mapping: VisionMeshErrors keep their status and rich details, failed
       downstream calls keep theirs, a code the handler set is honoured, anything else is
       INTERNAL "internal error" with the traceback only in the log;

    around which `grpc_server_*` metrics (labelled with the transport) and one access-log
    line ("rpc finished", written just after the call) are recorded per call.

    `authenticator.is_public(method)` is asked once per method, when its chain is built:
    the set of public methods is static (it is part of the API contract).
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
        self._chains: dict[tuple[str, str, str, bool], MethodChain] = {}

    def method(
        self, method: str, *, rpc_type: RpcType, transport: str, validate: bool = True
    ) -> MethodChain:
        """The chain for `/pkg.Service/Method` on one transport, built once and reused."""
        key = (method, rpc_type, transport, validate)
        chain = self._chains.get(key)
        if chain is None:
            chain = self._chains[key] = MethodChain(
                self, method, rpc_type=rpc_type, transport=transport, validate=validate
            )
        return chain


class MethodChain:
    """The pipeline compiled for one method on one transport; `unary` and `open_stream` run it.

    Both return the servicer's response(s) or raise `RpcFailure`. One exception passes
    through unmapped: `grpc.aio.AbortError`, raised after a gRPC handler's own
    `context.abort()` already sent its status (recorded here with that code).
    """

    __slots__ = (
        "_authenticator",
        "_log",
        "_log_level",
        "_metrics",
        "_needs_principal",
        "_validate",
        "method",
        "rpc_type",
        "transport",
    )

    def __init__(
        self,
        pipeline: RequestPipeline,
        method: str,
        *,
        rpc_type: RpcType,
        transport: str,
        validate: bool,
    ) -> None:
        self.method = method
        self.rpc_type = rpc_type
        self.transport = transport
        always_public = is_always_public(method)
        authenticator = pipeline.authenticator
        self._authenticator = None if always_public else authenticator
        self._needs_principal = authenticator is not None and not (
            always_public or authenticator.is_public(method)
        )
        self._validate = validate
        self._metrics: MethodMetrics | None = (
            pipeline.metrics.for_method(method, rpc_type=rpc_type, transport=transport)
            if pipeline.metrics is not None
            else None
        )
        self._log = pipeline.log
        # Health checks and reflection arrive every few seconds from probes: debug only.
        self._log_level = "debug" if always_public else "info"

    # --- the steps --------------------------------------------------------------------

    async def _prologue(
        self, metadata: Mapping[str, str], request: Any, bind: Binder | None
    ) -> tuple[Principal | None, Any]:
        principal: Principal | None = None
        authenticator = self._authenticator
        if authenticator is not None:
            principal = await authenticator.authenticate(method=self.method, metadata=metadata)
            if principal is None and self._needs_principal:
                raise Unauthenticated(
                    f"{self.method} requires credentials: send 'authorization: Bearer <token>'",
                    reason="TOKEN_MISSING",
                )
        if bind is not None:
            request = await bind()
        if self._validate and isinstance(request, Message):
            validate_message(request)
        return principal, request

    def _map(self, exc: Exception, context: StatusContext, request_id: str) -> VisionMeshError:
        """The one place exceptions become statuses."""
        if isinstance(exc, VisionMeshError):
            return exc
        if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
            # A downstream call failed and the handler let it through: pass its status on.
            return from_rpc_error(exc)  # type: ignore[arg-type]
        code = _set_code(context)
        if code is not None:
            # The handler set a code before raising (generated base classes do this for
            # unimplemented methods): that code is the answer, as grpc itself would send.
            return _error_for_code(code, context.details())
        self._log.exception(
            "unhandled exception in rpc handler",
            method=self.method,
            transport=self.transport,
            exc_info=exc,
        )
        return Internal(INTERNAL_ERROR_MESSAGE, metadata={"request_id": request_id})

    def _record(
        self,
        code: grpc.StatusCode,
        error: VisionMeshError | None,
        started: float,
        request_id: str,
    ) -> None:
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.handled(code.name, seconds)
        fields: dict[str, Any] = {
            "method": self.method,
            "transport": self.transport,
            "code": code.name,
            "duration_ms": round(seconds * 1e3, 3),
            "request_id": request_id,
        }
        if error is not None:
            fields["reason"] = error.reason
            fields["error"] = error.message
        level = "warning" if code in _SERVER_SIDE_CODES else self._log_level
        # Rendering a log line costs more than the rest of the pipeline together (~50-90 us
        # with the console renderer), so it is written right after the call instead of
        # inside it: the response leaves first. The duration above is already taken, and
        # the copied context keeps whatever the call bound (request id, structlog vars).
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._access_log(level, fields)
        else:
            loop.call_soon(self._access_log, level, fields, context=contextvars.copy_context())

    def _access_log(self, level: str, fields: dict[str, Any]) -> None:
        getattr(self._log, level)("rpc finished", **fields)

    # --- single response -----------------------------------------------------------------

    async def unary(
        self,
        metadata: Mapping[str, str],
        request: Any,
        handler: Handler,
        context: StatusContext,
        *,
        request_id: str | None = None,
        bind: Binder | None = None,
    ) -> Any:
        """Run one call with a single response (or a writer-style streaming handler).

        `request` is the decoded request, or a request iterator (client streams); with
        `bind`, it is ignored and `await bind()` produces it after authentication.
        """
        request_id = request_id or request_id_from(metadata)
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.started()
        code = _OK
        error: VisionMeshError | None = None
        with bind_request_id(request_id):
            try:
                principal, request = await self._prologue(metadata, request, bind)
                with bind_principal(principal):
                    response = handler(request, context)
                    if inspect.isawaitable(response):
                        response = await response
                set_code = _set_code(context)
                if set_code is not None:
                    # Set without raising: the status is still the handler's choice.
                    raise _error_for_code(set_code, context.details())
                return response
            except grpc.aio.AbortError:
                code = _set_code(context) or grpc.StatusCode.UNKNOWN
                raise
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                error = self._map(exc, context, request_id)
                code = error.grpc_code
                raise RpcFailure(error, request_id) from exc
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                self._record(code, error, started, request_id)

    # --- streamed responses --------------------------------------------------------------

    async def open_stream(
        self,
        metadata: Mapping[str, str],
        request: Any,
        handler: Handler,
        context: StatusContext,
        *,
        request_id: str | None = None,
        bind: Binder | None = None,
    ) -> ResponseStream:
        """Authenticate, bind and validate now; the responses follow from the returned stream.

        Failures before the first response raise `RpcFailure` here, so a transport can
        still answer them with a plain error (REST: an HTTP status instead of an SSE
        `event: error`). The call is recorded when the stream ends, fails or is closed.
        """
        request_id = request_id or request_id_from(metadata)
        started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.started()
        with bind_request_id(request_id):
            try:
                principal, request = await self._prologue(metadata, request, bind)
                with bind_principal(principal):
                    responses = handler(request, context)
                    if inspect.isawaitable(responses):
                        responses = await responses
            except (asyncio.CancelledError, GeneratorExit):
                self._record(grpc.StatusCode.CANCELLED, None, started, request_id)
                raise
            except grpc.aio.AbortError:
                code = _set_code(context) or grpc.StatusCode.UNKNOWN
                self._record(code, None, started, request_id)
                raise
            except Exception as exc:
                error = self._map(exc, context, request_id)
                self._record(error.grpc_code, error, started, request_id)
                raise RpcFailure(error, request_id) from exc
        return ResponseStream(self, responses, principal, context, request_id, started)


class ResponseStream:
    """A streaming call's responses, each produced with the call's principal and request id.

    Iterate it to the end, or `aclose()` it when the consumer stops early (client gone,
    shutdown): either way the call is recorded exactly once.
    """

    __slots__ = (
        "_chain",
        "_context",
        "_done",
        "_iterator",
        "_principal",
        "_started",
        "request_id",
    )

    def __init__(
        self,
        chain: MethodChain,
        responses: Any,
        principal: Principal | None,
        context: StatusContext,
        request_id: str,
        started: float,
    ) -> None:
        self._chain = chain
        self._iterator: AsyncIterator[Any] = (
            responses.__aiter__() if hasattr(responses, "__aiter__") else _aiter(responses)
        )
        self._principal = principal
        self._context = context
        self.request_id = request_id
        self._started = started
        self._done = False

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        chain = self._chain
        with bind_request_id(self.request_id), bind_principal(self._principal):
            try:
                return await self._iterator.__anext__()
            except StopAsyncIteration:
                set_code = _set_code(self._context)
                if set_code is None:
                    self._finish(_OK, None)
                    raise
                error = _error_for_code(set_code, self._context.details())
                self._finish(error.grpc_code, error)
                raise RpcFailure(error, self.request_id) from None
            except grpc.aio.AbortError:
                self._finish(_set_code(self._context) or grpc.StatusCode.UNKNOWN, None)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                self._finish(grpc.StatusCode.CANCELLED, None)
                raise
            except Exception as exc:
                error = chain._map(exc, self._context, self.request_id)
                self._finish(error.grpc_code, error)
                raise RpcFailure(error, self.request_id) from exc

    async def aclose(self) -> None:
        """Stop early: closes the servicer's iterator (its `finally` runs) as CANCELLED."""
        if self._done:
            return
        self._finish(grpc.StatusCode.CANCELLED, None)
        aclose = getattr(self._iterator, "aclose", None)
        if aclose is not None:
            with bind_request_id(self.request_id), bind_principal(self._principal):
                await aclose()

    def _finish(self, code: grpc.StatusCode, error: VisionMeshError | None) -> None:
        if not self._done:
            self._done = True
            self._chain._record(code, error, self._started, self.request_id)


async def _aiter(items: Iterable[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item
