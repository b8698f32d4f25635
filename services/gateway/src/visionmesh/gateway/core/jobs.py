"""Jobs: creation with a transactional outbox, queries, cancel, and live watching."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.auth import Principal, require_principal
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import job_control_subject, job_request_subject
from visionmesh.gateway.core import convert, states
from visionmesh.gateway.core.datasets import DatasetsCore
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db

SpecValidator = Callable[[training_pb2.TrainingSpec, str], Awaitable[training_pb2.TrainingSpec]]
"""Checks a training spec against a dataset task and returns it with defaults filled in."""

_WATCH_POLL_SECONDS = 1.0


class CachedSpecValidator:
    """Remembers the training service's accepted specs for `ttl` seconds.

    Validation is a pure function of (spec, dataset task) for a given training service
    version, and teams submit the same spec over and over (sweeps over datasets, re-runs),
    so a short cache saves a round trip per job; the TTL bounds staleness across a rollout
    of the training service. Rejections are not cached.
    """

    def __init__(self, validate: SpecValidator, *, ttl: float = 60.0, size: int = 1024) -> None:
        self._validate = validate
        self._ttl = ttl
        self._size = size
        self._accepted: dict[tuple[bytes, str], tuple[float, bytes]] = {}

    async def __call__(
        self, spec: training_pb2.TrainingSpec, dataset_task: str
    ) -> training_pb2.TrainingSpec:
        key = (spec.SerializeToString(deterministic=True), dataset_task)
        now_s = time.monotonic()
        hit = self._accepted.get(key)
        if hit is not None and hit[0] > now_s:
            return training_pb2.TrainingSpec.FromString(hit[1])
        normalized = await self._validate(spec, dataset_task)
        if len(self._accepted) >= self._size:
            self._accepted.pop(next(iter(self._accepted)))
        self._accepted[key] = (now_s + self._ttl, normalized.SerializeToString())
        return normalized


class JobWatchers:
    """Wakes WatchJob streams when their job gets a new event.

    Only an optimisation: watchers also poll the database, so a gateway replica that did
    not apply an event itself still delivers it within a second.
    """

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

    def notify(self, job_id: str) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def register(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._events[job_id].add(event)
        return event

    def unregister(self, job_id: str, event: asyncio.Event) -> None:
        waiting = self._events.get(job_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._events[job_id]


def now() -> datetime:
    return datetime.now(UTC)


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def next_event(
    job: db.Job,
    *,
    source_key: str,
    event: jobs_pb2.WatchJobResponse,
    at: datetime | None = None,
) -> dict[str, Any]:
    """Makes `event` the job's next one (sequence = last + 1, with the job's snapshot after
    it) and returns its job_events row."""
    at = at or now()
    job.last_event_sequence += 1
    job.updated_at = at
    event.sequence = job.last_event_sequence
    event.time.CopyFrom(_ts(at))
    event.job.CopyFrom(convert.job(job))
    return {
        "job_id": job.id,
        "sequence": job.last_event_sequence,
        "source_key": source_key,
        "payload": event.SerializeToString(),
        "created_at": at,
    }


async def append_event(
    session: AsyncSession,
    job: db.Job,
    *,
    source_key: str,
    event: jobs_pb2.WatchJobResponse,
    at: datetime | None = None,
) -> jobs_pb2.WatchJobResponse:
    """Stores the next event of `job` (see next_event)."""
    # A plain INSERT, not a unit-of-work object: events are append-only and this is on
    # every hot path (relay, event consumer).
    row = next_event(job, source_key=source_key, event=event, at=at)
    await session.execute(insert(db.JobEvent).values(row))
    return event


def _column_values(row: db.Base) -> dict[str, Any]:
    """A transient row's column values, for a Core INSERT."""
    return {column.key: getattr(row, column.key) for column in row.__table__.columns}


def state_event(state: int, error: job_pb2.JobError | None = None) -> jobs_pb2.WatchJobResponse:
    return jobs_pb2.WatchJobResponse(state_change=jobs_pb2.JobStateChange(state=state, error=error))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class NewJob:
    """The three rows of a new job: they commit together or not at all."""

    job: dict[str, Any]
    event: dict[str, Any]
    outbox: dict[str, Any]


class GroupCommitWriter:
    """Writes concurrently created jobs in shared transactions (group commit).

    A commit on PostgreSQL waits for the WAL flush, a few milliseconds here, and a
    transaction per job capped the gateway near 150 creations a second. Jobs that
    arrive while a transaction is in flight go into the next one, as one multi-row INSERT
    per table; an idle writer commits at once, so a lone request waits for nothing. Each
    job's own rows still commit atomically, and if a shared transaction fails, its jobs
    are retried one by one so one bad job cannot fail the others.
    """

    def __init__(self, db: Database, *, max_batch: int = 128) -> None:
        self._db = db
        self._max_batch = max_batch
        self._pending: list[tuple[NewJob, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, new: NewJob) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((new, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = (
                self._pending[: self._max_batch],
                self._pending[self._max_batch :],
            )
            try:
                await self._insert([new for new, _ in batch])
            except Exception:
                if len(batch) == 1:
                    _resolve(batch[0][1], sys.exc_info()[1])
                    continue
                for new, future in batch:
                    try:
                        await self._insert([new])
                    except Exception as exc:
                        _resolve(future, exc)
                    else:
                        _resolve(future, None)
                continue
            for _, future in batch:
                _resolve(future, None)

    async def _insert(self, batch: list[NewJob]) -> None:
        async with self._db.session() as session:
            await session.execute(insert(db.Job), [new.job for new in batch])
            await session.execute(insert(db.JobEvent), [new.event for new in batch])
            await session.execute(insert(db.OutboxMessage), [new.outbox for new in batch])


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled request)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class JobsCore:
    """Creates and tracks jobs for the caller's tenant."""

    def __init__(
        self,
        *,
        db: Database,
        store: ObjectStore,
        datasets: DatasetsCore,
        validate_training_spec: SpecValidator,
        watchers: JobWatchers,
        outbox_wakeup: Callable[[], None] = lambda: None,
        presign_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._store = store
        self._datasets = datasets
        self._validate_training_spec = validate_training_spec
        self._watchers = watchers
        self._outbox_wakeup = outbox_wakeup
        self._presign_ttl = presign_ttl
        self._writer = GroupCommitWriter(db)

    # -- creation ---------------------------------------------------------------------

    async def create_training_job(self, request: jobs_pb2.CreateTrainingJobRequest) -> job_pb2.Job:
        principal = require_principal()
        if bool(request.dataset_id) == bool(request.snapshot_id):
            raise InvalidArgument.for_field(
                "dataset_id", "give exactly one of dataset_id or snapshot_id"
            )
        snapshot = await self._datasets.snapshot_for_job(
            dataset_id=request.dataset_id, snapshot_id=request.snapshot_id
        )
        task = "classify" if snapshot.format == 2 else "detect"  # DATASET_FORMAT_CLASSIFY_FOLDERS
        spec = await self._validate_training_spec(request.spec, task)
        init_checkpoint_key = ""
        if spec.init_model_version_id:
            init_checkpoint_key = await self._checkpoint_key(principal, spec.init_model_version_id)
        created = now()
        job = db.Job(
            id=db.new_id(),
            tenant_id=principal.tenant_id,
            kind=job_pb2.JOB_KIND_TRAINING,
            state=states.PENDING,
            spec_type=spec.DESCRIPTOR.full_name,
            spec_json=json_format.MessageToJson(spec, indent=None),
            dataset_id=snapshot.dataset_id,
            snapshot_id=snapshot.id,
            model_name=request.model_name or f"{snapshot.dataset_name}-{spec.task}",
            created_by=principal.subject,
            created_at=created,
            updated_at=created,
            progress={},
            metrics={},
            error_reason="",
            error_message="",
            attempts=0,
            last_event_sequence=0,
            model_version_id="",
        )
        work = events_pb2.JobRequest(
            job_id=job.id,
            tenant_id=job.tenant_id,
            kind=job_pb2.JOB_KIND_TRAINING,
            create_time=_ts(created),
            training=events_pb2.TrainingJobRequest(
                spec=spec,
                snapshot=events_pb2.SnapshotRef(
                    snapshot_id=snapshot.id,
                    manifest_key=snapshot.manifest_key,
                    manifest_sha256=snapshot.manifest_sha256,
                    archive_key=snapshot.archive_key,
                    task=task,
                    class_names=snapshot.class_names,
                ),
                init_checkpoint_key=init_checkpoint_key,
                artifact_prefix=f"jobs/{job.id}/",
            ),
        )
        event = next_event(job, source_key="gateway/created", event=state_event(states.PENDING))
        outbox = {
            "subject": job_request_subject(job_pb2.JOB_KIND_TRAINING),
            "job_id": job.id,
            "msg_id": job.id,
            "payload_type": work.DESCRIPTOR.full_name,
            "payload": work.SerializeToString(),
            "created_at": created,
            "published_at": None,
            "attempts": 0,
            "last_error": "",
        }
        await self._writer.write(NewJob(job=_column_values(job), event=event, outbox=outbox))
        message = convert.job(job)
        self._outbox_wakeup()
        return message

    async def _checkpoint_key(self, principal: Principal, model_version_id: str) -> str:
        async with self._db.session() as session:
            version = await session.get(db.ModelVersion, model_version_id)
            if version is None or version.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="ModelVersion", resource_id=model_version_id)
            artifact = await session.get(db.Artifact, version.checkpoint_artifact_id)
            if artifact is None:
                raise FailedPrecondition(f"model version {model_version_id} has no checkpoint")
            return artifact.key

    # -- queries ----------------------------------------------------------------------

    async def _job_row(
        self, session: AsyncSession, job_id: str, *, for_update: bool = False
    ) -> db.Job:
        principal = require_principal()
        # Writers lock the row: every event append reads and bumps last_event_sequence.
        job = await session.get(
            db.Job, job_id, with_for_update=for_update and self._db.is_postgresql
        )
        if job is None or job.tenant_id != principal.tenant_id:
            raise NotFound(resource_type="Job", resource_id=job_id)
        return job

    async def get_job(self, job_id: str) -> job_pb2.Job:
        async with self._db.session() as session:
            return convert.job(await self._job_row(session, job_id))

    async def list_jobs(self, request: jobs_pb2.ListJobsRequest) -> tuple[list[job_pb2.Job], str]:
        principal = require_principal()
        size = page_size(request.page_size)
        query = select(db.Job).where(db.Job.tenant_id == principal.tenant_id)
        if request.kind:
            query = query.where(db.Job.kind == request.kind)
        if request.state:
            query = query.where(db.Job.state == request.state)
        query = newest_first(query, db.Job, token=request.page_token, size=size)
        async with self._db.session() as session:
            rows = list((await session.scalars(query)).all())
            page, token = split_page(rows, size)
            return [convert.job(row) for row in page], token

    async def list_metrics(self, job_id: str, name: str = "") -> list[metric_pb2.MetricPoint]:
        async with self._db.session() as session:
            await self._job_row(session, job_id)
            query = select(db.JobMetric).where(db.JobMetric.job_id == job_id)
            if name:
                query = query.where(db.JobMetric.name == name)
            rows = (await session.scalars(query.order_by(db.JobMetric.id))).all()
            return [
                metric_pb2.MetricPoint(
                    name=row.name,
                    value=row.value,
                    epoch=row.epoch,
                    step=row.step,
                    time=convert.timestamp(row.measured_at),
                )
                for row in rows
            ]

    async def list_artifacts(self, job_id: str) -> list[artifact_pb2.ArtifactRef]:
        async with self._db.session() as session:
            await self._job_row(session, job_id)
            query = select(db.Artifact).where(db.Artifact.job_id == job_id)
            rows = (await session.scalars(query.order_by(db.Artifact.created_at))).all()
            return [convert.artifact(row) for row in rows]

    async def artifact_download_url(
        self, artifact_id: str
    ) -> tuple[str, int, artifact_pb2.ArtifactRef]:
        principal = require_principal()
        async with self._db.session() as session:
            row = await session.get(db.Artifact, artifact_id)
            if row is None or row.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="Artifact", resource_id=artifact_id)
            ref = convert.artifact(row)
        url = await self._store.presigned_get(ref.key, expires=self._presign_ttl)
        return url, int(self._presign_ttl.total_seconds()), ref

    # -- cancel -----------------------------------------------------------------------

    async def cancel_job(self, job_id: str) -> job_pb2.Job:
        async with self._db.session() as session:
            job = await self._job_row(session, job_id, for_update=True)
            if job.state in states.TERMINAL or job.state == states.CANCELLING:
                return convert.job(job)
            # Nothing runs a job the relay has not published or no worker has taken yet:
            # it ends right away. The control message still goes out, so a worker that
            # already pulled the request skips it.
            new_state = states.CANCELLING if job.state == states.RUNNING else states.CANCELLED
            job.state = new_state
            if new_state == states.CANCELLED:
                job.ended_at = now()
            await append_event(
                session, job, source_key=f"gateway/cancel/{new_state}", event=state_event(new_state)
            )
            control = events_pb2.JobControl(
                job_id=job.id, action=events_pb2.JOB_CONTROL_ACTION_CANCEL, time=_ts(now())
            )
            session.add(
                db.OutboxMessage(
                    subject=job_control_subject(job.id),
                    msg_id=f"{job.id}/cancel",
                    payload_type=control.DESCRIPTOR.full_name,
                    payload=control.SerializeToString(),
                )
            )
            message = convert.job(job)
        self._watchers.notify(job_id)
        self._outbox_wakeup()
        return message

    # -- watch ------------------------------------------------------------------------

    async def watch(
        self, job_id: str, after_sequence: int
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        """Yields stored events after `after_sequence`, then live ones, until terminal."""
        async with self._db.session() as session:
            await self._job_row(session, job_id)
        wakeup = self._watchers.register(job_id)
        last = after_sequence
        try:
            while True:
                wakeup.clear()
                async with self._db.session() as session:
                    rows = (
                        await session.scalars(
                            select(db.JobEvent)
                            .where(db.JobEvent.job_id == job_id, db.JobEvent.sequence > last)
                            .order_by(db.JobEvent.sequence)
                            .limit(500)
                        )
                    ).all()
                    job = await session.get(db.Job, job_id)
                    newest = job.last_event_sequence if job else last
                    terminal = job is not None and job.state in states.TERMINAL
                for row in rows:
                    event = jobs_pb2.WatchJobResponse.FromString(row.payload)
                    last = event.sequence
                    yield event
                if terminal and last >= newest:
                    return
                if rows and last < newest:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), _WATCH_POLL_SECONDS)
        finally:
            self._watchers.unregister(job_id, wakeup)
