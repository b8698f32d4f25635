from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from visionmesh.api.common.v1 import artifact_pb2 as _artifact_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParityTolerance(_message.Message):
    __slots__ = ("atol", "rtol")
    ATOL_FIELD_NUMBER: _ClassVar[int]
    RTOL_FIELD_NUMBER: _ClassVar[int]
    atol: float
    rtol: float
    def __init__(self, atol: _Optional[float] = ..., rtol: _Optional[float] = ...) -> None: ...

class TritonOptions(_message.Message):
    __slots__ = ("model_name", "version", "instance_count", "max_queue_delay_microseconds")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MICROSECONDS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    instance_count: int
    max_queue_delay_microseconds: int
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., instance_count: _Optional[int] = ..., max_queue_delay_microseconds: _Optional[int] = ...) -> None: ...

class ExportSpec(_message.Message):
    __slots__ = ("model_version_id", "formats", "opset", "dynamic_batch", "max_batch_size", "half", "imgsz", "parity", "triton", "device", "simplify", "nms", "dynamic_size", "softmax", "nms_settings")
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    HALF_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    TRITON_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SIMPLIFY_FIELD_NUMBER: _ClassVar[int]
    NMS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_SIZE_FIELD_NUMBER: _ClassVar[int]
    SOFTMAX_FIELD_NUMBER: _ClassVar[int]
    NMS_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    model_version_id: str
    formats: _containers.RepeatedScalarFieldContainer[str]
    opset: int
    dynamic_batch: bool
    max_batch_size: int
    half: bool
    imgsz: int
    parity: ParityTolerance
    triton: TritonOptions
    device: str
    simplify: bool
    nms: bool
    dynamic_size: bool
    softmax: bool
    nms_settings: NmsSettings
    def __init__(self, model_version_id: _Optional[str] = ..., formats: _Optional[_Iterable[str]] = ..., opset: _Optional[int] = ..., dynamic_batch: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., half: _Optional[bool] = ..., imgsz: _Optional[int] = ..., parity: _Optional[_Union[ParityTolerance, _Mapping]] = ..., triton: _Optional[_Union[TritonOptions, _Mapping]] = ..., device: _Optional[str] = ..., simplify: _Optional[bool] = ..., nms: _Optional[bool] = ..., dynamic_size: _Optional[bool] = ..., softmax: _Optional[bool] = ..., nms_settings: _Optional[_Union[NmsSettings, _Mapping]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class NmsSettings(_message.Message):
    __slots__ = ("iou", "conf", "max_det", "agnostic")
    IOU_FIELD_NUMBER: _ClassVar[int]
    CONF_FIELD_NUMBER: _ClassVar[int]
    MAX_DET_FIELD_NUMBER: _ClassVar[int]
    AGNOSTIC_FIELD_NUMBER: _ClassVar[int]
    iou: float
    conf: float
    max_det: int
    agnostic: bool
    def __init__(self, iou: _Optional[float] = ..., conf: _Optional[float] = ..., max_det: _Optional[int] = ..., agnostic: _Optional[bool] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("model_version_id", "framework", "task", "class_names", "input", "layout", "input_height", "input_width", "channel_order", "resize", "pad_value", "scale", "mean", "std", "outputs", "postprocess", "nms", "dynamic_batch", "max_batch_size", "opset", "nms_in_graph")
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_ORDER_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    PAD_VALUE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESS_FIELD_NUMBER: _ClassVar[int]
    NMS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    NMS_IN_GRAPH_FIELD_NUMBER: _ClassVar[int]
    model_version_id: str
    framework: str
    task: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    input: TensorInfo
    layout: str
    input_height: int
    input_width: int
    channel_order: str
    resize: str
    pad_value: int
    scale: float
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    postprocess: str
    nms: NmsSettings
    dynamic_batch: bool
    max_batch_size: int
    opset: int
    nms_in_graph: bool
    def __init__(self, model_version_id: _Optional[str] = ..., framework: _Optional[str] = ..., task: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., input: _Optional[_Union[TensorInfo, _Mapping]] = ..., layout: _Optional[str] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., channel_order: _Optional[str] = ..., resize: _Optional[str] = ..., pad_value: _Optional[int] = ..., scale: _Optional[float] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., postprocess: _Optional[str] = ..., nms: _Optional[_Union[NmsSettings, _Mapping]] = ..., dynamic_batch: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., opset: _Optional[int] = ..., nms_in_graph: _Optional[bool] = ...) -> None: ...

class TritonModel(_message.Message):
    __slots__ = ("name", "platform", "version", "config", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    platform: str
    version: int
    config: _artifact_pb2.ArtifactRef
    model: _artifact_pb2.ArtifactRef
    def __init__(self, name: _Optional[str] = ..., platform: _Optional[str] = ..., version: _Optional[int] = ..., config: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., model: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ...) -> None: ...

class ExportResult(_message.Message):
    __slots__ = ("model_version_id", "spec", "onnx", "tensorrt", "triton_repository_prefix", "triton_models", "metadata", "metadata_file", "parity_max_abs_diff", "triton_repository_zip", "parity_report_file", "parity", "tensorrt_build")
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_FIELD_NUMBER: _ClassVar[int]
    TRITON_REPOSITORY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    TRITON_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FILE_FIELD_NUMBER: _ClassVar[int]
    PARITY_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TRITON_REPOSITORY_ZIP_FIELD_NUMBER: _ClassVar[int]
    PARITY_REPORT_FILE_FIELD_NUMBER: _ClassVar[int]
    PARITY_FIELD_NUMBER: _ClassVar[int]
    TENSORRT_BUILD_FIELD_NUMBER: _ClassVar[int]
    model_version_id: str
    spec: ExportSpec
    onnx: _artifact_pb2.ArtifactRef
    tensorrt: _artifact_pb2.ArtifactRef
    triton_repository_prefix: str
    triton_models: _containers.RepeatedCompositeFieldContainer[TritonModel]
    metadata: ModelMetadata
    metadata_file: _artifact_pb2.ArtifactRef
    parity_max_abs_diff: float
    triton_repository_zip: _artifact_pb2.ArtifactRef
    parity_report_file: _artifact_pb2.ArtifactRef
    parity: ParityReport
    tensorrt_build: TensorRtBuild
    def __init__(self, model_version_id: _Optional[str] = ..., spec: _Optional[_Union[ExportSpec, _Mapping]] = ..., onnx: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., tensorrt: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., triton_repository_prefix: _Optional[str] = ..., triton_models: _Optional[_Iterable[_Union[TritonModel, _Mapping]]] = ..., metadata: _Optional[_Union[ModelMetadata, _Mapping]] = ..., metadata_file: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., parity_max_abs_diff: _Optional[float] = ..., triton_repository_zip: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., parity_report_file: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., parity: _Optional[_Union[ParityReport, _Mapping]] = ..., tensorrt_build: _Optional[_Union[TensorRtBuild, _Mapping]] = ...) -> None: ...

class OutputParity(_message.Message):
    __slots__ = ("name", "max_abs_diff", "max_rel_diff", "elements")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_DIFF_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_abs_diff: float
    max_rel_diff: float
    elements: int
    def __init__(self, name: _Optional[str] = ..., max_abs_diff: _Optional[float] = ..., max_rel_diff: _Optional[float] = ..., elements: _Optional[int] = ...) -> None: ...

class ParityReport(_message.Message):
    __slots__ = ("format", "images", "image_source", "tolerance", "outputs", "boxes_reference", "boxes_matched", "boxes_exported", "min_box_iou", "max_score_diff", "top1_agreed", "batch_max_abs_diff", "batch_size", "graph_nms_matched", "graph_nms_reference", "passed", "failure")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    BOXES_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    BOXES_MATCHED_FIELD_NUMBER: _ClassVar[int]
    BOXES_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    MIN_BOX_IOU_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_DIFF_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREED_FIELD_NUMBER: _ClassVar[int]
    BATCH_MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAPH_NMS_MATCHED_FIELD_NUMBER: _ClassVar[int]
    GRAPH_NMS_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    format: str
    images: int
    image_source: str
    tolerance: ParityTolerance
    outputs: _containers.RepeatedCompositeFieldContainer[OutputParity]
    boxes_reference: int
    boxes_matched: int
    boxes_exported: int
    min_box_iou: float
    max_score_diff: float
    top1_agreed: int
    batch_max_abs_diff: float
    batch_size: int
    graph_nms_matched: int
    graph_nms_reference: int
    passed: bool
    failure: str
    def __init__(self, format: _Optional[str] = ..., images: _Optional[int] = ..., image_source: _Optional[str] = ..., tolerance: _Optional[_Union[ParityTolerance, _Mapping]] = ..., outputs: _Optional[_Iterable[_Union[OutputParity, _Mapping]]] = ..., boxes_reference: _Optional[int] = ..., boxes_matched: _Optional[int] = ..., boxes_exported: _Optional[int] = ..., min_box_iou: _Optional[float] = ..., max_score_diff: _Optional[float] = ..., top1_agreed: _Optional[int] = ..., batch_max_abs_diff: _Optional[float] = ..., batch_size: _Optional[int] = ..., graph_nms_matched: _Optional[int] = ..., graph_nms_reference: _Optional[int] = ..., passed: _Optional[bool] = ..., failure: _Optional[str] = ...) -> None: ...

class TensorRtBuild(_message.Message):
    __slots__ = ("tensorrt_version", "gpu_name", "compute_capability", "fp16", "batch_profile")
    TENSORRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPU_NAME_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    FP16_FIELD_NUMBER: _ClassVar[int]
    BATCH_PROFILE_FIELD_NUMBER: _ClassVar[int]
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    fp16: bool
    batch_profile: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tensorrt_version: _Optional[str] = ..., gpu_name: _Optional[str] = ..., compute_capability: _Optional[str] = ..., fp16: _Optional[bool] = ..., batch_profile: _Optional[_Iterable[int]] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportFormat(_message.Message):
    __slots__ = ("name", "available", "unavailable_reason", "library_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    unavailable_reason: str
    library_version: str
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., library_version: _Optional[str] = ...) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("formats", "opsets", "default_opset", "devices")
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    OPSETS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OPSET_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    formats: _containers.RepeatedCompositeFieldContainer[ExportFormat]
    opsets: _containers.RepeatedScalarFieldContainer[int]
    default_opset: int
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, formats: _Optional[_Iterable[_Union[ExportFormat, _Mapping]]] = ..., opsets: _Optional[_Iterable[int]] = ..., default_opset: _Optional[int] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class ValidateSpecRequest(_message.Message):
    __slots__ = ("spec", "model_framework", "model_task", "model_imgsz")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    MODEL_TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_IMGSZ_FIELD_NUMBER: _ClassVar[int]
    spec: ExportSpec
    model_framework: str
    model_task: str
    model_imgsz: int
    def __init__(self, spec: _Optional[_Union[ExportSpec, _Mapping]] = ..., model_framework: _Optional[str] = ..., model_task: _Optional[str] = ..., model_imgsz: _Optional[int] = ...) -> None: ...

class ValidateSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ExportSpec
    def __init__(self, spec: _Optional[_Union[ExportSpec, _Mapping]] = ...) -> None: ...
