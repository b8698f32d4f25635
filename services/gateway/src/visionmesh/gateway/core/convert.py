"""Rows of the gateway's tables to their protobuf messages."""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from google.protobuf import any_pb2, json_format, symbol_database
from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.gateway.v1 import datasets_pb2, models_pb2
from visionmesh.gateway.db import models as db


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; we always store UTC
        value = value.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


@functools.lru_cache(maxsize=1024)
def _packed_spec(spec_type: str, spec_json: str) -> bytes:
    message_class = symbol_database.Default().GetSymbol(spec_type)
    spec = json_format.Parse(spec_json, message_class())
    packed = any_pb2.Any()
    packed.Pack(spec)
    return packed.SerializeToString()


def spec_any(spec_type: str, spec_json: str) -> any_pb2.Any:
    # Cached: parsing JSON into a message is the costliest part of converting a job, and
    # jobs of one sweep share their spec.
    return any_pb2.Any.FromString(_packed_spec(spec_type, spec_json))


def job(row: db.Job) -> job_pb2.Job:
    message = job_pb2.Job(
        id=row.id,
        tenant_id=row.tenant_id,
        kind=row.kind,  # type: ignore[arg-type]
        state=row.state,  # type: ignore[arg-type]
        spec=spec_any(row.spec_type, row.spec_json),
        dataset_id=row.dataset_id,
        snapshot_id=row.snapshot_id,
        progress=json_format.ParseDict(row.progress or {}, job_pb2.JobProgress()),
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        attempts=row.attempts,
        last_event_sequence=row.last_event_sequence,
        model_version_id=row.model_version_id,
        created_by=row.created_by,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        start_time=timestamp(row.started_at),
        end_time=timestamp(row.ended_at),
    )
    if row.result:
        message.result.ParseFromString(row.result)
    if row.error_reason or row.error_message:
        message.error.reason = row.error_reason
        message.error.message = row.error_message
    return message


def artifact(row: db.Artifact) -> artifact_pb2.ArtifactRef:
    return artifact_pb2.ArtifactRef(
        id=row.id,
        job_id=row.job_id,
        name=row.name,
        kind=row.kind,
        key=row.key,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        content_type=row.content_type,
        create_time=timestamp(row.created_at),
    )


def dataset(row: db.Dataset) -> datasets_pb2.Dataset:
    return datasets_pb2.Dataset(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        description=row.description,
        state=row.state,  # type: ignore[arg-type]
        format=row.format,  # type: ignore[arg-type]
        class_names=row.class_names or [],
        splits=[
            datasets_pb2.SplitStats(
                name=split["name"],
                image_count=split["image_count"],
                instances_per_class=split["instances_per_class"],
            )
            for split in row.splits or []
        ],
        image_count=row.image_count,
        size_bytes=row.size_bytes,
        manifest_key=row.manifest_key,
        manifest_sha256=row.manifest_sha256,
        failure_reason=row.failure_reason,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        product_count=row.product_count,
        products_without_images=row.products_without_images,
    )


def snapshot(row: db.Snapshot) -> datasets_pb2.Snapshot:
    return datasets_pb2.Snapshot(
        id=row.id,
        dataset_id=row.dataset_id,
        tenant_id=row.tenant_id,
        description=row.description,
        manifest_key=row.manifest_key,
        manifest_sha256=row.manifest_sha256,
        format=row.format,  # type: ignore[arg-type]
        class_names=row.class_names or [],
        image_count=row.image_count,
        create_time=timestamp(row.created_at),
        product_count=row.product_count,
    )


def export(row: db.Export) -> models_pb2.Export:
    return models_pb2.Export(
        id=row.id,
        model_version_id=row.model_version_id,
        job_id=row.job_id,
        formats=row.formats or [],
        result=export_pb2.ExportResult.FromString(row.result),
        create_time=timestamp(row.created_at),
    )


def model_version(
    row: db.ModelVersion,
    checkpoint: db.Artifact | None,
    exports: list[models_pb2.Export] | None = None,
) -> models_pb2.ModelVersion:
    return models_pb2.ModelVersion(
        id=row.id,
        model_id=row.model_id,
        version=row.version,
        job_id=row.job_id,
        snapshot_id=row.snapshot_id,
        framework=row.framework,
        task=row.task,
        architecture=row.architecture,
        class_names=row.class_names or [],
        imgsz=row.imgsz,
        metrics={k: float(v) for k, v in (row.metrics or {}).items()},
        checkpoint=artifact(checkpoint) if checkpoint is not None else None,
        create_time=timestamp(row.created_at),
        exports=exports or [],
    )


def model(row: db.Model, versions: list[models_pb2.ModelVersion] | None = None) -> models_pb2.Model:
    return models_pb2.Model(
        id=row.id,
        tenant_id=row.tenant_id,
        name=row.name,
        task=row.task,
        latest_version=row.latest_version,
        create_time=timestamp(row.created_at),
        versions=versions or [],
    )
