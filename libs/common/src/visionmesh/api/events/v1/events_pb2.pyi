import datetime

from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionmesh.api.common.v1 import artifact_pb2 as _artifact_pb2
from visionmesh.api.common.v1 import job_pb2 as _job_pb2
from visionmesh.api.common.v1 import metric_pb2 as _metric_pb2
from visionmesh.api.embedding.v1 import embedding_pb2 as _embedding_pb2
from visionmesh.api.export.v1 import export_pb2 as _export_pb2
from visionmesh.api.inference.v1 import inference_pb2 as _inference_pb2
from visionmesh.api.training.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobControlAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_CONTROL_ACTION_UNSPECIFIED: _ClassVar[JobControlAction]
    JOB_CONTROL_ACTION_CANCEL: _ClassVar[JobControlAction]
JOB_CONTROL_ACTION_UNSPECIFIED: JobControlAction
JOB_CONTROL_ACTION_CANCEL: JobControlAction

class SnapshotRef(_message.Message):
    __slots__ = ("snapshot_id", "manifest_key", "manifest_sha256", "archive_key", "task", "class_names")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_KEY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_KEY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    manifest_key: str
    manifest_sha256: str
    archive_key: str
    task: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, snapshot_id: _Optional[str] = ..., manifest_key: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., archive_key: _Optional[str] = ..., task: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class TrainingJobRequest(_message.Message):
    __slots__ = ("spec", "snapshot", "init_checkpoint_key", "artifact_prefix")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    INIT_CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    spec: _training_pb2.TrainingSpec
    snapshot: SnapshotRef
    init_checkpoint_key: str
    artifact_prefix: str
    def __init__(self, spec: _Optional[_Union[_training_pb2.TrainingSpec, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotRef, _Mapping]] = ..., init_checkpoint_key: _Optional[str] = ..., artifact_prefix: _Optional[str] = ...) -> None: ...

class ExportJobRequest(_message.Message):
    __slots__ = ("spec", "checkpoint_key", "checkpoint_sha256", "model_name", "model_version", "framework", "task", "architecture", "class_names", "artifact_prefix", "snapshot", "imgsz")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    spec: _export_pb2.ExportSpec
    checkpoint_key: str
    checkpoint_sha256: str
    model_name: str
    model_version: int
    framework: str
    task: str
    architecture: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    artifact_prefix: str
    snapshot: SnapshotRef
    imgsz: int
    def __init__(self, spec: _Optional[_Union[_export_pb2.ExportSpec, _Mapping]] = ..., checkpoint_key: _Optional[str] = ..., checkpoint_sha256: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., framework: _Optional[str] = ..., task: _Optional[str] = ..., architecture: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., artifact_prefix: _Optional[str] = ..., snapshot: _Optional[_Union[SnapshotRef, _Mapping]] = ..., imgsz: _Optional[int] = ...) -> None: ...

class BatchInferenceJobRequest(_message.Message):
    __slots__ = ("spec", "artifact_prefix")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    spec: _inference_pb2.BatchInferenceSpec
    artifact_prefix: str
    def __init__(self, spec: _Optional[_Union[_inference_pb2.BatchInferenceSpec, _Mapping]] = ..., artifact_prefix: _Optional[str] = ...) -> None: ...

class EmbeddingJobRequest(_message.Message):
    __slots__ = ("spec", "snapshot", "artifact_prefix")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    spec: _embedding_pb2.EmbeddingJobSpec
    snapshot: SnapshotRef
    artifact_prefix: str
    def __init__(self, spec: _Optional[_Union[_embedding_pb2.EmbeddingJobSpec, _Mapping]] = ..., snapshot: _Optional[_Union[SnapshotRef, _Mapping]] = ..., artifact_prefix: _Optional[str] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id", "tenant_id", "kind", "create_time", "training", "export", "batch_inference", "embedding")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    BATCH_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant_id: str
    kind: _job_pb2.JobKind
    create_time: _timestamp_pb2.Timestamp
    training: TrainingJobRequest
    export: ExportJobRequest
    batch_inference: BatchInferenceJobRequest
    embedding: EmbeddingJobRequest
    def __init__(self, job_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., kind: _Optional[_Union[_job_pb2.JobKind, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., training: _Optional[_Union[TrainingJobRequest, _Mapping]] = ..., export: _Optional[_Union[ExportJobRequest, _Mapping]] = ..., batch_inference: _Optional[_Union[BatchInferenceJobRequest, _Mapping]] = ..., embedding: _Optional[_Union[EmbeddingJobRequest, _Mapping]] = ...) -> None: ...

class JobStateChanged(_message.Message):
    __slots__ = ("state", "error", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    error: _job_pb2.JobError
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., error: _Optional[_Union[_job_pb2.JobError, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class JobMetricsReported(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_metric_pb2.MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[_metric_pb2.MetricPoint, _Mapping]]] = ...) -> None: ...

class JobArtifactUploaded(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: _artifact_pb2.ArtifactRef
    def __init__(self, artifact: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class ModelTrained(_message.Message):
    __slots__ = ("framework", "task", "architecture", "class_names", "imgsz", "metrics", "checkpoint")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    framework: str
    task: str
    architecture: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    imgsz: int
    metrics: _containers.ScalarMap[str, float]
    checkpoint: _artifact_pb2.ArtifactRef
    def __init__(self, framework: _Optional[str] = ..., task: _Optional[str] = ..., architecture: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., imgsz: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., checkpoint: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class ModelExported(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _export_pb2.ExportResult
    def __init__(self, result: _Optional[_Union[_export_pb2.ExportResult, _Mapping]] = ...) -> None: ...

class JobResultReported(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _any_pb2.Any
    def __init__(self, result: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "tenant_id", "attempt", "worker_sequence", "worker_id", "time", "state_changed", "progress", "metrics", "artifact", "model_trained", "model_exported", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    MODEL_TRAINED_FIELD_NUMBER: _ClassVar[int]
    MODEL_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    tenant_id: str
    attempt: int
    worker_sequence: int
    worker_id: str
    time: _timestamp_pb2.Timestamp
    state_changed: JobStateChanged
    progress: _job_pb2.JobProgress
    metrics: JobMetricsReported
    artifact: JobArtifactUploaded
    model_trained: ModelTrained
    model_exported: ModelExported
    result: JobResultReported
    def __init__(self, job_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., attempt: _Optional[int] = ..., worker_sequence: _Optional[int] = ..., worker_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed: _Optional[_Union[JobStateChanged, _Mapping]] = ..., progress: _Optional[_Union[_job_pb2.JobProgress, _Mapping]] = ..., metrics: _Optional[_Union[JobMetricsReported, _Mapping]] = ..., artifact: _Optional[_Union[JobArtifactUploaded, _Mapping]] = ..., model_trained: _Optional[_Union[ModelTrained, _Mapping]] = ..., model_exported: _Optional[_Union[ModelExported, _Mapping]] = ..., result: _Optional[_Union[JobResultReported, _Mapping]] = ...) -> None: ...

class JobControl(_message.Message):
    __slots__ = ("job_id", "action", "time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    action: JobControlAction
    time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., action: _Optional[_Union[JobControlAction, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
