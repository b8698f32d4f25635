"""Jobs: creation with a transactional outbox, queries, cancel, and live watching."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.gateway.v1 import datasets_pb2, jobs_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.auth import Principal, require_principal
from visionmesh.common.db import Database
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from visionmesh.common.events import EventBus
from visionmesh.common.logging import get_logger
from visionmesh.common.specs.export import UNCONFIRMED_CAPABILITIES, check_export_spec
from visionmesh.common.specs.training import check_spec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import job_control_subject, job_request_subject
from visionmesh.common.tenancy import tenant_key
from visionmesh.gateway.core import convert, states
from visionmesh.gateway.core.batch_results import (
    DEFAULT_RESULTS_PAGE_SIZE,
    BatchResultsReader,
    decode_page_token,
    encode_page_token,
)
from visionmesh.gateway.core.datasets import DatasetsCore, PinnedSnapshot
from visionmesh.gateway.core.paging import newest_first, page_size, split_page
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)

SpecValidator = Callable[[training_pb2.TrainingSpec, str], Awaitable[training_pb2.TrainingSpec]]
"""Checks a training spec against a dataset task and returns it with defaults filled in."""

ExportSpecValidator = Callable[[export_pb2.ValidateSpecRequest], Awaitable[export_pb2.ExportSpec]]
"""Checks an export spec for a model (framework, task, imgsz in the request) and returns it
with defaults filled in; raises InvalidArgument / FailedPrecondition naming the fields."""


class BatchSpecValidator(Protocol):
    """Checks a batch inference spec for a job (the shared rules, then the inference
    service) and returns it with defaults filled in and spec.export resolved."""

    def __call__(
        self, spec: inference_pb2.BatchInferenceSpec, *, job_id: str = ""
    ) -> Awaitable[inference_pb2.BatchInferenceSpec]: ...


async def no_inference_service(
    spec: inference_pb2.BatchInferenceSpec, *, job_id: str = ""
) -> inference_pb2.BatchInferenceSpec:
    """Without an inference service nothing can say whether a deployment exists."""
    raise Unavailable("no inference service is configured to check batch inference specs")


EmbeddingSpecValidator = Callable[
    [embedding_pb2.EmbeddingJobSpec], Awaitable[embedding_pb2.EmbeddingJobSpec]
]
"""Checks an embedding job spec (the embedding service's ValidateEmbeddingSpec, its backbone
resolved) and returns it with defaults filled in."""


async def no_embedding_service(
    spec: embedding_pb2.EmbeddingJobSpec,
) -> embedding_pb2.EmbeddingJobSpec:
    """Only the embedding service knows its models and collections."""
    raise Unavailable("no embedding service is configured to check embedding job specs")


_CATALOG_SOURCES = ("products", "metadata_filter")
"""Embedding job sources that select products, so need a catalog dataset."""


BATCH_INPUTS_PREFIX = "batch-inputs/"
"""Where CreateBatchInputUpload puts a fresh input area, in the caller's tenant."""
BATCH_INPUT_ZIP = "inputs.zip"

_FALLBACK_POLL_SECONDS = 20.0
_FEED_BUFFER = 1024
_FEED_READ_LIMIT = 500
JOB_UPDATED_SUBJECT = "vm.gateway.jobs.updated"
"""Core NATS (no JetStream) subject on which gateway replicas tell each other which jobs got
new events: the payload is the sender's replica id, then one job id a line."""


async def validate_training_spec_locally(
    spec: training_pb2.TrainingSpec, dataset_task: str
) -> training_pb2.TrainingSpec:
    """The workers' own spec checks, run in the gateway: intake needs no training service.

    Field-level InvalidArgument (`spec.imgsz`, ...) for a bad spec; the spec with its
    defaults made explicit otherwise. Workers check again before they train.
    """
    return check_spec(spec, dataset_task=dataset_task)


async def validate_export_spec_locally(
    request: export_pb2.ValidateSpecRequest,
) -> export_pb2.ExportSpec:
    """The export rules without an export service: ONNX only, TensorRT never confirmed."""
    return check_export_spec(
        request.spec,
        framework=request.model_framework,
        task=request.model_task,
        model_imgsz=request.model_imgsz,
        capabilities=UNCONFIRMED_CAPABILITIES,
    )


def snapshot_ref(snapshot: PinnedSnapshot) -> events_pb2.SnapshotRef:
    """What a worker needs of a snapshot to materialise its files."""
    return events_pb2.SnapshotRef(
        snapshot_id=snapshot.id,
        manifest_key=snapshot.manifest_key,
        manifest_sha256=snapshot.manifest_sha256,
        archive_key=snapshot.archive_key,
        task=_snapshot_task(snapshot),
        class_names=snapshot.class_names,
    )


def embedding_snapshot_ref(snapshot: PinnedSnapshot) -> events_pb2.SnapshotRef:
    """`snapshot_ref` for an embedding worker, which reads catalogues too."""
    tasks: dict[int, str] = {
        datasets_pb2.DATASET_FORMAT_CATALOG: "catalog",
        datasets_pb2.DATASET_FORMAT_CLASSIFY_FOLDERS: "classify",
    }
    return events_pb2.SnapshotRef(
        snapshot_id=snapshot.id,
        manifest_key=snapshot.manifest_key,
        manifest_sha256=snapshot.manifest_sha256,
        archive_key=snapshot.archive_key,
        task=tasks.get(snapshot.format, "detect"),
        class_names=snapshot.class_names,
    )


def _snapshot_task(snapshot: PinnedSnapshot) -> str:
    if snapshot.format == datasets_pb2.DATASET_FORMAT_CATALOG:
        raise FailedPrecondition(
            f"dataset {snapshot.dataset_id} is a product catalog, a source for embedding jobs: "
            "training needs a detect or classify dataset"
        )
    return "classify" if snapshot.format == 2 else "detect"  # DATASET_FORMAT_CLASSIFY_FOLDERS


@dataclass(frozen=True, slots=True)
class _ModelVersion:
    """What a job needs of a model version (to export it or start from it), detached from
    any session."""

    model_name: str
    version: int
    framework: str
    task: str
    architecture: str
    class_names: tuple[str, ...]
    imgsz: int
    snapshot_id: str
    checkpoint_key: str
    checkpoint_sha256: str


class _JobFeed:
    """The live tail of one job's events, read once per wake-up and shared by its watchers.

    `base` is the last sequence before the buffer; the buffer holds every event after it,
    in order, up to `newest`. A watcher behind `base` reads its history from the database.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.watchers = 0
        self.base = 0
        self.newest = 0
        self.terminal = False
        self.events: list[jobs_pb2.WatchJobResponse] = []
        self.sequences: list[int] = []
        self.changed = asyncio.Event()
        self.dirty = asyncio.Event()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None

    def since(self, sequence: int) -> list[jobs_pb2.WatchJobResponse] | None:
        """Buffered events after `sequence`; None when they go back before the buffer."""
        if sequence < self.base:
            return None
        return self.events[bisect.bisect_right(self.sequences, sequence) :]

    def publish(self, events: list[jobs_pb2.WatchJobResponse], newest: int, terminal: bool) -> None:
        if events:
            self.events.extend(events)
            self.sequences.extend(event.sequence for event in events)
            self.newest = events[-1].sequence
            overflow = len(self.events) - _FEED_BUFFER
            if overflow > 0:
                self.base = self.sequences[overflow - 1]
                del self.events[:overflow]
                del self.sequences[:overflow]
        self.terminal = terminal and self.newest >= newest
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class JobWatchers:
    """Live job events for WatchJob/SSE streams, fanned out in-process.

    Every watched job has one feed: `notify(job_id)` (called after an event commits)
    marks it dirty, its reader task reads the new events once and hands them to all of
    the job's watchers, so N watchers cost one query per wake-up, not N per second. A
    slow fallback poll only guards against a lost notification.

    Several gateway replicas share the durable event consumer, so the replica that
    applies an event may not be the one serving the watcher: after `start(bus)`, each
    notify is also published on `JOB_UPDATED_SUBJECT` (core NATS) and every replica wakes
    its own feeds for the jobs named there.
    """

    def __init__(
        self,
        db: Database | None = None,
        *,
        fallback_poll_seconds: float = _FALLBACK_POLL_SECONDS,
    ) -> None:
        self.db = db
        self.fallback_poll_seconds = fallback_poll_seconds
        self.replica_id = uuid.uuid4().hex
        self._feeds: dict[str, _JobFeed] = {}
        self._bus: EventBus | None = None
        self._subscription: Any = None
        self._outgoing: set[str] = set()
        self._sender: asyncio.Task[None] | None = None

    # -- notification ---------------------------------------------------------------------

    def notify(self, job_id: str) -> None:
        """`job_id` has new committed events: wake its watchers here and on other replicas."""
        self._wake(job_id)
        if self._bus is not None:
            self._outgoing.add(job_id)
            if self._sender is None or self._sender.done():
                self._sender = asyncio.get_running_loop().create_task(self._send())

    def _wake(self, job_id: str) -> None:
        feed = self._feeds.get(job_id)
        if feed is not None:
            feed.dirty.set()

    async def start(self, bus: EventBus) -> None:
        """Joins the replicas' notifications (call once NATS is connected)."""
        self._bus = bus
        self._subscription = await bus.nc.subscribe(JOB_UPDATED_SUBJECT, cb=self._on_remote)

    async def stop(self) -> None:
        self._bus = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None
        tasks = [feed.task for feed in self._feeds.values() if feed.task is not None]
        if self._sender is not None:
            tasks.append(self._sender)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send(self) -> None:
        await asyncio.sleep(0)  # gather the notifications of this loop iteration
        while self._outgoing and self._bus is not None:
            job_ids, self._outgoing = self._outgoing, set()
            payload = "\n".join([self.replica_id, *sorted(job_ids)]).encode()
            try:
                await self._bus.nc.publish(JOB_UPDATED_SUBJECT, payload)
            except Exception as exc:  # the fallback poll covers a lost notification
                _log.warning("job update notification not sent", error=repr(exc))

    async def _on_remote(self, msg: Any) -> None:
        origin, *job_ids = msg.data.decode(errors="replace").split("\n")
        if origin == self.replica_id:
            return
        for job_id in job_ids:
            self._wake(job_id)

    # -- feeds ------------------------------------------------------------------------------

    async def subscribe(self, job_id: str) -> _JobFeed:
        """The job's feed, started on first use; pair with `unsubscribe`."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _JobFeed(job_id)
            feed.task = asyncio.get_running_loop().create_task(
                self._follow(feed), name=f"job-feed-{job_id}"
            )
        feed.watchers += 1
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.unsubscribe(feed)
            raise
        return feed

    def unsubscribe(self, feed: _JobFeed) -> None:
        feed.watchers -= 1
        if feed.watchers <= 0 and self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _follow(self, feed: _JobFeed) -> None:
        try:
            while True:
                try:
                    await self._refresh(feed)
                except Exception as exc:
                    if not feed.ready.done():
                        feed.ready.set_exception(exc)
                        feed.ready.exception()  # retrieved: awaited by subscribers
                        return
                    _log.exception("job feed read failed", job_id=feed.job_id)
                    await asyncio.sleep(1.0)
                    feed.dirty.set()
                if not feed.ready.done():
                    feed.ready.set_result(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.dirty.wait(), self.fallback_poll_seconds)
        finally:
            if self._feeds.get(feed.job_id) is feed:
                del self._feeds[feed.job_id]

    async def _refresh(self, feed: _JobFeed) -> None:
        if self.db is None:
            raise RuntimeError("JobWatchers has no database")
        while True:
            feed.dirty.clear()
            if not feed.ready.done():
                # Start at the job's current end: watchers read older events themselves.
                async with self.db.session() as session:
                    row = (
                        await session.execute(
                            select(db.Job.last_event_sequence, db.Job.state).where(
                                db.Job.id == feed.job_id
                            )
                        )
                    ).one_or_none()
                newest, state = (row[0], row[1]) if row is not None else (0, states.PENDING)
                feed.base = feed.newest = newest
                feed.publish([], newest, state in states.TERMINAL)
                return
            events, newest, terminal = await read_events(self.db, feed.job_id, feed.newest)
            feed.publish(events, newest, terminal)
            # More than one read's worth: go on. Nothing new although the job row says
            # otherwise (a commit racing this read): its notification follows.
            if not events or feed.newest >= newest:
                return


async def read_events(
    database: Database, job_id: str, after: int, *, limit: int = _FEED_READ_LIMIT
) -> tuple[list[jobs_pb2.WatchJobResponse], int, bool]:
    """Up to `limit` stored events of the job after sequence `after`, its newest sequence,
    and whether it is terminal: one short transaction."""
    async with database.session() as session:
        payloads = (
            await session.scalars(
                select(db.JobEvent.payload)
                .where(db.JobEvent.job_id == job_id, db.JobEvent.sequence > after)
                .order_by(db.JobEvent.sequence)
                .limit(limit)
            )
        ).all()
        head = (
            await session.execute(
                select(db.Job.last_event_sequence, db.Job.state).where(db.Job.id == job_id)
            )
        ).one_or_none()
    events = [jobs_pb2.WatchJobResponse.FromString(payload) for payload in payloads]
    if head is None:
        return events, events[-1].sequence if events else after, False
    return events, head[0], head[1] in states.TERMINAL


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


def _new_job(
    principal: Principal,
    *,
    kind: int,
    spec: Message,
    dataset_id: str = "",
    snapshot_id: str = "",
    model_name: str = "",
    model_version_id: str = "",
    job_id: str = "",
) -> db.Job:
    """A PENDING job row of the caller's tenant running the validated `spec`."""
    created = now()
    return db.Job(
        id=job_id or db.new_id(),
        tenant_id=principal.tenant_id,
        kind=kind,
        state=states.PENDING,
        spec_type=spec.DESCRIPTOR.full_name,
        spec_json=json_format.MessageToJson(spec, indent=None),
        dataset_id=dataset_id,
        snapshot_id=snapshot_id,
        model_name=model_name,
        created_by=principal.subject,
        created_at=created,
        updated_at=created,
        progress={},
        metrics={},
        error_reason="",
        error_message="",
        attempts=0,
        last_event_sequence=0,
        model_version_id=model_version_id,
    )


def _artifact_prefix(job: db.Job) -> str:
    """Where the job's worker uploads; the applier refuses keys outside it."""
    return f"jobs/{job.id}/"


def _export_version_id(request: jobs_pb2.CreateExportJobRequest) -> str:
    given, in_spec = request.model_version_id, request.spec.model_version_id
    if given and in_spec and given != in_spec:
        raise InvalidArgument.for_field(
            "model_version_id",
            f"disagrees with spec.model_version_id ({in_spec!r}); give it once",
        )
    if not (given or in_spec):
        raise InvalidArgument.for_field(
            "model_version_id", "required: the model version to export (or spec.model_version_id)"
        )
    return given or in_spec


class JobsCore:
    """Creates and tracks jobs for the caller's tenant."""

    def __init__(
        self,
        *,
        db: Database,
        store: ObjectStore,
        datasets: DatasetsCore,
        watchers: JobWatchers,
        validate_training_spec: SpecValidator | None = None,
        validate_export_spec: ExportSpecValidator | None = None,
        validate_batch_spec: BatchSpecValidator = no_inference_service,
        validate_embedding_spec: EmbeddingSpecValidator = no_embedding_service,
        outbox_wakeup: Callable[[], None] = lambda: None,
        presign_ttl: timedelta = timedelta(hours=1),
    ) -> None:
        self._db = db
        self._store = store
        self._datasets = datasets
        self._validate_training_spec = validate_training_spec or validate_training_spec_locally
        self._validate_export_spec = validate_export_spec or validate_export_spec_locally
        self._validate_batch_spec = validate_batch_spec
        self._validate_embedding_spec = validate_embedding_spec
        self._batch_results = BatchResultsReader(store)
        self._watchers = watchers
        if watchers.db is None:
            watchers.db = db
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
        task = _snapshot_task(snapshot)
        spec = await self._validate_training_spec(request.spec, task)
        init_checkpoint_key = ""
        if spec.init_model_version_id:
            init = await self._model_version(principal, spec.init_model_version_id)
            init_checkpoint_key = init.checkpoint_key
        job = _new_job(
            principal,
            kind=job_pb2.JOB_KIND_TRAINING,
            spec=spec,
            dataset_id=snapshot.dataset_id,
            snapshot_id=snapshot.id,
            model_name=request.model_name or f"{snapshot.dataset_name}-{spec.task}",
        )
        work = events_pb2.TrainingJobRequest(
            spec=spec,
            snapshot=snapshot_ref(snapshot),
            init_checkpoint_key=init_checkpoint_key,
            artifact_prefix=_artifact_prefix(job),
        )
        return await self._queue(job, events_pb2.JobRequest(training=work))

    async def create_export_job(self, request: jobs_pb2.CreateExportJobRequest) -> job_pb2.Job:
        """Queues an export of a model version of the caller's tenant (see JobService)."""
        principal = require_principal()
        version_id = _export_version_id(request)
        source = await self._model_version(principal, version_id)
        asked = export_pb2.ExportSpec()
        asked.CopyFrom(request.spec)
        asked.model_version_id = version_id
        spec = await self._validate_export_spec(
            export_pb2.ValidateSpecRequest(
                spec=asked,
                model_framework=source.framework,
                model_task=source.task,
                model_imgsz=source.imgsz,
            )
        )
        spec.model_version_id = version_id
        snapshot = await self._training_snapshot(source.snapshot_id)
        job = _new_job(
            principal,
            kind=job_pb2.JOB_KIND_EXPORT,
            spec=spec,
            dataset_id=snapshot.dataset_id if snapshot is not None else "",
            snapshot_id=source.snapshot_id,
            model_name=source.model_name,
            model_version_id=version_id,
        )
        work = events_pb2.ExportJobRequest(
            spec=spec,
            checkpoint_key=source.checkpoint_key,
            checkpoint_sha256=source.checkpoint_sha256,
            model_name=source.model_name,
            model_version=source.version,
            framework=source.framework,
            task=source.task,
            architecture=source.architecture,
            class_names=source.class_names,
            artifact_prefix=_artifact_prefix(job),
            snapshot=snapshot_ref(snapshot) if snapshot is not None else None,
            imgsz=source.imgsz,
        )
        return await self._queue(job, events_pb2.JobRequest(export=work))

    async def create_batch_input_upload(
        self, request: jobs_pb2.CreateBatchInputUploadRequest
    ) -> jobs_pb2.CreateBatchInputUploadResponse:
        """Presigned PUT URLs under a fresh input prefix of the caller's tenant area."""
        principal = require_principal()
        if not request.file_names and not request.zip:
            raise InvalidArgument.for_field(
                "file_names", "name at least one file, or ask for a zip (zip: true)"
            )
        input_prefix = f"{BATCH_INPUTS_PREFIX}{uuid.uuid4().hex}/"
        named = [(f"file_names[{i}]", name) for i, name in enumerate(request.file_names)]
        if request.zip:
            named.append(("zip", BATCH_INPUT_ZIP))
        expires = self._presign_ttl
        uploads = []
        for field, name in named:
            key = input_prefix + name
            # The contract's pattern refuses "/" and "\"; this also refuses "." and "..".
            store_key = tenant_key(principal.tenant_id, key, field=field)
            url = await self._store.presigned_put(store_key, expires=expires)
            uploads.append(jobs_pb2.UploadUrl(file_name=name, key=key, url=url))
        return jobs_pb2.CreateBatchInputUploadResponse(
            input_prefix=input_prefix,
            uploads=uploads,
            expires_in=int(expires.total_seconds()),
        )

    async def create_batch_inference_job(
        self, request: jobs_pb2.CreateBatchInferenceJobRequest
    ) -> job_pb2.Job:
        """Queues a batch inference job once the inference service accepts its spec."""
        principal = require_principal()
        job_id = db.new_id()
        spec = await self._validate_batch_spec(request.spec, job_id=job_id)
        job = _new_job(
            principal,
            kind=job_pb2.JOB_KIND_BATCH_INFERENCE,
            spec=spec,
            model_version_id=spec.model_version_id,
            job_id=job_id,
        )
        work = events_pb2.BatchInferenceJobRequest(spec=spec, artifact_prefix=_artifact_prefix(job))
        return await self._queue(job, events_pb2.JobRequest(batch_inference=work))

    async def create_embedding_job(
        self, request: jobs_pb2.CreateEmbeddingJobRequest
    ) -> job_pb2.Job:
        """Queues an embedding job once its data is pinned and the embedding service
        accepts its spec (UNAVAILABLE while that service is down: nothing else knows its
        models and collections)."""
        principal = require_principal()
        snapshot = await self._embedding_snapshot(request.spec)
        spec = await self._validate_embedding_spec(request.spec)
        job = _new_job(
            principal,
            kind=job_pb2.JOB_KIND_EMBEDDING,
            spec=spec,
            dataset_id=snapshot.dataset_id if snapshot is not None else "",
            snapshot_id=snapshot.id if snapshot is not None else "",
            model_version_id=spec.backbone.model_version_id,
        )
        work = events_pb2.EmbeddingJobRequest(
            spec=spec,
            snapshot=embedding_snapshot_ref(snapshot) if snapshot is not None else None,
            artifact_prefix=_artifact_prefix(job),
        )
        return await self._queue(job, events_pb2.JobRequest(embedding=work))

    async def _embedding_snapshot(
        self, spec: embedding_pb2.EmbeddingJobSpec
    ) -> PinnedSnapshot | None:
        """The snapshot an embedding job's source names, pinned in the caller's tenant
        (as for training: a dataset's current manifest); None for listed images.
        NOT_FOUND and FAILED_PRECONDITION name the field."""
        source = spec.WhichOneof("source")
        if source is None or source == "images":
            return None
        part = getattr(spec, source)
        ref = part.WhichOneof("catalog" if source in _CATALOG_SOURCES else "ref")
        if ref is None:
            return None  # the embedding service names the missing oneof
        field = f"spec.{source}.{ref}"
        given = getattr(part, ref)
        try:
            snapshot = await self._datasets.snapshot_for_job(
                dataset_id=given if ref == "dataset_id" else "",
                snapshot_id=given if ref == "snapshot_id" else "",
            )
        except NotFound as exc:
            raise NotFound(
                f"{field}: {exc.message}",
                resource_type="Snapshot" if ref == "snapshot_id" else "Dataset",
                resource_id=given,
                metadata={"field": field},
            ) from None
        if source in _CATALOG_SOURCES and snapshot.format != datasets_pb2.DATASET_FORMAT_CATALOG:
            raise FailedPrecondition.for_field(
                field,
                f"dataset {snapshot.dataset_id} is not a product catalog (format catalog: "
                "products.jsonl and images/<product_id>/); a dataset source embeds it whole",
            )
        return snapshot

    async def list_batch_inference_results(
        self, request: jobs_pb2.ListBatchInferenceResultsRequest
    ) -> jobs_pb2.ListBatchInferenceResultsResponse:
        """A page of a batch inference job's results, as far as its worker has written them."""
        async with self._db.session() as session:
            job = await self._job_row(session, request.id)
            kind, state, tenant_id = job.kind, job.state, job.tenant_id
            spec_json = job.spec_json
        if kind != job_pb2.JOB_KIND_BATCH_INFERENCE:
            raise InvalidArgument.for_field(
                "id",
                f"job {request.id} is a {job_pb2.JobKind.Name(kind)}, not a batch inference job",  # type: ignore[arg-type]
            )
        offset = decode_page_token(request.id, request.page_token)
        spec = json_format.Parse(
            spec_json, inference_pb2.BatchInferenceSpec(), ignore_unknown_fields=True
        )
        root = tenant_key(tenant_id, spec.output_prefix, field="spec.output_prefix", prefix=True)
        page = await self._batch_results.page(
            root, offset=offset, size=request.page_size or DEFAULT_RESULTS_PAGE_SIZE
        )
        following = page.next_offset
        if following is None and state not in states.TERMINAL:
            # More results may come: the caller asks again from where this page ended.
            following = offset + len(page.results)
        return jobs_pb2.ListBatchInferenceResultsResponse(
            results=page.results,
            next_page_token=encode_page_token(request.id, following)
            if following is not None
            else "",
            total=page.total,
        )

    async def _queue(self, job: db.Job, request: events_pb2.JobRequest) -> job_pb2.Job:
        """Stores the new `job` with its first event and its outbox `request` (the
        kind-specific work already set) in one transaction, and wakes the relay."""
        request.job_id = job.id
        request.tenant_id = job.tenant_id
        request.kind = job.kind  # type: ignore[assignment]
        request.create_time.CopyFrom(_ts(job.created_at))
        event = next_event(job, source_key="gateway/created", event=state_event(states.PENDING))
        outbox = {
            "subject": job_request_subject(job.kind),  # type: ignore[arg-type]
            "job_id": job.id,
            "msg_id": job.id,
            "payload_type": request.DESCRIPTOR.full_name,
            "payload": request.SerializeToString(),
            "created_at": job.created_at,
            "published_at": None,
            "attempts": 0,
            "last_error": "",
        }
        await self._writer.write(NewJob(job=_column_values(job), event=event, outbox=outbox))
        message = convert.job(job)
        self._outbox_wakeup()
        return message

    async def _model_version(self, principal: Principal, model_version_id: str) -> _ModelVersion:
        """The tenant's model version with its checkpoint; NOT_FOUND, or FAILED_PRECONDITION
        without a checkpoint."""
        async with self._db.session() as session:
            version = await session.get(db.ModelVersion, model_version_id)
            if version is None or version.tenant_id != principal.tenant_id:
                raise NotFound(resource_type="ModelVersion", resource_id=model_version_id)
            checkpoint = await session.get(db.Artifact, version.checkpoint_artifact_id)
            if checkpoint is None:
                raise FailedPrecondition(f"model version {model_version_id} has no checkpoint")
            model = await session.get(db.Model, version.model_id)
            return _ModelVersion(
                model_name=model.name if model is not None else "",
                version=version.version,
                framework=version.framework,
                task=version.task,
                architecture=version.architecture,
                class_names=tuple(version.class_names or ()),
                imgsz=version.imgsz,
                snapshot_id=version.snapshot_id,
                checkpoint_key=checkpoint.key,
                checkpoint_sha256=checkpoint.sha256,
            )

    async def _training_snapshot(self, snapshot_id: str) -> PinnedSnapshot | None:
        """The snapshot a model version was trained on, while it still exists."""
        if not snapshot_id:
            return None
        try:
            return await self._datasets.snapshot_for_job(snapshot_id=snapshot_id)
        except NotFound:
            return None

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
        """Yields stored events after `after_sequence`, then live ones, until terminal.

        History comes from the database; live events from the job's shared feed, which
        reads each batch of new events once for all of the job's watchers.
        """
        async with self._db.session() as session:
            await self._job_row(session, job_id)
        feed = await self._watchers.subscribe(job_id)
        last = after_sequence
        try:
            while True:
                changed = feed.changed  # taken first: a batch landing meanwhile sets it
                events = feed.since(last)
                if events is None:  # older than the feed's buffer
                    events, _, _ = await read_events(self._db, job_id, last)
                for event in events:
                    last = event.sequence
                    yield event
                if feed.terminal and last >= feed.newest:
                    return
                if not events:
                    await changed.wait()
        finally:
            self._watchers.unsubscribe(feed)
