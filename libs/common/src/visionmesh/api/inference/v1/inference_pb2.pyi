import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionmesh.api.common.v1 import image_pb2 as _image_pb2
from visionmesh.api.export.v1 import export_pb2 as _export_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATE_UNSPECIFIED: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_LOADING: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_READY: _ClassVar[DeploymentState]
    DEPLOYMENT_STATE_FAILED: _ClassVar[DeploymentState]
DEPLOYMENT_STATE_UNSPECIFIED: DeploymentState
DEPLOYMENT_STATE_LOADING: DeploymentState
DEPLOYMENT_STATE_READY: DeploymentState
DEPLOYMENT_STATE_FAILED: DeploymentState

class Deployment(_message.Message):
    __slots__ = ("name", "tenant_id", "model_version_id", "export_job_id", "backend", "device", "state", "failure_reason", "metadata", "create_time", "load_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LOAD_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant_id: str
    model_version_id: str
    export_job_id: str
    backend: str
    device: str
    state: DeploymentState
    failure_reason: str
    metadata: _export_pb2.ModelMetadata
    create_time: _timestamp_pb2.Timestamp
    load_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., tenant_id: _Optional[str] = ..., model_version_id: _Optional[str] = ..., export_job_id: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., state: _Optional[_Union[DeploymentState, str]] = ..., failure_reason: _Optional[str] = ..., metadata: _Optional[_Union[_export_pb2.ModelMetadata, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., load_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "model_version_id", "export_job_id", "export", "backend", "device", "replace", "resolved_export_job_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_EXPORT_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version_id: str
    export_job_id: str
    export: _export_pb2.ExportResult
    backend: str
    device: str
    replace: bool
    resolved_export_job_id: str
    def __init__(self, name: _Optional[str] = ..., model_version_id: _Optional[str] = ..., export_job_id: _Optional[str] = ..., export: _Optional[_Union[_export_pb2.ExportResult, _Mapping]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., replace: _Optional[bool] = ..., resolved_export_job_id: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments", "next_page_token")
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    next_page_token: str
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDeploymentResponse(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ...) -> None: ...

class PredictOptions(_message.Message):
    __slots__ = ("conf", "iou", "max_det", "top_k", "classes", "agnostic", "imgsz")
    CONF_FIELD_NUMBER: _ClassVar[int]
    IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_DET_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    AGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    conf: float
    iou: float
    max_det: int
    top_k: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    agnostic: bool
    imgsz: int
    def __init__(self, conf: _Optional[float] = ..., iou: _Optional[float] = ..., max_det: _Optional[int] = ..., top_k: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., agnostic: _Optional[bool] = ..., imgsz: _Optional[int] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("deployment", "images", "options")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    options: PredictOptions
    def __init__(self, deployment: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ...) -> None: ...

class Detection(_message.Message):
    __slots__ = ("class_id", "class_name", "score", "box", "polygon")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    POLYGON_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    class_name: str
    score: float
    box: Box
    polygon: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., score: _Optional[float] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., polygon: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class ImageError(_message.Message):
    __slots__ = ("field", "reason", "message")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    reason: str
    message: str
    def __init__(self, field: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("class_id", "class_name", "score")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    class_name: str
    score: float
    def __init__(self, class_id: _Optional[int] = ..., class_name: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("key", "width", "height", "detections", "classifications", "error")
    KEY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    key: str
    width: int
    height: int
    detections: _containers.RepeatedCompositeFieldContainer[Detection]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    error: ImageError
    def __init__(self, key: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., detections: _Optional[_Iterable[_Union[Detection, _Mapping]]] = ..., classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., error: _Optional[_Union[ImageError, _Mapping]] = ...) -> None: ...

class PredictTiming(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., postprocess_ms: _Optional[float] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("results", "deployment", "model_version_id", "task", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    deployment: str
    model_version_id: str
    task: str
    timing: PredictTiming
    def __init__(self, results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., deployment: _Optional[str] = ..., model_version_id: _Optional[str] = ..., task: _Optional[str] = ..., timing: _Optional[_Union[PredictTiming, _Mapping]] = ...) -> None: ...

class BatchInferenceSpec(_message.Message):
    __slots__ = ("deployment", "input_prefix", "output_prefix", "image_extensions", "batch_size", "options", "model_version_id", "input_zip_key", "export")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    INPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_ZIP_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    input_prefix: str
    output_prefix: str
    image_extensions: _containers.RepeatedScalarFieldContainer[str]
    batch_size: int
    options: PredictOptions
    model_version_id: str
    input_zip_key: str
    export: _export_pb2.ExportResult
    def __init__(self, deployment: _Optional[str] = ..., input_prefix: _Optional[str] = ..., output_prefix: _Optional[str] = ..., image_extensions: _Optional[_Iterable[str]] = ..., batch_size: _Optional[int] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ..., model_version_id: _Optional[str] = ..., input_zip_key: _Optional[str] = ..., export: _Optional[_Union[_export_pb2.ExportResult, _Mapping]] = ...) -> None: ...

class ValidateBatchSpecRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: BatchInferenceSpec
    def __init__(self, spec: _Optional[_Union[BatchInferenceSpec, _Mapping]] = ...) -> None: ...

class ValidateBatchSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: BatchInferenceSpec
    def __init__(self, spec: _Optional[_Union[BatchInferenceSpec, _Mapping]] = ...) -> None: ...
