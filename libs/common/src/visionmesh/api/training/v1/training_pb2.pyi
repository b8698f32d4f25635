from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataLoading(_message.Message):
    __slots__ = ("preload", "num_workers", "pin_memory", "prefetch_factor")
    PRELOAD_FIELD_NUMBER: _ClassVar[int]
    NUM_WORKERS_FIELD_NUMBER: _ClassVar[int]
    PIN_MEMORY_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FACTOR_FIELD_NUMBER: _ClassVar[int]
    preload: bool
    num_workers: int
    pin_memory: bool
    prefetch_factor: int
    def __init__(self, preload: _Optional[bool] = ..., num_workers: _Optional[int] = ..., pin_memory: _Optional[bool] = ..., prefetch_factor: _Optional[int] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("framework", "task", "model", "epochs", "imgsz", "batch", "optimizer", "lr0", "patience", "seed", "device", "augment", "data_loading", "amp", "init_model_version_id")
    class AugmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LR0_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    DATA_LOADING_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    INIT_MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    framework: str
    task: str
    model: str
    epochs: int
    imgsz: int
    batch: int
    optimizer: str
    lr0: float
    patience: int
    seed: int
    device: str
    augment: _containers.ScalarMap[str, float]
    data_loading: DataLoading
    amp: bool
    init_model_version_id: str
    def __init__(self, framework: _Optional[str] = ..., task: _Optional[str] = ..., model: _Optional[str] = ..., epochs: _Optional[int] = ..., imgsz: _Optional[int] = ..., batch: _Optional[int] = ..., optimizer: _Optional[str] = ..., lr0: _Optional[float] = ..., patience: _Optional[int] = ..., seed: _Optional[int] = ..., device: _Optional[str] = ..., augment: _Optional[_Mapping[str, float]] = ..., data_loading: _Optional[_Union[DataLoading, _Mapping]] = ..., amp: _Optional[bool] = ..., init_model_version_id: _Optional[str] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskArchitectures(_message.Message):
    __slots__ = ("task", "architectures")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURES_FIELD_NUMBER: _ClassVar[int]
    task: str
    architectures: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[str] = ..., architectures: _Optional[_Iterable[str]] = ...) -> None: ...

class Framework(_message.Message):
    __slots__ = ("name", "tasks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskArchitectures]
    def __init__(self, name: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskArchitectures, _Mapping]]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "description", "memory_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    memory_bytes: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("frameworks", "devices")
    FRAMEWORKS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    frameworks: _containers.RepeatedCompositeFieldContainer[Framework]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, frameworks: _Optional[_Iterable[_Union[Framework, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class ValidateSpecRequest(_message.Message):
    __slots__ = ("spec", "dataset_task")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DATASET_TASK_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    dataset_task: str
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., dataset_task: _Optional[str] = ...) -> None: ...

class ValidateSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...
