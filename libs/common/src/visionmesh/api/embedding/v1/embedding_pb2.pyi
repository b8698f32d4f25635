import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionmesh.api.common.v1 import artifact_pb2 as _artifact_pb2
from visionmesh.api.common.v1 import image_pb2 as _image_pb2
from visionmesh.api.inference.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class FilterCondition(_message.Message):
    __slots__ = ("key", "string_value", "int_value", "bool_value", "in_strings", "in_ints", "range")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    IN_STRINGS_FIELD_NUMBER: _ClassVar[int]
    IN_INTS_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    string_value: str
    int_value: int
    bool_value: bool
    in_strings: StringValues
    in_ints: IntValues
    range: NumberRange
    def __init__(self, key: _Optional[str] = ..., string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ..., in_strings: _Optional[_Union[StringValues, _Mapping]] = ..., in_ints: _Optional[_Union[IntValues, _Mapping]] = ..., range: _Optional[_Union[NumberRange, _Mapping]] = ...) -> None: ...

class StringValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class IntValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class NumberRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("conditions", "any", "none", "all_of", "any_of")
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[FilterCondition]
    any: _containers.RepeatedCompositeFieldContainer[FilterCondition]
    none: _containers.RepeatedCompositeFieldContainer[FilterCondition]
    all_of: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    any_of: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    def __init__(self, conditions: _Optional[_Iterable[_Union[FilterCondition, _Mapping]]] = ..., any: _Optional[_Iterable[_Union[FilterCondition, _Mapping]]] = ..., none: _Optional[_Iterable[_Union[FilterCondition, _Mapping]]] = ..., all_of: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ..., any_of: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ...) -> None: ...

class EmbeddingModel(_message.Message):
    __slots__ = ("name", "dim", "family", "description", "imgsz", "model_version_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    family: str
    description: str
    imgsz: int
    model_version_id: str
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., family: _Optional[str] = ..., description: _Optional[str] = ..., imgsz: _Optional[int] = ..., model_version_id: _Optional[str] = ...) -> None: ...

class GetCapabilitiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCapabilitiesResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[EmbeddingModel]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[EmbeddingModel, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "images", "normalize", "backbone")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    normalize: bool
    backbone: ResolvedBackbone
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., normalize: _Optional[bool] = ..., backbone: _Optional[_Union[ResolvedBackbone, _Mapping]] = ...) -> None: ...

class ResolvedBackbone(_message.Message):
    __slots__ = ("model_version_id", "checkpoint", "framework", "imgsz")
    MODEL_VERSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    IMGSZ_FIELD_NUMBER: _ClassVar[int]
    model_version_id: str
    checkpoint: _artifact_pb2.ArtifactRef
    framework: str
    imgsz: int
    def __init__(self, model_version_id: _Optional[str] = ..., checkpoint: _Optional[_Union[_artifact_pb2.ArtifactRef, _Mapping]] = ..., framework: _Optional[str] = ..., imgsz: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, vector: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "dim", "embeddings")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    dim: int
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, model: _Optional[str] = ..., dim: _Optional[int] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class Collection(_message.Message):
    __slots__ = ("name", "tenant_id", "dim", "distance", "model", "points_count", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    tenant_id: str
    dim: int
    distance: str
    model: str
    points_count: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., tenant_id: _Optional[str] = ..., dim: _Optional[int] = ..., distance: _Optional[str] = ..., model: _Optional[str] = ..., points_count: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "backbone", "dim", "distance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    backbone: ResolvedBackbone
    dim: int
    distance: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., backbone: _Optional[_Union[ResolvedBackbone, _Mapping]] = ..., dim: _Optional[int] = ..., distance: _Optional[str] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class GetCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_page_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[Collection]
    next_page_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[Collection, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: Collection
    def __init__(self, collection: _Optional[_Union[Collection, _Mapping]] = ...) -> None: ...

class ImagePoint(_message.Message):
    __slots__ = ("id", "image", "product_id", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: _image_pb2.Image
    product_id: str
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., product_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpsertImagesRequest(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: _containers.RepeatedCompositeFieldContainer[ImagePoint]
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[_Iterable[_Union[ImagePoint, _Mapping]]] = ...) -> None: ...

class UpsertImagesResponse(_message.Message):
    __slots__ = ("ids", "points_count")
    IDS_FIELD_NUMBER: _ClassVar[int]
    POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    points_count: int
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., points_count: _Optional[int] = ...) -> None: ...

class DeletePointsRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: MetadataFilter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ...) -> None: ...

class DeletePointsResponse(_message.Message):
    __slots__ = ("deleted", "points_count")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    POINTS_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    points_count: int
    def __init__(self, deleted: _Optional[int] = ..., points_count: _Optional[int] = ...) -> None: ...

class ScoredPoint(_message.Message):
    __slots__ = ("id", "score", "product_id", "image_key", "payload")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    product_id: str
    image_key: str
    payload: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., product_id: _Optional[str] = ..., image_key: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "image", "vector", "point_id", "top_k", "filter", "score_threshold")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    POINT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: _image_pb2.Image
    vector: Vector
    point_id: str
    top_k: int
    filter: MetadataFilter
    score_threshold: float
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., point_id: _Optional[str] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., score_threshold: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[ScoredPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[ScoredPoint, _Mapping]]] = ...) -> None: ...

class ProductMatch(_message.Message):
    __slots__ = ("product_id", "score", "point")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    score: float
    point: ScoredPoint
    def __init__(self, product_id: _Optional[str] = ..., score: _Optional[float] = ..., point: _Optional[_Union[ScoredPoint, _Mapping]] = ...) -> None: ...

class ImageMatches(_message.Message):
    __slots__ = ("matched", "products", "objects")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    products: _containers.RepeatedCompositeFieldContainer[ProductMatch]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMatches]
    def __init__(self, matched: _Optional[bool] = ..., products: _Optional[_Iterable[_Union[ProductMatch, _Mapping]]] = ..., objects: _Optional[_Iterable[_Union[ObjectMatches, _Mapping]]] = ...) -> None: ...

class ObjectMatches(_message.Message):
    __slots__ = ("detection", "matched", "products")
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    detection: _inference_pb2.Detection
    matched: bool
    products: _containers.RepeatedCompositeFieldContainer[ProductMatch]
    def __init__(self, detection: _Optional[_Union[_inference_pb2.Detection, _Mapping]] = ..., matched: _Optional[bool] = ..., products: _Optional[_Iterable[_Union[ProductMatch, _Mapping]]] = ...) -> None: ...

class MatchRequest(_message.Message):
    __slots__ = ("collection", "images", "top_k", "threshold", "filter", "detector_deployment", "detector_options")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    top_k: int
    threshold: float
    filter: MetadataFilter
    detector_deployment: str
    detector_options: _inference_pb2.PredictOptions
    def __init__(self, collection: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., detector_deployment: _Optional[str] = ..., detector_options: _Optional[_Union[_inference_pb2.PredictOptions, _Mapping]] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageMatches]
    def __init__(self, results: _Optional[_Iterable[_Union[ImageMatches, _Mapping]]] = ...) -> None: ...

class ProductSource(_message.Message):
    __slots__ = ("dataset_id", "snapshot_id", "product_ids")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    snapshot_id: str
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CatalogFilterSource(_message.Message):
    __slots__ = ("filter", "dataset_id", "snapshot_id")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    filter: MetadataFilter
    dataset_id: str
    snapshot_id: str
    def __init__(self, filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., dataset_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("dataset_id", "snapshot_id", "splits", "class_as_product_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    CLASS_AS_PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    snapshot_id: str
    splits: _containers.RepeatedScalarFieldContainer[str]
    class_as_product_id: bool
    def __init__(self, dataset_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ..., splits: _Optional[_Iterable[str]] = ..., class_as_product_id: _Optional[bool] = ...) -> None: ...

class SourceImage(_message.Message):
    __slots__ = ("key", "id", "product_id", "payload", "collection")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    key: str
    id: str
    product_id: str
    payload: _struct_pb2.Struct
    collection: str
    def __init__(self, key: _Optional[str] = ..., id: _Optional[str] = ..., product_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., collection: _Optional[str] = ...) -> None: ...

class ImageListSource(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[SourceImage]
    def __init__(self, images: _Optional[_Iterable[_Union[SourceImage, _Mapping]]] = ...) -> None: ...

class CollectionRouting(_message.Message):
    __slots__ = ("default_collection", "field", "create_missing", "routes", "distance")
    class RoutesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEFAULT_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CREATE_MISSING_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    default_collection: str
    field: str
    create_missing: bool
    routes: _containers.ScalarMap[str, str]
    distance: str
    def __init__(self, default_collection: _Optional[str] = ..., field: _Optional[str] = ..., create_missing: _Optional[bool] = ..., routes: _Optional[_Mapping[str, str]] = ..., distance: _Optional[str] = ...) -> None: ...

class EmbeddingJobSpec(_message.Message):
    __slots__ = ("products", "dataset", "metadata_filter", "images", "model", "batch_size", "normalize", "routing", "device", "backbone")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FILTER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    products: ProductSource
    dataset: DatasetSource
    metadata_filter: CatalogFilterSource
    images: ImageListSource
    model: str
    batch_size: int
    normalize: bool
    routing: CollectionRouting
    device: str
    backbone: ResolvedBackbone
    def __init__(self, products: _Optional[_Union[ProductSource, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., metadata_filter: _Optional[_Union[CatalogFilterSource, _Mapping]] = ..., images: _Optional[_Union[ImageListSource, _Mapping]] = ..., model: _Optional[str] = ..., batch_size: _Optional[int] = ..., normalize: _Optional[bool] = ..., routing: _Optional[_Union[CollectionRouting, _Mapping]] = ..., device: _Optional[str] = ..., backbone: _Optional[_Union[ResolvedBackbone, _Mapping]] = ...) -> None: ...

class CollectionPoints(_message.Message):
    __slots__ = ("collection", "points")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    points: int
    def __init__(self, collection: _Optional[str] = ..., points: _Optional[int] = ...) -> None: ...

class SkippedImage(_message.Message):
    __slots__ = ("key", "reason", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    reason: str
    message: str
    def __init__(self, key: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class EmbeddingJobResult(_message.Message):
    __slots__ = ("images_selected", "images_embedded", "collections", "skipped", "images_skipped")
    IMAGES_SELECTED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    images_selected: int
    images_embedded: int
    collections: _containers.RepeatedCompositeFieldContainer[CollectionPoints]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedImage]
    images_skipped: int
    def __init__(self, images_selected: _Optional[int] = ..., images_embedded: _Optional[int] = ..., collections: _Optional[_Iterable[_Union[CollectionPoints, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedImage, _Mapping]]] = ..., images_skipped: _Optional[int] = ...) -> None: ...

class ValidateEmbeddingSpecRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: EmbeddingJobSpec
    def __init__(self, spec: _Optional[_Union[EmbeddingJobSpec, _Mapping]] = ...) -> None: ...

class ValidateEmbeddingSpecResponse(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: EmbeddingJobSpec
    def __init__(self, spec: _Optional[_Union[EmbeddingJobSpec, _Mapping]] = ...) -> None: ...
