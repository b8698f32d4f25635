"""REST/JSON transcoding of the annotated gRPC API, generated from the service descriptors."""

from __future__ import annotations

from visionmesh.gateway.api.rest._app import ReadinessCheck, RestConfig, RestTranscoder
from visionmesh.gateway.api.rest._binding import RequestBinder, query_parameters
from visionmesh.gateway.api.rest._context import RestCallContext
from visionmesh.gateway.api.rest._openapi import (
    OpenApiInfo,
    build_openapi,
    comments_from_descriptor_set,
)
from visionmesh.gateway.api.rest._routes import HttpRoute, RouteConflictError, http_routes
from visionmesh.gateway.api.rest._server import RestServer, serve_rest
from visionmesh.gateway.api.rest._template import PathTemplate, PathTemplateError, parse_template
from visionmesh.gateway.api.rest._uploads import (
    MAX_PREDICT_IMAGE_BYTES,
    MAX_PREDICT_IMAGES,
    PREDICT_UPLOAD,
    FileUpload,
    parse_multipart,
)

__all__ = [
    "MAX_PREDICT_IMAGES",
    "MAX_PREDICT_IMAGE_BYTES",
    "PREDICT_UPLOAD",
    "FileUpload",
    "HttpRoute",
    "OpenApiInfo",
    "PathTemplate",
    "PathTemplateError",
    "ReadinessCheck",
    "RequestBinder",
    "RestCallContext",
    "RestConfig",
    "RestServer",
    "RestTranscoder",
    "RouteConflictError",
    "build_openapi",
    "comments_from_descriptor_set",
    "http_routes",
    "parse_multipart",
    "parse_template",
    "query_parameters",
    "serve_rest",
]
