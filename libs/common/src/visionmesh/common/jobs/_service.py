"""Runs a worker service: its gRPC server and its job workers, supervised as one process."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from grpc_health.v1 import health_pb2
from visionmesh.common.jobs._worker import JobWorker
from visionmesh.common.logging import get_logger
from visionmesh.common.rpc import GrpcServer

_log = get_logger(__name__)


async def serve_workers(server: GrpcServer, workers: list[JobWorker]) -> int:
    """Serves until SIGTERM/SIGINT (exit 0) or until a worker loop dies (exit 1).

    SIGTERM: health turns NOT_SERVING, workers stop pulling, running jobs checkpoint and
    hand back within their `graceful_stop_seconds`, then the server drains.
    A dead loop: health turns NOT_SERVING at once and the process exits non-zero, so
    whatever supervises it (`make up`, Kubernetes, compose) restarts it.
    """
    await server.start()
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, shutdown.set)
            installed.append(sig)
    tasks = {
        asyncio.create_task(worker.run(), name=f"{worker.spec.kind_name}-worker-{i}")
        for i, worker in enumerate(workers)
    }
    requested = asyncio.create_task(shutdown.wait())
    exit_code = 0
    try:
        done, _ = await asyncio.wait({*tasks, requested}, return_when=asyncio.FIRST_COMPLETED)
        dead = [task for task in done if task is not requested]
        if dead:
            exit_code = 1
            for task in dead:
                error = None if task.cancelled() else task.exception()
                _log.error(
                    "job loop died; exiting for a restart", task=task.get_name(), error=repr(error)
                )
            await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        else:
            _log.info("shutdown requested; handing running jobs back")
        for worker in workers:
            worker.stop()
        grace = max((w.spec.graceful_stop_seconds for w in workers), default=0.0) + 10.0
        pending = {task for task in tasks if not task.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
    finally:
        requested.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.stop()
    return exit_code
