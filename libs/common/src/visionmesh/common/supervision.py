"""Process-level supervision: a background loop that ends takes its process down, loudly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Collection
from typing import Any

from grpc_health.v1 import health_pb2
from visionmesh.common.logging import get_logger
from visionmesh.common.rpc import GrpcServer

_log = get_logger(__name__)


async def until_signal_or_loop_exit(
    tasks: Collection[asyncio.Task[Any]],
) -> list[asyncio.Task[Any]]:
    """Waits for SIGTERM/SIGINT (returns []) or for any of `tasks` to end (returns those).

    Background loops are meant to run for ever: one that returns or raises has stopped
    doing its job, and the process must not go on looking healthy without it.
    """
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, shutdown.set)
            installed.append(sig)
    requested = asyncio.create_task(shutdown.wait())
    try:
        done, _ = await asyncio.wait({*tasks, requested}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        requested.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
    dead = [task for task in done if task is not requested]
    for task in dead:
        error = None if task.cancelled() else task.exception()
        _log.error(
            "background loop ended; exiting for a restart", loop=task.get_name(), error=repr(error)
        )
    return dead


async def mark_not_serving(server: GrpcServer) -> None:
    """Health NOT_SERVING for every service, before the process drains and exits."""
    await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in server.service_names:
        await server.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
