"""The REST/JSON transcoder: a raw ASGI app dispatching annotated routes to gRPC servicers.

It is the REST adapter of the shared request pipeline (`visionmesh.common.rpc.pipeline`):
routes, binding and JSON are its own; authentication, validation, the call, error mapping,
metrics and the access log are the pipeline's, exactly as for the gRPC server.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from starlette.types import Receive, Scope, Send
from visionmesh.common.auth import Authenticator
from visionmesh.common.errors import (
    Cancelled,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    VisionMeshError,
)
from visionmesh.common.logging import bind_request_id, get_logger
from visionmesh.common.metrics import RpcMetrics, render_metrics
from visionmesh.common.rpc.pipeline import (
    INTERNAL_ERROR_MESSAGE,
    TRANSPORT_REST,
    MethodChain,
    RequestPipeline,
    ResponseStream,
    RpcFailure,
    request_id_from,
)
from visionmesh.gateway.api.rest._binding import RequestBinder
from visionmesh.gateway.api.rest._context import RestCallContext
from visionmesh.gateway.api.rest._json import message_encoder
from visionmesh.gateway.api.rest._openapi import OpenApiInfo, build_openapi
from visionmesh.gateway.api.rest._routes import HttpRoute, http_routes
from visionmesh.gateway.api.rest._uploads import FileUpload, document_upload

__all__ = ["ReadinessCheck", "RestConfig", "RestTranscoder"]

_log = get_logger(__name__)

ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool]]]
"""Returns named dependency checks (`{"database": True, "nats": False}`); ready when all pass."""

REQUEST_ID_HEADER: Final = "x-request-id"
_JSON: Final = (b"content-type", b"application/json")
_SSE_HEADERS: Final = (
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # Stops nginx-style proxies from buffering the stream.
    (b"x-accel-buffering", b"no"),
)
_HEARTBEAT: Final = b": keep-alive\n\n"
_END_EVENT: Final = b"event: end\ndata: {}\n\n"
_MESSAGE, _END, _ERROR = 0, 1, 2


@dataclass(frozen=True, slots=True, kw_only=True)
class RestConfig:
    """Tunables of the transcoder; the defaults suit the web frontend."""

    heartbeat_seconds: float = 15.0
    """An SSE comment is sent after this long without an event, so proxies keep the stream."""
    stream_error_grace_seconds: float = 0.25
    """How long a stream may take to produce its first event before the 200 headers go out;
    errors raised within it (NOT_FOUND for an unknown job) get their HTTP status."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest JSON body accepted (gRPC's default max message size); larger is 413."""
    validate_requests: bool = True
    """Check buf.validate rules (`validate_message`, as the gRPC server does) before the call."""
    readiness_timeout_seconds: float = 5.0
    openapi: OpenApiInfo = field(default_factory=OpenApiInfo)
    file_uploads: tuple[FileUpload, ...] = ()
    """Routes that also take files (multipart/form-data or a raw file body), with their own
    body limit; see `FileUpload`."""


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _has_rules(descriptor: Descriptor, seen: set[str] | None = None) -> bool:
    """Whether protovalidate could reject any instance (it checks nested messages too)."""
    from buf.validate import validate_pb2

    seen = set() if seen is None else seen
    if descriptor.full_name in seen:
        return False
    seen.add(descriptor.full_name)
    if descriptor.GetOptions().HasExtension(validate_pb2.message):  # type: ignore[arg-type]
        return True
    oneof_rule = validate_pb2.oneof
    if any(o.GetOptions().HasExtension(oneof_rule) for o in descriptor.oneofs):  # type: ignore[arg-type]
        return True
    for item in descriptor.fields:
        if item.GetOptions().HasExtension(validate_pb2.field):  # type: ignore[arg-type]
            return True
        if item.message_type is not None and _has_rules(item.message_type, seen):
            return True
    return False


class _Endpoint:
    """Everything one route needs at request time, resolved once at startup."""

    __slots__ = (
        "_encode",
        "binder",
        "chain",
        "full_method",
        "handler",
        "max_body_bytes",
        "public",
        "response_descriptor",
        "response_field",
        "route",
        "sequence_field",
        "upload",
        "validate",
    )

    def __init__(
        self,
        route: HttpRoute,
        servicer: object,
        *,
        pipeline: RequestPipeline,
        public: bool,
        validate: bool,
        max_body_bytes: int,
        upload: FileUpload | None = None,
    ) -> None:
        handler = getattr(servicer, route.method.name, None)
        if handler is None or not callable(handler):
            raise TypeError(f"{type(servicer).__name__} has no method {route.method.name}")
        self.route = route
        self.full_method = route.full_method
        self.handler: Callable[[Message, RestCallContext], Any] = handler
        self.binder = RequestBinder(route)
        self.upload = upload.compile(route.method.input_type) if upload is not None else None
        self.max_body_bytes = (
            max(max_body_bytes, upload.max_body_bytes) if upload is not None else max_body_bytes
        )
        self.public = public
        self.validate = validate and _has_rules(route.method.input_type)
        self.chain: MethodChain = pipeline.method(
            route.full_method,
            rpc_type="server_stream" if route.server_streaming else "unary",
            transport=TRANSPORT_REST,
            validate=self.validate,
        )
        self.response_descriptor = route.method.output_type
        self._encode = message_encoder(route.method.output_type)
        self.response_field = (
            route.method.output_type.fields_by_name[route.response_body].json_name
            if route.response_body
            else None
        )
        sequence = route.method.output_type.fields_by_name.get("sequence")
        self.sequence_field = (
            "sequence"
            if sequence is not None
            and not sequence.is_repeated
            and sequence.cpp_type
            in (
                FieldDescriptor.CPPTYPE_INT32,
                FieldDescriptor.CPPTYPE_INT64,
                FieldDescriptor.CPPTYPE_UINT32,
                FieldDescriptor.CPPTYPE_UINT64,
            )
            else None
        )

    async def invoke(self, request: Message, context: RestCallContext) -> bytes:
        """The servicer call as the pipeline runs it: the response, rendered as JSON.

        Rendering inside the pipeline makes a servicer returning the wrong type an
        INTERNAL error of the call (logged, counted) like any other handler bug.
        """
        result = self.handler(request, context)
        if inspect.isawaitable(result):
            result = await result
        return self.render(result)

    def render(self, message: Any) -> bytes:
        if not isinstance(message, Message) or message.DESCRIPTOR is not self.response_descriptor:
            raise TypeError(
                f"{self.full_method} returned {type(message).__name__}, "
                f"expected {self.response_descriptor.full_name}"
            )
        # proto3 JSON as `MessageToDict(m, always_print_fields_with_no_presence=True)`:
        # fields without presence (scalars, repeated, maps) are always written, so the
        # frontend sees `0`, `""`, `[]` instead of a missing key; unset messages and
        # `optional` scalars stay absent (they carry presence).
        data = self._encode(message)
        if self.response_field is not None:
            data = data.get(self.response_field)
        return _dumps(data)

    def sse_event(self, message: Any) -> bytes:
        data = self.render(message)
        if self.sequence_field is not None:
            sequence = getattr(message, self.sequence_field)
            return b"id: %d\nevent: message\ndata: %s\n\n" % (sequence, data)
        return b"event: message\ndata: %s\n\n" % data


class _ClientGone(Cancelled):
    """The client disconnected before the request body arrived (recorded as CANCELLED)."""

    def __init__(self) -> None:
        super().__init__("the client disconnected")


class RestTranscoder:
    """ASGI app serving every `google.api.http`-annotated RPC of the given services.

    Routes, request binding and the OpenAPI document come only from the descriptors;
    each route calls `getattr(servicer, method.name)(request, context)` on the same
    servicer object the gRPC server uses, with a RestCallContext, through the same
    `RequestPipeline` as the gRPC server: the caller is authenticated (all HTTP headers,
    lower-cased, as metadata and `/pkg.Service/Method` as the method), the body is read
    and bound only then, the request is validated, and errors, metrics
    (`grpc_server_*{transport="rest"}`) and the access log are the pipeline's. Pass the
    gRPC server's `pipeline` to share it; otherwise one is built from `authenticator`
    and the RPC metrics of `registry`. Also serves `/healthz`, `/readyz`, `/metrics` and
    `/openapi.json`. Everything is compiled here, at construction; a servicer missing an
    annotated method, a malformed annotation or two RPCs on one route raise here.

        app = RestTranscoder(
            [(jobs_pb2.DESCRIPTOR.services_by_name["JobService"], job_servicer), ...],
            pipeline=grpc_server.pipeline, readiness=check_ready, registry=registry,
        )
        server = await serve_rest(app, settings.rest_host, settings.rest_port)

    JSON is the proto3 mapping (lowerCamelCase names, enums by name, 64-bit integers as
    strings, Timestamps as RFC 3339) with fields without presence always written; errors
    are the pipeline's `google.rpc.Status` as JSON (`RpcFailure.to_json()`, the same
    details a gRPC caller gets) with the error's HTTP status (unknown errors: 500, generic
    message, traceback logged). `comments` (see `comments_from_descriptor_set`) only
    enrich the OpenAPI document.
    """

    def __init__(
        self,
        services: Iterable[tuple[ServiceDescriptor, object]],
        *,
        authenticator: Authenticator | None = None,
        pipeline: RequestPipeline | None = None,
        readiness: ReadinessCheck | None = None,
        registry: CollectorRegistry | None = None,
        config: RestConfig | None = None,
        comments: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or RestConfig()
        if pipeline is None:
            if authenticator is None:
                raise TypeError("RestTranscoder needs an authenticator or a pipeline")
            pipeline = RequestPipeline(
                authenticator=authenticator,
                metrics=RpcMetrics.of(registry) if registry is not None else None,
            )
        elif authenticator is not None and authenticator is not pipeline.authenticator:
            raise ValueError("authenticator differs from the pipeline's; pass only one")
        self.pipeline = pipeline
        authenticator = pipeline.authenticator
        self._readiness = readiness
        self._registry = registry
        self._closing: asyncio.Event | None = None
        pairs = list(services)
        self.routes: tuple[HttpRoute, ...] = tuple(http_routes(d for d, _ in pairs))
        servicer_by_service = {d.full_name: s for d, s in pairs}
        uploads = {upload.method: upload for upload in self.config.file_uploads}
        unknown_uploads = set(uploads) - {route.full_method for route in self.routes if route.body}
        if unknown_uploads:
            raise ValueError(f"file uploads for no route with a body: {sorted(unknown_uploads)}")
        endpoints = [
            _Endpoint(
                route,
                servicer_by_service[route.method.containing_service.full_name],
                pipeline=pipeline,
                public=authenticator is None or authenticator.is_public(route.full_method),
                validate=self.config.validate_requests,
                max_body_bytes=self.config.max_body_bytes,
                upload=uploads.get(route.full_method),
            )
            for route in self.routes
        ]
        self._fixed: dict[str, Callable[[Scope, Send], Awaitable[None]]] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/openapi.json": self._openapi,
        }
        # Literal paths are one dict lookup; templated ones one combined regex per method,
        # alternatives ordered most specific first (custom verbs, then literal segments).
        self._literal: dict[tuple[str, str], _Endpoint] = {}
        templated: dict[str, list[tuple[int, _Endpoint]]] = {}
        for index, endpoint in enumerate(endpoints):
            template = endpoint.route.template
            if template.text in self._fixed:
                raise ValueError(f"{endpoint.full_method} claims reserved path {template.text}")
            if not template.variables and "*" not in template.canonical():
                key = (endpoint.route.http_method, template.canonical())
                self._literal[key] = endpoint
            else:
                templated.setdefault(endpoint.route.http_method, []).append((index, endpoint))
        self._matchers: dict[str, re.Pattern[str]] = {}
        self._groups: dict[str, tuple[_Endpoint, tuple[str, ...]]] = {}
        for http_method, items in templated.items():
            items.sort(key=lambda item: item[1].route.template.specificity())
            alternatives = []
            for index, endpoint in items:
                prefix = f"r{index}"
                template = endpoint.route.template
                alternatives.append(f"(?P<{prefix}>{template.regex(prefix)})")
                groups = tuple(f"{prefix}_{i}" for i in range(len(template.variables)))
                self._groups[prefix] = (endpoint, groups)
            self._matchers[http_method] = re.compile("|".join(alternatives))
        self._verbs = frozenset(e.route.template.verb for e in endpoints) - {""}
        self._verb_matcher = re.compile(
            "|".join(
                e.route.template.regex(f"v{i}")
                for i, e in enumerate(endpoints)
                if e.route.template.verb
            )
            or "(?!)"
        )
        public = {e.full_method for e in endpoints if e.public}
        self.openapi_document = build_openapi(
            self.routes, info=self.config.openapi, public_methods=public, comments=comments
        )
        for endpoint in endpoints:
            if endpoint.upload is not None:
                route = endpoint.route
                path = self.openapi_document["paths"][route.template.openapi_path()]
                document_upload(
                    path[route.http_method.lower()],
                    endpoint.upload.upload,
                    route.method.input_type,
                )
        self._openapi_bytes = _dumps(self.openapi_document)

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websocket: not served; returning without accepting makes the server close it.

    def close_streams(self) -> None:
        """End every open SSE stream now (without `event: end`, so clients reconnect).

        Call before stopping the HTTP server; `serve_rest` does it for this app.
        """
        self._closing_event().set()

    def _closing_event(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
        return self._closing

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close_streams()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        root = scope.get("root_path")
        if root and path.startswith(root):
            path = path[len(root) :]
        http_method: str = scope["method"]
        fixed = self._fixed.get(path)
        if fixed is not None:
            if http_method in ("GET", "HEAD"):
                await fixed(scope, send)
            else:
                await _send_error(send, _method_not_allowed(http_method, path), None, ("GET",))
            return
        raw_path_bytes: bytes | None = scope.get("raw_path")
        raw_path = raw_path_bytes.decode("latin-1") if raw_path_bytes else path
        if root and raw_path.startswith(root):
            raw_path = raw_path[len(root) :]

        headers: list[tuple[bytes, bytes]] = scope["headers"]
        metadata = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}
        supplied = metadata.get(REQUEST_ID_HEADER)
        request_id = request_id_from(metadata)
        if supplied != request_id:
            # Servicers see the id we use (generated, or replacing an unusable one).
            metadata[REQUEST_ID_HEADER] = request_id
            headers = [h for h in headers if h[0] != b"x-request-id"]
            headers.append((b"x-request-id", request_id.encode()))
        with bind_request_id(request_id):
            endpoint, values = self._match(http_method, raw_path)
            if endpoint is None:
                allowed = self._allowed_methods(raw_path)
                error: VisionMeshError = (
                    _method_not_allowed(http_method, path)
                    if allowed
                    else NotFound(f"no route for {http_method} {path}", reason="ROUTE_NOT_FOUND")
                )
                await _send_error(send, error, request_id, allowed)
                return
            context = RestCallContext(headers=headers, client=scope.get("client"))
            try:
                await self._dispatch(
                    endpoint, values, scope, receive, send, metadata, context, request_id
                )
            except RpcFailure as failure:
                if isinstance(failure.error, _ClientGone):
                    context._mark_cancelled()
                else:
                    await _send_failure(send, failure)
            except Exception:
                # Everything the servicer does is mapped by the pipeline; this is a fault of
                # the transport itself (writing the response), still answered generically.
                _log.exception("REST transport failed", method=endpoint.full_method)
                await _send_error(
                    send,
                    Internal(INTERNAL_ERROR_MESSAGE, metadata={"request_id": request_id}),
                    request_id,
                )
            finally:
                context._mark_done()

    def _match(self, http_method: str, raw_path: str) -> tuple[_Endpoint | None, tuple[str, ...]]:
        endpoint = self._literal.get((http_method, raw_path))
        if endpoint is not None:
            return endpoint, ()
        matcher = self._matchers.get(http_method)
        if matcher is None:
            return None, ()
        found = matcher.fullmatch(raw_path)
        if found is None or found.lastgroup is None:
            return None, ()
        endpoint, groups = self._groups[found.lastgroup]
        if not endpoint.route.template.verb and self._claims_custom_verb(raw_path):
            # `GET /v1/jobs/j1:cancel` is the `:cancel` route with the wrong method (405),
            # not GetJob of an id "j1:cancel".
            return None, ()
        return endpoint, tuple(found.group(g) for g in groups)

    def _claims_custom_verb(self, raw_path: str) -> bool:
        last = raw_path.rpartition("/")[2]
        if ":" not in last or last.rpartition(":")[2] not in self._verbs:
            return False
        return self._verb_matcher.fullmatch(raw_path) is not None

    def _allowed_methods(self, raw_path: str) -> tuple[str, ...]:
        methods = {route.http_method for route in self.routes}
        return tuple(sorted(m for m in methods if self._match(m, raw_path)[0] is not None))

    async def _dispatch(
        self,
        endpoint: _Endpoint,
        path_values: tuple[str, ...],
        scope: Scope,
        receive: Receive,
        send: Send,
        metadata: dict[str, str],
        context: RestCallContext,
        request_id: str,
    ) -> None:
        route = endpoint.route

        async def bind() -> Message:
            # The pipeline calls this after authentication: the body of an unauthenticated
            # caller is never read, so it learns nothing about the schema from errors.
            body = (
                await self._read_body(receive, metadata, endpoint.max_body_bytes)
                if route.body
                else b""
            )
            query_string: bytes = scope.get("query_string", b"")
            content_type = metadata.get("content-type", "")
            if endpoint.upload is not None and endpoint.upload.upload.accepts(content_type):
                request = endpoint.binder.bind(path_values, b"", b"")
                endpoint.upload.bind(request, body, content_type, query_string)
                return request
            return endpoint.binder.bind(
                path_values,
                query_string,
                body,
                metadata.get("last-event-id") if route.server_streaming else None,
            )

        chain = endpoint.chain
        if route.server_streaming:
            responses = await chain.open_stream(
                metadata, None, endpoint.handler, context, request_id=request_id, bind=bind
            )
            await self._stream(endpoint, responses, context, receive, send, request_id)
            return
        payload: bytes = await chain.unary(
            metadata, None, endpoint.invoke, context, request_id=request_id, bind=bind
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    _JSON,
                    (b"content-length", str(len(payload)).encode()),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, receive: Receive, metadata: Mapping[str, str], limit: int) -> bytes:
        declared = metadata.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- server-sent events --------------------------------------------------------------

    async def _stream(
        self,
        endpoint: _Endpoint,
        responses: ResponseStream,
        context: RestCallContext,
        receive: Receive,
        send: Send,
        request_id: str,
    ) -> None:
        """Serve a server-streaming RPC as SSE until it ends, the client goes, or shutdown.

        The servicer's iterator runs in one pump task (so its context and cancel scopes
        behave as under gRPC) feeding a small queue; the response loop multiplexes that
        queue, the client's disconnect and the app's shutdown, and writes heartbeats.
        """
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue(maxsize=16)
        pump = asyncio.ensure_future(_pump(responses, queue))
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        closing = asyncio.ensure_future(self._closing_event().wait())
        get = asyncio.ensure_future(queue.get())
        config = self.config
        started = False
        client_gone = False
        last_write = time.monotonic()
        timeout = config.stream_error_grace_seconds
        try:
            while True:
                done, _ = await asyncio.wait(
                    (get, gone, closing), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    client_gone = True
                    context._mark_cancelled()
                    return
                if get in done:
                    kind, value = get.result()
                    if kind == _ERROR and not started:
                        raise value
                    if not started:
                        await send(_sse_start(request_id))
                        started = True
                    if kind == _MESSAGE:
                        chunk = endpoint.sse_event(value)
                    elif kind == _END:
                        chunk = _END_EVENT
                    else:
                        chunk = b"event: error\ndata: %s\n\n" % _dumps(value.to_json())
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    last_write = time.monotonic()
                    if kind != _MESSAGE:
                        return
                    get = asyncio.ensure_future(queue.get())
                elif closing in done:
                    if not started:
                        await send(_sse_start(request_id))
                        started = True
                    return
                elif not started:
                    await send(_sse_start(request_id))
                    started = True
                else:
                    await send(
                        {"type": "http.response.body", "body": _HEARTBEAT, "more_body": True}
                    )
                    last_write = time.monotonic()
                timeout = max(0.0, config.heartbeat_seconds - (time.monotonic() - last_write))
        except Exception:
            if not started:
                raise
            # Headers are out: all that is left is to log and end the stream.
            _log.exception("SSE stream failed", method=endpoint.full_method)
        finally:
            for task in (get, gone, closing, pump):
                task.cancel()
            # Cancelling the pump throws CancelledError into the servicer's generator at its
            # current await, so its `finally` blocks run before the response completes.
            await asyncio.gather(pump, gone, closing, get, return_exceptions=True)
            if started and not client_gone:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- fixed routes --------------------------------------------------------------------

    async def _healthz(self, scope: Scope, send: Send) -> None:
        await _send_json(send, 200, b'{"status":"ok"}')

    async def _readyz(self, scope: Scope, send: Send) -> None:
        if self._readiness is None:
            await _send_json(send, 200, b'{"status":"ok","checks":{}}')
            return
        try:
            async with asyncio.timeout(self.config.readiness_timeout_seconds):
                checks = dict(await self._readiness())
        except Exception:
            _log.exception("readiness check failed")
            await _send_json(send, 503, _dumps({"status": "unavailable", "checks": {}}))
            return
        ready = all(checks.values())
        body = _dumps({"status": "ok" if ready else "unavailable", "checks": checks})
        await _send_json(send, 200 if ready else 503, body)

    async def _metrics(self, scope: Scope, send: Send) -> None:
        if self._registry is None:
            await _send_error(send, NotFound("no metrics registry configured"), None)
            return
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"accept"), None)
        payload, content_type = render_metrics(self._registry, accept=accept)
        await _send(send, 200, payload, [(b"content-type", content_type.encode())])

    async def _openapi(self, scope: Scope, send: Send) -> None:
        await _send_json(send, 200, self._openapi_bytes)


# --- helpers -------------------------------------------------------------------------------


async def _pump(responses: ResponseStream, queue: asyncio.Queue[tuple[int, Any]]) -> None:
    try:
        async for item in responses:
            await queue.put((_MESSAGE, item))
    except RpcFailure as failure:
        await queue.put((_ERROR, failure))
        return
    finally:
        # A no-op when the stream ended; when the pump is cancelled (client gone, shutdown)
        # it closes the servicer's iterator, whose `finally` blocks run before we answer.
        await responses.aclose()
    await queue.put((_END, None))


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse_start(request_id: str) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [*_SSE_HEADERS, (b"x-request-id", request_id.encode())],
    }


def _method_not_allowed(http_method: str, path: str) -> VisionMeshError:
    error = InvalidArgument(f"{http_method} is not allowed on {path}", reason="METHOD_NOT_ALLOWED")
    error.http_status = 405  # type: ignore[misc]
    return error


def _too_large(limit: int) -> VisionMeshError:
    error = ResourceExhausted(f"request body exceeds {limit} bytes", reason="BODY_TOO_LARGE")
    error.http_status = 413  # type: ignore[misc]
    return error


async def _send_failure(send: Send, failure: RpcFailure) -> None:
    """A failed call: the pipeline's status as JSON, the same details gRPC callers get."""
    await _send_error(send, failure.error, failure.request_id, body=failure.to_json())


async def _send_error(
    send: Send,
    error: VisionMeshError,
    request_id: str | None,
    allowed: tuple[str, ...] = (),
    *,
    body: dict[str, Any] | None = None,
) -> None:
    if body is None:
        body = error.to_json()
    headers = [(b"x-request-id", request_id.encode())] if request_id else []
    if isinstance(error, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    if isinstance(error, ResourceExhausted) and "retry_after_seconds" in error.metadata:
        headers.append((b"retry-after", error.metadata["retry_after_seconds"].encode()))
    if allowed:
        headers.append((b"allow", ", ".join(allowed).encode()))
    await _send(send, error.http_status, _dumps(body), [_JSON, *headers])


async def _send_json(send: Send, status: int, payload: bytes) -> None:
    await _send(send, status, payload, [_JSON, (b"cache-control", b"no-store")])


async def _send(
    send: Send, status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
