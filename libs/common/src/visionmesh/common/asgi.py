"""Runs an ASGI app with uvicorn inside the caller's event loop (REST next to gRPC).

Needs the `http` extra (`visionmesh-common[http]`: starlette, uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
from starlette.types import ASGIApp

__all__ = ["AsgiServer", "serve_asgi"]


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the host process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(slots=True)
class AsgiServer:
    """A running server; `port` is the bound port (the real one when asked for 0)."""

    host: str
    port: int
    _server: uvicorn.Server = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _before_stop: Callable[[], None] | None = field(default=None, repr=False)
    grace_seconds: float = 5.0

    async def stop(self) -> None:
        """Stop accepting; in-flight requests get `grace_seconds` before they are cancelled."""
        if self._task.done():
            await _result(self._task)
            return
        self._server.should_exit = True
        if self._before_stop is not None:
            self._before_stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=self.grace_seconds + 2)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        await _result(self._task)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _result(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve_asgi(
    app: ASGIApp,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    grace_seconds: float = 5.0,
    lifespan: Literal["on", "off", "auto"] = "auto",
    before_stop: Callable[[], None] | None = None,
    access_log: bool = False,
    **uvicorn_options: Any,
) -> AsgiServer:
    """Start uvicorn for `app` as a task of the running loop; returns once it accepts.

    The socket is bound here, so a taken port raises OSError at once and port 0 reports
    the ephemeral port chosen. `before_stop` runs when stopping begins (e.g. to end
    long-lived streams, which would otherwise hold the grace period).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle + delayed ACKs add ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        host=host,
        port=bound_port,
        lifespan=lifespan,
        access_log=access_log,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=grace_seconds,  # type: ignore[arg-type]  # float works
        **uvicorn_options,
    )
    server = _EmbeddedServer(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            sock.close()
            try:
                await task  # surfaces the startup error
            except SystemExit as exc:  # uvicorn exits the process on lifespan failure
                raise RuntimeError("HTTP server failed to start") from exc
            raise RuntimeError("HTTP server exited during startup")
        await asyncio.sleep(0.005)
    return AsgiServer(
        host=host,
        port=bound_port,
        _server=server,
        _task=task,
        _before_stop=before_stop,
        grace_seconds=grace_seconds,
    )
