import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionmesh.api.common.v1 import artifact_pb2 as _artifact_pb2
from visionmesh.api.common.v1 import job_pb2 as _job_pb2
from visionmesh.api.common.v1 import metric_pb2 as _metric_pb2
from visionmesh.api.embedding.v1 import embedding_pb2 as _embedding_pb2
from visionmesh.api.export.v1 import export_pb2 as _export_pb2
from visionmesh.api.inference.v1 import inference_pb2 as _inference_pb2
from visionmesh.api.training.v1 import training_pb2 as _training_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateTrainingJobRequest(_message.Message):
    __slots__ = ("dataset_id", "snapshot_id", "spec", "model_name")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    snapshot_id: str
    spec: _training_pb2.TrainingSpec
    model_name: str
    def __init__(self, dataset_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., spec: _Optional[_Union[_training_pb2.TrainingSpec, _Mapping]] = ..., model_name: _Optional[str] = ...) -> None: ...

class CreateTrainingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class CreateExportJobRequest(_message.Message):
    __slots__ = ("model_version_id", "spec")
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model_version_id: str
    spec: _export_pb2.ExportSpec
    def __init__(self, model_version_id: _Optional[str] = ..., spec: _Optional[_Union[_export_pb2.ExportSpec, _Mapping]] = ...) -> None: ...

class CreateExportJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class CreateBatchInputUploadRequest(_message.Message):
    __slots__ = ("file_names", "zip")
    FILE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ZIP_FIELD_NUMBER: _ClassVar[int]
    file_names: _containers.RepeatedScalarFieldContainer[str]
    zip: bool
    def __init__(self, file_names: _Optional[_Iterable[str]] = ..., zip: _Optional[bool] = ...) -> None: ...

class UploadUrl(_message.Message):
    __slots__ = ("file_name", "key", "url")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    key: str
    url: str
    def __init__(self, file_name: _Optional[str] = ..., key: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class CreateBatchInputUploadResponse(_message.Message):
    __slots__ = ("input_prefix", "uploads", "expires_in")
    INPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    input_prefix: str
    uploads: _containers.RepeatedCompositeFieldContainer[UploadUrl]
    expires_in: int
    def __init__(self, input_prefix: _Optional[str] = ..., uploads: _Optional[_Iterable[_Union[UploadUrl, _Mapping]]] = ..., expires_in: _Optional[int] = ...) -> None: ...

class CreateBatchInferenceJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _inference_pb2.BatchInferenceSpec
    def __init__(self, spec: _Optional[_Union[_inference_pb2.BatchInferenceSpec, _Mapping]] = ...) -> None: ...

class CreateBatchInferenceJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListBatchInferenceResultsRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBatchInferenceResultsResponse(_message.Message):
    __slots__ = ("results", "next_page_token", "total")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ImageResult]
    next_page_token: str
    total: int
    def __init__(self, results: _Optional[_Iterable[_Union[_inference_pb2.ImageResult, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class CreateEmbeddingJobRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _embedding_pb2.EmbeddingJobSpec
    def __init__(self, spec: _Optional[_Union[_embedding_pb2.EmbeddingJobSpec, _Mapping]] = ...) -> None: ...

class CreateEmbeddingJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "kind", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    kind: _job_pb2.JobKind
    state: _job_pb2.JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., kind: _Optional[_Union[_job_pb2.JobKind, str]] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "after_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_sequence: int
    def __init__(self, id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class JobStateChange(_message.Message):
    __slots__ = ("state", "error")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    state: _job_pb2.JobState
    error: _job_pb2.JobError
    def __init__(self, state: _Optional[_Union[_job_pb2.JobState, str]] = ..., error: _Optional[_Union[_job_pb2.JobError, _Mapping]] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_metric_pb2.MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[_metric_pb2.MetricPoint, _Mapping]]] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("sequence", "time", "job", "state_change", "progress", "metrics", "artifact", "model_version_id", "export_id")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    job: _job_pb2.Job
    state_change: JobStateChange
    progress: _job_pb2.JobProgress
    metrics: MetricBatch
    artifact: _artifact_pb2.ArtifactRef
    model_version_id: str
    export_id: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., state_change: _Optional[_Union[JobStateChange, _Mapping]] = ..., progress: _Optional[_Union[_job_pb2.JobProgress, _Mapping]] = ..., metrics: _Optional[_Union[MetricBatch, _Mapping]] = ..., artifact: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., model_version_id: _Optional[str] = ..., export_id: _Optional[str] = ...) -> None: ...

class ListJobMetricsRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListJobMetricsResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_metric_pb2.MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[_metric_pb2.MetricPoint, _Mapping]]] = ...) -> None: ...

class ListJobArtifactsRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[_artifact_pb2.ArtifactRef]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[_artifact_pb2.ArtifactRef, _Mapping]]] = ...) -> None: ...

class GetArtifactDownloadUrlRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetArtifactDownloadUrlResponse(_message.Message):
    __slots__ = ("url", "expires_in", "artifact")
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    url: str
    expires_in: int
    artifact: _artifact_pb2.ArtifactRef
    def __init__(self, url: _Optional[str] = ..., expires_in: _Optional[int] = ..., artifact: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...
