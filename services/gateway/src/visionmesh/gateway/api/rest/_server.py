"""Runs the REST transcoder with uvicorn inside the gateway's event loop."""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp
from visionmesh.common.asgi import AsgiServer, serve_asgi
from visionmesh.gateway.api.rest._app import RestTranscoder

__all__ = ["RestServer", "serve_rest"]

RestServer = AsgiServer


async def serve_rest(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    grace_seconds: float = 5.0,
    access_log: bool = False,
    **uvicorn_options: Any,
) -> RestServer:
    """Start uvicorn for `app` as a task of the running loop; returns once it accepts.

    Stop with `await server.stop()` or `async with await serve_rest(...)`; open SSE streams
    of a RestTranscoder end first, other requests get `grace_seconds` before they are
    cancelled.
    """
    transcoder = isinstance(app, RestTranscoder)
    return await serve_asgi(
        app,
        host,
        port,
        grace_seconds=grace_seconds,
        lifespan="on" if transcoder else "auto",
        before_stop=app.close_streams if isinstance(app, RestTranscoder) else None,
        access_log=access_log,
        **uvicorn_options,
    )
