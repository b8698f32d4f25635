"""Applies workers' job events to jobs, metrics, artifacts and the model registry."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.gateway.v1 import jobs_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.db import Database
from visionmesh.common.events import EventBus
from visionmesh.common.logging import get_logger
from visionmesh.common.subjects import JOB_EVENTS_STREAM, JOB_EVENTS_SUBJECTS
from visionmesh.common.tenancy import tenant_root
from visionmesh.gateway.core import convert, states
from visionmesh.gateway.core.jobs import JobWatchers, append_event, now, state_event
from visionmesh.gateway.db import models as db

_log = get_logger(__name__)


def _event_time(event: events_pb2.JobEvent) -> datetime:
    return event.time.ToDatetime(tzinfo=now().tzinfo) if event.HasField("time") else now()


_MAX_KEY_LENGTH = 512  # db.Artifact.key


def _artifact_prefixes(job: db.Job) -> list[str]:
    """Where the job's worker may upload: its own prefix, and for a batch inference job the
    output prefix its spec names in its tenant's area (the results the user asked for)."""
    prefixes = [f"jobs/{job.id}/"]
    if job.kind == job_pb2.JOB_KIND_BATCH_INFERENCE:
        spec = json_format.Parse(
            job.spec_json, inference_pb2.BatchInferenceSpec(), ignore_unknown_fields=True
        )
        if spec.output_prefix:
            # Checked at intake (check_batch_spec): a relative prefix inside the tenant.
            prefixes.append(tenant_root(job.tenant_id) + spec.output_prefix)
    return prefixes


def _owned_key(job: db.Job, key: str) -> bool:
    """True when `key` lies under the job's own artifact prefix, without path tricks.

    Workers report keys and the gateway presigns them for the job's tenant, so a key
    outside `jobs/{job.id}/` (the prefix JobsCore hands the worker; see
    `_artifact_prefixes` for batch inference results) would let a worker, or
    whoever can publish job events, expose any object in the bucket: another tenant's
    dataset or model. Empty, `.` and `..` segments are refused, as are backslashes and
    control characters, since clients and proxies may normalise them into another key.
    A key longer than the column would fail the insert on every redelivery.
    """
    prefix = next((p for p in _artifact_prefixes(job) if key.startswith(p)), "")
    rest = key.removeprefix(prefix)
    ok = (
        bool(prefix)
        and bool(rest)
        and len(key) <= _MAX_KEY_LENGTH
        and "\\" not in rest
        and all(char.isprintable() for char in rest)
        and all(part not in ("", ".", "..") for part in rest.split("/"))
    )
    if not ok:
        _log.warning("artifact key outside the job's prefix refused", job_id=job.id, key=key)
    return ok


def _export_files(result: export_pb2.ExportResult) -> list[artifact_pb2.ArtifactRef]:
    """Every file an export result names (set ones only), in the result's field order."""
    refs = [
        result.onnx,
        result.tensorrt,
        result.metadata_file,
        result.triton_repository_zip,
        result.parity_report_file,
    ]
    for model in result.triton_models:
        refs += [model.config, model.model]
    return [ref for ref in refs if ref.key]


def _owned_export(job: db.Job, result: export_pb2.ExportResult) -> bool:
    """True when `result` is this export job's own: of the version it exports, with every
    file (and the Triton repository) under the job's prefix (see `_owned_key`)."""
    if job.kind != job_pb2.JOB_KIND_EXPORT or result.model_version_id != job.model_version_id:
        _log.warning(
            "export of another model version refused",
            job_id=job.id,
            model_version_id=result.model_version_id,
        )
        return False
    keys = [ref.key for ref in _export_files(result)]
    if result.triton_repository_prefix:
        keys.append(result.triton_repository_prefix.rstrip("/"))
    # Checks every key, so each refused one is logged.
    return all([_owned_key(job, key) for key in keys])


RESULT_TYPES: Mapping[int, type[Message]] = {
    job_pb2.JOB_KIND_EMBEDDING: embedding_pb2.EmbeddingJobResult,
}
"""The typed result (Job.result) each job kind may report; kinds not listed have none."""


class JobEventApplier:
    """Idempotent: an event is keyed by (job, attempt, worker sequence) and applied once."""

    def __init__(self, *, db: Database, watchers: JobWatchers) -> None:
        self._db = db
        self._watchers = watchers

    async def apply(self, event: events_pb2.JobEvent) -> bool:
        """Applies `event`; False when it was a duplicate, stale or not applicable."""
        source_key = f"{event.attempt}/{event.worker_sequence}"
        async with self._db.session() as session:
            query = select(db.Job).where(db.Job.id == event.job_id)
            if self._db.is_postgresql:
                query = query.with_for_update()  # one applier per job across replicas
            job = await session.scalar(query)
            if job is None or job.tenant_id != event.tenant_id:
                _log.warning("event for unknown job dropped", job_id=event.job_id)
                return False
            seen = await session.scalar(
                select(db.JobEvent.id).where(
                    db.JobEvent.job_id == job.id, db.JobEvent.source_key == source_key
                )
            )
            if seen is not None:
                return False
            if not self._current_attempt(job, event):
                return False
            update = await self._update(session, job, event)
            if update is None:
                return False
            await append_event(
                session, job, source_key=source_key, event=update, at=_event_time(event)
            )
        self._watchers.notify(event.job_id)
        return True

    @staticmethod
    def _current_attempt(job: db.Job, event: events_pb2.JobEvent) -> bool:
        """Fencing: True when `event` comes from the job's current attempt (and makes it so).

        A redelivered job can have two live workers; once a newer attempt has reported
        anything, the older one's events (state, metrics, artifacts, models) are dropped.
        A finished job belongs to the attempt that finished it: a newer attempt that shows
        up afterwards is dropped too, while the finishing attempt's late events (artifacts
        and metrics delivered after its outcome) still land.
        """
        if event.attempt < job.attempts:
            _log.info("event from a superseded attempt dropped", job_id=job.id)
            return False
        if job.state in states.TERMINAL:
            if event.attempt != job.attempts:
                _log.info("event from another attempt of a finished job dropped", job_id=job.id)
                return False
            return True
        job.attempts = event.attempt
        return True

    async def _update(
        self, session: AsyncSession, job: db.Job, event: events_pb2.JobEvent
    ) -> jobs_pb2.WatchJobResponse | None:
        at = _event_time(event)
        kind = event.WhichOneof("payload")
        if kind == "state_changed":
            return self._change_state(job, event, at)
        if job.state in states.TERMINAL and kind == "progress":
            return None
        if kind == "progress":
            job.progress = json_format.MessageToDict(event.progress)
            return jobs_pb2.WatchJobResponse(progress=event.progress)
        if kind == "metrics":
            for point in event.metrics.points:
                session.add(
                    db.JobMetric(
                        job_id=job.id,
                        name=point.name,
                        value=point.value,
                        epoch=point.epoch,
                        step=point.step,
                        measured_at=point.time.ToDatetime(tzinfo=at.tzinfo)
                        if point.HasField("time")
                        else at,
                    )
                )
            return jobs_pb2.WatchJobResponse(
                metrics=jobs_pb2.MetricBatch(points=event.metrics.points)
            )
        if kind == "artifact":
            if not _owned_key(job, event.artifact.artifact.key):
                return None
            row = await self._upsert_artifact(session, job, event.artifact.artifact, at)
            return jobs_pb2.WatchJobResponse(artifact=convert.artifact(row))
        if kind == "model_trained":
            if not _owned_key(job, event.model_trained.checkpoint.key):
                return None
            version = await self._register(session, job, event.model_trained, at)
            return jobs_pb2.WatchJobResponse(model_version_id=version.id)
        if kind == "model_exported":
            result = event.model_exported.result
            if not _owned_export(job, result):
                return None
            export = await self._record_export(session, job, result, at)
            return jobs_pb2.WatchJobResponse(export_id=export.id)
        if kind == "result":
            return self._record_result(job, event.result.result)
        _log.warning("event without payload dropped", job_id=job.id)
        return None

    @staticmethod
    def _record_result(job: db.Job, result: any_pb2.Any) -> jobs_pb2.WatchJobResponse | None:
        """Keeps a typed result as Job.result when it is the result type of the job's kind
        (and parses as one); anything else is dropped. The event carries no field of its
        own: watchers see the result on the job snapshot every event has."""
        expected = RESULT_TYPES.get(job.kind)
        if expected is None or result.TypeName() != expected.DESCRIPTOR.full_name:
            _log.warning(
                "job result of another type dropped", job_id=job.id, type_url=result.type_url
            )
            return None
        try:
            expected.FromString(result.value)
        except DecodeError:
            _log.warning("undecodable job result dropped", job_id=job.id)
            return None
        job.result = result.SerializeToString()
        return jobs_pb2.WatchJobResponse()

    def _change_state(
        self, job: db.Job, event: events_pb2.JobEvent, at: datetime
    ) -> jobs_pb2.WatchJobResponse | None:
        change = event.state_changed
        new = change.state
        if new == states.RUNNING and job.state == states.CANCELLING:
            return None  # a redelivered cancelling job keeps CANCELLING
        if not states.can_transition(job.state, new):
            # Expected when events arrive out of order (RUNNING after the outcome).
            _log.info(
                "job transition ignored",
                job_id=job.id,
                current=states.name(job.state),
                requested=states.name(new),
            )
            return None
        job.state = new
        if new == states.RUNNING:
            job.started_at = job.started_at or at
        if new in states.TERMINAL:
            job.ended_at = at
        if new == states.FAILED:
            job.error_reason = change.error.reason or "FAILED"
            job.error_message = change.error.message
        if new == states.SUCCEEDED:
            job.metrics = dict(change.metrics)
        return state_event(new, change.error if change.HasField("error") else None)

    async def _upsert_artifact(
        self, session: AsyncSession, job: db.Job, ref: artifact_pb2.ArtifactRef, at: datetime
    ) -> db.Artifact:
        row = await session.scalar(
            select(db.Artifact).where(db.Artifact.job_id == job.id, db.Artifact.key == ref.key)
        )
        if row is None:
            row = db.Artifact(
                id=db.new_id(), tenant_id=job.tenant_id, job_id=job.id, key=ref.key, created_at=at
            )
            session.add(row)
        row.name = ref.name
        row.kind = ref.kind
        row.size_bytes = ref.size_bytes
        row.sha256 = ref.sha256
        row.content_type = ref.content_type
        await session.flush()
        return row

    async def _register(
        self, session: AsyncSession, job: db.Job, trained: events_pb2.ModelTrained, at: datetime
    ) -> db.ModelVersion:
        existing = await session.scalar(
            select(db.ModelVersion).where(db.ModelVersion.job_id == job.id)
        )
        if existing is not None:
            return existing
        model = await session.scalar(
            select(db.Model).where(
                db.Model.tenant_id == job.tenant_id, db.Model.name == job.model_name
            )
        )
        if model is None:
            model = db.Model(
                id=db.new_id(),
                tenant_id=job.tenant_id,
                name=job.model_name,
                task=trained.task,
                latest_version=0,
                created_at=at,
            )
            session.add(model)
        model.latest_version += 1
        checkpoint = await self._upsert_artifact(session, job, trained.checkpoint, at)
        version = db.ModelVersion(
            id=db.new_id(),
            tenant_id=job.tenant_id,
            model_id=model.id,
            version=model.latest_version,
            job_id=job.id,
            snapshot_id=job.snapshot_id,
            framework=trained.framework,
            task=trained.task,
            architecture=trained.architecture,
            class_names=list(trained.class_names),
            imgsz=trained.imgsz,
            metrics=dict(trained.metrics),
            checkpoint_artifact_id=checkpoint.id,
            created_at=at,
        )
        session.add(version)
        job.model_version_id = version.id
        await session.flush()
        return version

    async def _record_export(
        self,
        session: AsyncSession,
        job: db.Job,
        result: export_pb2.ExportResult,
        at: datetime,
    ) -> db.Export:
        """The job's export, recorded once: a later attempt's result changes nothing."""
        existing = await session.scalar(select(db.Export).where(db.Export.job_id == job.id))
        if existing is not None:
            return existing
        stored = export_pb2.ExportResult()
        stored.CopyFrom(result)
        for ref in _export_files(stored):
            # The stored refs are the artifacts table's, ids included, so a client can
            # download any file of the export through GetArtifactDownloadUrl as well.
            row = await self._upsert_artifact(session, job, ref, at)
            ref.CopyFrom(convert.artifact(row))
        export = db.Export(
            id=db.new_id(),
            tenant_id=job.tenant_id,
            model_version_id=job.model_version_id,
            job_id=job.id,
            formats=[
                name
                for name, ref in (("onnx", stored.onnx), ("tensorrt", stored.tensorrt))
                if ref.key
            ],
            result=stored.SerializeToString(),
            created_at=at,
        )
        session.add(export)
        await session.flush()
        return export


class JobEventConsumer:
    """Pulls JOB_EVENTS with a durable consumer and applies each event in order."""

    def __init__(
        self,
        *,
        bus: EventBus,
        applier: JobEventApplier,
        durable: str = "gateway-job-events",
        batch: int = 64,
    ) -> None:
        self._bus = bus
        self._applier = applier
        self._durable = durable
        self._batch = batch

    async def run(self) -> None:
        while True:
            try:
                consumer = await self._bus.pull_consumer(
                    JOB_EVENTS_STREAM,
                    self._durable,
                    filter_subject=JOB_EVENTS_SUBJECTS,
                    ack_wait=30.0,
                    max_ack_pending=self._batch * 4,
                )
                break
            except Exception:
                if self._bus.nc.is_closed:
                    raise  # nothing to wait for: end the loop, and with it the process
                _log.exception("job event consumer not ready; retrying")
                await asyncio.sleep(1.0)
        async with consumer:
            while True:
                try:
                    deliveries = await consumer.fetch(self._batch, timeout=1.0)
                except Exception:
                    _log.exception("job event fetch failed")
                    await asyncio.sleep(1.0)
                    continue
                for delivery in deliveries:
                    try:
                        event = delivery.decode(events_pb2.JobEvent)
                    except Exception:
                        _log.exception("undecodable job event terminated")
                        await delivery.term()
                        continue
                    try:
                        await self._applier.apply(event)
                    except IntegrityError:
                        # A concurrent replica registered the same thing; retry shortly.
                        await delivery.nak(delay=0.5)
                        continue
                    except Exception:
                        _log.exception("job event apply failed", job_id=event.job_id)
                        await delivery.nak(delay=2.0)
                        continue
                    await delivery.ack()
