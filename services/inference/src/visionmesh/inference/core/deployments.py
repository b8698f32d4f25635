"""Deployments: desired state in SQL, and each replica's loaded models converging on it.

Every replica runs a `DeploymentManager`. Its reconcile loop reads the deployments table and
loads what is missing, swaps in a new generation once it is READY (the old model serves
until then, and finishes its in-flight calls after), and unloads what was removed. A
restarted replica reloads everything from the table; several replicas reach the same set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.db import Database
from visionmesh.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    Unavailable,
    VisionMeshError,
)
from visionmesh.common.logging import get_logger
from visionmesh.inference.core.model import LoadedModel, RepositoryEntry
from visionmesh.inference.core.package import Package, PackageCache
from visionmesh.inference.db.models import DeploymentRow, utcnow

_log = get_logger(__name__)

# How long a load that failed for a transient reason (a peer down) waits before a retry.
TRANSIENT_RETRY_SECONDS = 10.0

Key = tuple[str, str]
"""(tenant id, deployment name)."""


@dataclass(frozen=True)
class DeploymentSource:
    """What a deployment serves and how."""

    export: export_pb2.ExportResult
    export_job_id: str
    backend: str
    device: str

    def same_as(self, row: DeploymentRow) -> bool:
        return (self.export_job_id, self.backend, self.device) == (
            row.export_job_id,
            row.backend,
            row.device,
        )


class DeploymentStore:
    """The deployments table; every write bumps `generation` when what is served changes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(
        self,
        *,
        tenant_id: str,
        name: str,
        source: DeploymentSource,
        replace: bool,
        created_by: str,
    ) -> DeploymentRow:
        """Stores the deployment; the same source again is a no-op returning the row."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(DeploymentRow)
                .where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name)
                .with_for_update()
            )
            if row is not None and source.same_as(row) and row.enabled:
                return row
            if row is not None and not replace and not source.same_as(row):
                raise AlreadyExists(
                    f"deployment {name!r} already serves export job {row.export_job_id!r}; "
                    "set replace to swap it",
                    resource_type="deployment",
                    resource_id=name,
                )
            now = utcnow()
            if row is None:
                row = DeploymentRow(
                    id=str(uuid.uuid4()),
                    tenant_id=tenant_id,
                    name=name,
                    generation=0,
                    created_by=created_by,
                    create_time=now,
                )
                session.add(row)
            row.generation += 1
            row.model_version_id = source.export.model_version_id
            row.export_job_id = source.export_job_id
            row.export = source.export.SerializeToString()
            row.backend = source.backend
            row.device = source.device
            row.enabled = True
            row.update_time = now
        return row

    async def get(self, tenant_id: str, name: str) -> DeploymentRow | None:
        async with self._db.session() as session:
            return await session.scalar(
                select(DeploymentRow).where(
                    DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name
                )
            )

    async def page(self, tenant_id: str, *, after: str = "", limit: int) -> list[DeploymentRow]:
        """The tenant's deployments by name, those after `after`, at most `limit`."""
        async with self._db.session() as session:
            rows = await session.scalars(
                select(DeploymentRow)
                .where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.name > after)
                .order_by(DeploymentRow.name)
                .limit(limit)
            )
            return list(rows)

    async def all(self) -> list[DeploymentRow]:
        async with self._db.session() as session:
            return list(await session.scalars(select(DeploymentRow)))

    async def delete(self, tenant_id: str, name: str) -> DeploymentRow | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(DeploymentRow).where(
                    DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name
                )
            )
            if row is not None:
                await session.execute(delete(DeploymentRow).where(DeploymentRow.id == row.id))
            return row

    async def set_enabled(self, tenant_id: str, name: str, *, enabled: bool) -> DeploymentRow:
        """KServe's repository load/unload: keep the deployment, serve it or not."""
        async with self._db.session() as session:
            row = await session.scalar(
                select(DeploymentRow)
                .where(DeploymentRow.tenant_id == tenant_id, DeploymentRow.name == name)
                .with_for_update()
            )
            if row is None:
                raise NotFound(resource_type="model", resource_id=name)
            if row.enabled != enabled:
                row.enabled = enabled
                if enabled:
                    # A fresh generation makes every replica load it again (a retry of a
                    # FAILED load, which is what a repository load asks for).
                    row.generation += 1
                row.update_time = utcnow()
            return row


def export_of(row: DeploymentRow) -> export_pb2.ExportResult:
    export = export_pb2.ExportResult()
    export.ParseFromString(row.export)
    return export


BuildModel = Callable[[DeploymentRow, Package], Awaitable[LoadedModel]]


class _Served:
    """A loaded model and the calls using it; closed once retired and unused."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.users = 0
        self.retired = False
        self._closed = False

    async def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            await self._close()

    async def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.model.runtime.close()
        except Exception:
            _log.exception("closing a retired model failed", deployment=self.model.name)


@dataclass
class _Slot:
    """This replica's view of one deployment."""

    generation: int = 0
    """The generation the table wants."""
    state: str = "LOADING"
    """LOADING, READY, FAILED or UNAVAILABLE (disabled by a repository unload)."""
    reason: str = ""
    served: _Served | None = None
    loading: asyncio.Task[None] | None = None
    loading_generation: int = 0
    retry_at: float = 0.0
    load_time: datetime | None = None
    enabled: bool = True
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass(frozen=True)
class DeploymentStatus:
    """A deployment as this replica serves it."""

    state: str
    reason: str = ""
    load_time: datetime | None = None
    serving_generation: int = 0


class DeploymentManager:
    """Converges this replica's loaded models on the deployments table."""

    def __init__(
        self,
        *,
        store: DeploymentStore,
        packages: PackageCache,
        build: BuildModel,
        reconcile_seconds: float = 2.0,
    ) -> None:
        self._store = store
        self._packages = packages
        self._build = build
        self._interval = reconcile_seconds
        self._slots: dict[Key, _Slot] = {}
        self._wake = asyncio.Event()
        self._reconciled_once = asyncio.Event()
        self._lock = asyncio.Lock()

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconciles every `reconcile_seconds` or when woken; forever.

        An error in one pass (the database briefly down) is logged and the next pass runs:
        the loop never dies silently. Cancelling it stops it.
        """
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("reconciling deployments failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    @property
    def ready(self) -> bool:
        """True once this replica has read the table at least once."""
        return self._reconciled_once.is_set()

    async def reconcile(self) -> None:
        async with self._lock:
            rows = await self._store.all()
            wanted = {(row.tenant_id, row.name): row for row in rows}
            for key, row in wanted.items():
                self._converge(key, row)
            for key in [key for key in self._slots if key not in wanted]:
                await self._drop(key)
            self._reconciled_once.set()

    def _converge(self, key: Key, row: DeploymentRow) -> None:
        slot = self._slots.setdefault(key, _Slot())
        slot.enabled = row.enabled
        if not row.enabled:
            self._cancel_loading(slot)
            if slot.served is not None:
                served, slot.served = slot.served, None
                asyncio.get_running_loop().create_task(served.retire())
            slot.generation = row.generation
            slot.state, slot.reason = "UNAVAILABLE", "unloaded through the repository API"
            self._notify(slot)
            return
        if slot.generation != row.generation:
            slot.generation = row.generation
            slot.state, slot.reason, slot.retry_at = "LOADING", "", 0.0
        serving = slot.served is not None and slot.served.model.version == str(row.generation)
        if serving:
            return
        if slot.state == "FAILED" and (slot.retry_at == 0.0 or time.monotonic() < slot.retry_at):
            return  # a permanent failure waits for a new generation, a transient one a while
        if slot.loading is not None and slot.loading_generation == row.generation:
            return
        self._cancel_loading(slot)
        slot.state = "LOADING"
        slot.loading_generation = row.generation
        slot.loading = asyncio.get_running_loop().create_task(
            self._load(key, row), name=f"load-{row.tenant_id}-{row.name}-{row.generation}"
        )

    async def _load(self, key: Key, row: DeploymentRow) -> None:
        slot = self._slots[key]
        try:
            package = await self._packages.fetch(export_of(row), export_job_id=row.export_job_id)
            model = await self._build(row, package)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._slots.get(key) is slot and slot.loading_generation == row.generation:
                slot.state, slot.reason = "FAILED", _describe(exc)
                transient = isinstance(exc, Unavailable | OSError)
                slot.retry_at = time.monotonic() + TRANSIENT_RETRY_SECONDS if transient else 0.0
                slot.loading = None
                self._notify(slot)
            _log.warning(
                "deployment failed to load",
                tenant_id=row.tenant_id,
                deployment=row.name,
                generation=row.generation,
                reason=_describe(exc),
            )
            return
        if self._slots.get(key) is not slot or slot.generation != row.generation:
            await model.runtime.close()  # superseded while loading
            return
        previous, slot.served = slot.served, _Served(model)
        slot.state, slot.reason, slot.loading = "READY", "", None
        slot.load_time = utcnow()
        self._notify(slot)
        _log.info(
            "deployment ready",
            tenant_id=row.tenant_id,
            deployment=row.name,
            generation=row.generation,
        )
        if previous is not None:
            await previous.retire()

    def _cancel_loading(self, slot: _Slot) -> None:
        if slot.loading is not None:
            slot.loading.cancel()
            slot.loading = None

    async def _drop(self, key: Key) -> None:
        slot = self._slots.pop(key)
        self._cancel_loading(slot)
        slot.state, slot.reason = "FAILED", "deployment removed"
        self._notify(slot)
        if slot.served is not None:
            await slot.served.retire()

    def _notify(self, slot: _Slot) -> None:
        for waiter in slot.waiters:
            if not waiter.done():
                waiter.set_result(None)
        slot.waiters.clear()

    async def close(self) -> None:
        """Unloads everything (process shutdown)."""
        async with self._lock:
            for key in list(self._slots):
                await self._drop(key)

    # --- what callers see -------------------------------------------------------------------

    def status(self, row: DeploymentRow) -> DeploymentStatus:
        slot = self._slots.get((row.tenant_id, row.name))
        if slot is None:
            return DeploymentStatus(state="UNAVAILABLE" if not row.enabled else "LOADING")
        if slot.generation != row.generation:
            # The table moved on and this replica has not noticed yet.
            state = "UNAVAILABLE" if not row.enabled else "LOADING"
            return DeploymentStatus(state=state, load_time=slot.load_time)
        serving = 0 if slot.served is None else int(slot.served.model.version)
        return DeploymentStatus(
            state=slot.state,
            reason=slot.reason,
            load_time=slot.load_time,
            serving_generation=serving,
        )

    async def wait(self, tenant_id: str, name: str, *, seconds: float) -> None:
        """Returns when this replica's load of the deployment settles (or on timeout)."""
        slot = self._slots.get((tenant_id, name))
        if slot is None or slot.state != "LOADING":
            return
        waiter = asyncio.get_running_loop().create_future()
        slot.waiters.append(waiter)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter, seconds)

    def knows(self, tenant_id: str, name: str) -> bool:
        """Whether this replica has read the deployment from the table."""
        return (tenant_id, name) in self._slots

    @contextlib.asynccontextmanager
    async def acquire(self, tenant_id: str, name: str) -> AsyncIterator[LoadedModel]:
        """The model serving the deployment, held for the duration of one call.

        A swap during the call retires the old model only once the call has finished, which
        is what makes a redeploy lose no request.
        """
        slot = self._slots.get((tenant_id, name))
        served = slot.served if slot is not None else None
        if served is None or served.retired:
            state = slot.state if slot is not None else "LOADING"
            reason = f": {slot.reason}" if slot is not None and slot.reason else ""
            raise FailedPrecondition(
                f"deployment {name!r} is {state}{reason}; it serves once READY",
                reason=f"DEPLOYMENT_{state}",
            )
        served.users += 1
        try:
            yield served.model
        finally:
            await served.release()

    def entries(self, tenant_id: str) -> list[RepositoryEntry]:
        """The tenant's deployments as this replica last read them, for KServe's index."""
        return sorted(
            (
                RepositoryEntry(
                    name=name,
                    version=str(slot.generation),
                    state="UNAVAILABLE" if slot.state == "FAILED" else slot.state,
                    reason=slot.reason,
                )
                for (tenant, name), slot in self._slots.items()
                if tenant == tenant_id
            ),
            key=lambda entry: entry.name,
        )

    def served_models(self, tenant_id: str) -> Sequence[LoadedModel]:
        return [
            slot.served.model
            for (tenant, _), slot in self._slots.items()
            if tenant == tenant_id and slot.served is not None and not slot.served.retired
        ]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VisionMeshError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
