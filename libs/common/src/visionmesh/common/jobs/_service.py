"""Runs a worker service: its gRPC server and its job workers, supervised as one process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from visionmesh.common.events import EventBus
from visionmesh.common.jobs._metrics import JobMetrics
from visionmesh.common.jobs._worker import JobHandler, JobWorker, JobWorkerSpec
from visionmesh.common.logging import get_logger
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import (
    JobWorkerSettings,
    NatsSettings,
    ObjectStoreSettings,
    ServiceSettings,
    ServiceTokenAuthSettings,
    service_token_authenticator,
)
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import ensure_job_streams, job_kind_token
from visionmesh.common.supervision import mark_not_serving, until_signal_or_loop_exit

_log = get_logger(__name__)


async def serve_workers(
    server: GrpcServer,
    workers: list[JobWorker],
    *,
    loops: Sequence[tuple[str, Coroutine[Any, Any, None]]] = (),
) -> int:
    """Serves until SIGTERM/SIGINT (exit 0) or until a worker loop dies (exit 1).

    `loops` are the service's other background loops, by name (e.g. a reconcile loop):
    supervised like the workers, cancelled at shutdown.

    SIGTERM: health turns NOT_SERVING, workers stop pulling, running jobs checkpoint and
    hand back within their `graceful_stop_seconds`, then the server drains.
    A dead loop: health turns NOT_SERVING at once and the process exits non-zero, so
    whatever supervises it (`make up`, Kubernetes, compose) restarts it.
    """
    await server.start()
    tasks = {
        asyncio.create_task(worker.run(), name=f"{worker.spec.kind_name}-worker-{i}")
        for i, worker in enumerate(workers)
    }
    others = {asyncio.create_task(loop, name=name) for name, loop in loops}
    exit_code = 0
    try:
        if await until_signal_or_loop_exit(tasks | others):
            exit_code = 1
        else:
            _log.info("shutdown requested; handing running jobs back")
        # Either way this process is going: say so before the hand-back, not after it.
        await mark_not_serving(server)
        for worker in workers:
            worker.stop()
        grace = max((w.spec.graceful_stop_seconds for w in workers), default=0.0) + 10.0
        pending = {task for task in tasks if not task.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
    finally:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await server.stop()
    return exit_code


class WorkerServiceSettings(
    NatsSettings,
    ObjectStoreSettings,
    ServiceTokenAuthSettings,
    JobWorkerSettings,
    ServiceSettings,
):
    """What every worker service is configured with; services add their own fields."""


class RegisterFn(Protocol):
    def __call__(self, servicer: Any, server: Any, /) -> None: ...


def worker_spec(kind: int, settings: JobWorkerSettings) -> JobWorkerSpec:
    return JobWorkerSpec(
        kind=kind,
        ack_wait_seconds=settings.ack_wait_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        max_deliveries=settings.max_deliveries,
        transient_retry_limit=settings.transient_retry_limit,
        graceful_stop_seconds=settings.graceful_stop_seconds,
    )


async def serve_worker_service(
    settings: WorkerServiceSettings,
    *,
    kind: int,
    handler: Callable[[ObjectStore], JobHandler],
    services: Sequence[tuple[RegisterFn, Any, str]] = (),
    warm_up: Callable[[], None] | None = None,
) -> int:
    """A whole worker service: the gRPC server (service tokens required, fails closed),
    `settings.workers` job workers running `handler` on jobs of `kind`, and supervision.
    Returns the exit code: 0 after SIGTERM, 1 when a job loop died."""
    name = job_kind_token(kind)
    server = GrpcServer(
        settings=settings, authenticator=service_token_authenticator(settings, audience=name)
    )
    for register, servicer, service_name in services:
        server.add_service(register, servicer, service_name=service_name)
    if warm_up is not None:
        # Import heavy stacks now, not in the first job.
        await asyncio.to_thread(warm_up)
    store = ObjectStore(settings.object_store_config())
    try:
        await store.ensure_bucket()
        return await serve_with_job_workers(
            settings, kind=kind, server=server, handler=handler(store)
        )
    finally:
        store.close()


async def serve_with_job_workers(
    settings: WorkerServiceSettings,
    *,
    kind: int,
    server: GrpcServer,
    handler: JobHandler,
    loops: Sequence[tuple[str, Coroutine[Any, Any, None]]] = (),
) -> int:
    """`settings.workers` job workers running `handler` on jobs of `kind`, next to `server`
    and the service's other `loops`, supervised (`serve_workers`) until SIGTERM or a dead
    loop. For services that build their own server (their own authenticator, more ports)."""
    name = job_kind_token(kind)
    async with EventBus(servers=settings.nats_url, name=f"{name}-{os.getpid()}") as bus:
        await ensure_job_streams(bus)
        metrics = JobMetrics.create(server.registry)
        spec = worker_spec(kind, settings)
        workers = [
            JobWorker(bus=bus, handler=handler, spec=spec, metrics=metrics)
            for _ in range(settings.workers)
        ]
        get_logger(f"visionmesh.{name}").info(
            "job workers starting", workers=len(workers), kind=name
        )
        return await serve_workers(server, workers, loops=loops)
