"""KServe v2 over REST: Triton's /v2 routes as an ASGI app over the dataplane, and its server.

Calls run through the same `RequestPipeline` as the gRPC servicer (hand it the KServe gRPC
server's `pipeline`), so credentials, error mapping, metrics (transport "rest") and the
access log are shared; a call is named after its gRPC method, e.g.
`/inference.GRPCInferenceService/ModelInfer`. Errors answer with Triton's body,
`{"error": "<message>"}`, and the HTTP status of the error (tritonclient.http raises it as
InferenceServerException with that message). The health routes need no credentials.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from visionmesh.common.asgi import AsgiServer, serve_asgi
from visionmesh.common.auth import Authenticator, require_principal
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.rpc.pipeline import TRANSPORT_REST, RequestPipeline, RpcFailure
from visionmesh.inference.api.kserve import (
    HEADER_LENGTH,
    KSERVE_SERVICE_NAME,
    KServeDataplane,
    decode_http_request,
    encode_http_response,
    message_json,
)

__all__ = [
    "DEFAULT_MAX_REQUEST_BYTES",
    "KServeHttpServer",
    "create_kserve_app",
    "serve_kserve_http",
]

DEFAULT_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
_JSON: Final = "application/json"


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, separators=(",", ":")), status_code=status, media_type=_JSON)


def _error(status: int, message: str, request_id: str | None = None) -> Response:
    response = _json({"error": message}, status)
    if request_id:
        response.headers["x-request-id"] = request_id
    return response


class _NoStatus:
    """The pipeline's view of a handler context: REST handlers never set a status."""

    def code(self) -> None:
        return None

    def details(self) -> None:
        return None


_NO_STATUS: Final = _NoStatus()

Call = Callable[[bytes], Awaitable[Response]]


class _KServeRoutes:
    def __init__(
        self, dataplane: KServeDataplane, pipeline: RequestPipeline, max_request_bytes: int
    ) -> None:
        self.dataplane = dataplane
        self.pipeline = pipeline
        self.max_request_bytes = max_request_bytes

    # --- the pipeline around every authenticated route -------------------------------------

    async def _run(self, request: Request, rpc: str, call: Call) -> Response:
        chain = self.pipeline.method(
            f"/{KSERVE_SERVICE_NAME}/{rpc}",
            rpc_type="unary",
            transport=TRANSPORT_REST,
            validate=False,
        )
        metadata = {key.lower(): value for key, value in request.headers.items()}

        async def bind() -> bytes:
            # Read only after authentication: anonymous callers cannot make us buffer bodies.
            return await self._body(request) if request.method == "POST" else b""

        try:
            response: Response = await chain.unary(
                metadata, None, lambda body, _context: call(body), _NO_STATUS, bind=bind
            )
        except RpcFailure as failure:
            return _error(failure.error.http_status, failure.error.message, failure.request_id)
        return response

    async def _body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InvalidArgument.for_field("body", f"larger than {limit} bytes")
        body = await request.body()
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            # tritonclient compresses requests on request (request_compression_algorithm).
            window = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
            inflater = zlib.decompressobj(window)
            try:
                body = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                raise InvalidArgument.for_field("body", f"not valid {encoding}: {exc}") from None
        elif encoding != "identity":
            raise InvalidArgument.for_field(
                "content-encoding", f"{encoding!r} is not one of gzip, deflate, identity"
            )
        if len(body) > limit:
            raise InvalidArgument.for_field("body", f"larger than {limit} bytes")
        return body

    @staticmethod
    def _model(request: Request) -> tuple[str, str]:
        params = request.path_params
        return str(params["name"]), str(params.get("version", ""))

    @staticmethod
    def _document(body: bytes) -> dict[str, Any]:
        if not body.strip():
            return {}
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument.for_field("body", f"not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise InvalidArgument.for_field("body", "must be a JSON object")
        return document

    # --- health: public ---------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.live() else 400)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.dataplane.ready() else 400)

    # --- server and models ------------------------------------------------------------------

    async def server_metadata(self, request: Request) -> Response:
        async def call(body: bytes) -> Response:
            require_principal()
            return _message(self.dataplane.server_metadata())

        return await self._run(request, "ServerMetadata", call)

    async def model_metadata(self, request: Request) -> Response:
        name, version = self._model(request)

        async def call(body: bytes) -> Response:
            return _message(self.dataplane.model_metadata(require_principal(), name, version))

        return await self._run(request, "ModelMetadata", call)

    async def model_ready(self, request: Request) -> Response:
        name, version = self._model(request)

        async def call(body: bytes) -> Response:
            if self.dataplane.model_ready(require_principal(), name, version):
                return Response(status_code=200)
            # KServe: a 4xx status says "not ready"; Triton sends 400.
            return _error(400, f"model {name!r} is not ready")

        return await self._run(request, "ModelReady", call)

    async def model_config(self, request: Request) -> Response:
        name, version = self._model(request)

        async def call(body: bytes) -> Response:
            return _message(self.dataplane.model_config(require_principal(), name, version))

        return await self._run(request, "ModelConfig", call)

    async def model_statistics(self, request: Request) -> Response:
        name, version = self._model(request) if "name" in request.path_params else ("", "")

        async def call(body: bytes) -> Response:
            stats = self.dataplane.model_statistics(require_principal(), name, version)
            return _message(stats)

        return await self._run(request, "ModelStatistics", call)

    async def infer(self, request: Request) -> Response:
        name, version = self._model(request)
        header = request.headers.get(HEADER_LENGTH)

        async def call(body: bytes) -> Response:
            principal = require_principal()
            header_length: int | None = None
            if header is not None:
                if not header.strip().isdigit():
                    raise InvalidArgument.for_field(HEADER_LENGTH, "must be a byte count")
                header_length = int(header)
            decoded = decode_http_request(
                body, header_length=header_length, model_name=name, model_version=version
            )
            content, json_length = encode_http_response(
                await self.dataplane.infer(principal, decoded)
            )
            if json_length is None:
                return Response(content, media_type=_JSON)
            return Response(
                content,
                media_type="application/octet-stream",
                headers={HEADER_LENGTH: str(json_length)},
            )

        return await self._run(request, "ModelInfer", call)

    # --- repository -------------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        async def call(body: bytes) -> Response:
            ready = self._document(body).get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument.for_field("ready", "must be a boolean")
            index = self.dataplane.repository_index(require_principal(), ready_only=ready)
            # Triton answers a bare JSON array of the models.
            return _json([message_json(model) for model in index.models])

        return await self._run(request, "RepositoryIndex", call)

    async def load(self, request: Request) -> Response:
        name = str(request.path_params["name"])

        async def call(body: bytes) -> Response:
            parameters = _parameters(self._document(body))
            await self.dataplane.load(require_principal(), name, parameters=parameters)
            return Response(status_code=200)

        return await self._run(request, "RepositoryModelLoad", call)

    async def unload(self, request: Request) -> Response:
        name = str(request.path_params["name"])

        async def call(body: bytes) -> Response:
            parameters = _parameters(self._document(body))
            await self.dataplane.unload(require_principal(), name, parameters=parameters)
            return Response(status_code=200)

        return await self._run(request, "RepositoryModelUnload", call)


def _message(message: Message) -> Response:
    return _json(message_json(message))


def _parameters(document: dict[str, Any]) -> list[str]:
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidArgument.for_field("parameters", "must be a JSON object")
    return list(parameters)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in Triton's error body."""
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, str(exc.detail))
    return _error(500, "internal error")


def create_kserve_app(
    dataplane: KServeDataplane,
    *,
    pipeline: RequestPipeline | None = None,
    authenticator: Authenticator | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> Starlette:
    """The /v2 REST API over `dataplane`.

    Pass the KServe gRPC server's `pipeline` to share its authenticator and metrics, or an
    `authenticator` for a pipeline of the app's own; with neither, every route but health
    answers 401 (nobody is authenticated).
    """
    if pipeline is None:
        pipeline = RequestPipeline(authenticator=authenticator)
    routes = _KServeRoutes(dataplane, pipeline, max_request_bytes)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    table: list[Route] = [
        Route("/v2/health/live", routes.live, methods=["GET"]),
        Route("/v2/health/ready", routes.ready, methods=["GET"]),
        Route("/v2", routes.server_metadata, methods=["GET"]),
        # Before /v2/models/{name}: Triton's statistics of every model.
        Route("/v2/models/stats", routes.model_statistics, methods=["GET"]),
        Route("/v2/repository/index", routes.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", routes.load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", routes.unload, methods=["POST"]),
    ]
    for prefix in (model, versioned):
        table += [
            Route(prefix, routes.model_metadata, methods=["GET"]),
            Route(f"{prefix}/ready", routes.model_ready, methods=["GET"]),
            Route(f"{prefix}/config", routes.model_config, methods=["GET"]),
            Route(f"{prefix}/stats", routes.model_statistics, methods=["GET"]),
            Route(f"{prefix}/infer", routes.infer, methods=["POST"]),
        ]
    return Starlette(routes=table, exception_handlers={HTTPException: _http_error})


# --- the server ------------------------------------------------------------------------------

KServeHttpServer = AsgiServer


async def serve_kserve_http(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, *, grace_seconds: float = 5.0
) -> KServeHttpServer:
    """Start uvicorn for `app` in the running loop; returns once it accepts (port 0: any)."""
    return await serve_asgi(app, host, port, grace_seconds=grace_seconds, lifespan="off")
