import datetime

from buf.validate import validate_pb2 as _validate_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from visionmesh.api.common.v1 import image_pb2 as _image_pb2
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
    __slots__ = ("key", "string_value", "int_value", "bool_value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    string_value: str
    int_value: int
    bool_value: bool
    def __init__(self, key: _Optional[str] = ..., string_value: _Optional[str] = ..., int_value: _Optional[int] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[FilterCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[FilterCondition, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("model", "images", "normalize")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    normalize: bool
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., normalize: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("name", "model", "dim", "distance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    dim: int
    distance: str
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., distance: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("collection", "image", "vector", "top_k", "filter", "score_threshold")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: _image_pb2.Image
    vector: Vector
    top_k: int
    filter: MetadataFilter
    score_threshold: float
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., top_k: _Optional[int] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ..., score_threshold: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("matched", "products")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    products: _containers.RepeatedCompositeFieldContainer[ProductMatch]
    def __init__(self, matched: _Optional[bool] = ..., products: _Optional[_Iterable[_Union[ProductMatch, _Mapping]]] = ...) -> None: ...

class MatchRequest(_message.Message):
    __slots__ = ("collection", "images", "top_k", "threshold", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    top_k: int
    threshold: float
    filter: MetadataFilter
    def __init__(self, collection: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., threshold: _Optional[float] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ...) -> None: ...

class MatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageMatches]
    def __init__(self, results: _Optional[_Iterable[_Union[ImageMatches, _Mapping]]] = ...) -> None: ...

class ProductSource(_message.Message):
    __slots__ = ("catalog_prefix", "product_ids")
    CATALOG_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    catalog_prefix: str
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, catalog_prefix: _Optional[str] = ..., product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CatalogFilterSource(_message.Message):
    __slots__ = ("catalog_prefix", "filter")
    CATALOG_PREFIX_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    catalog_prefix: str
    filter: MetadataFilter
    def __init__(self, catalog_prefix: _Optional[str] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("key", "id", "product_id", "payload")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    key: str
    id: str
    product_id: str
    payload: _struct_pb2.Struct
    def __init__(self, key: _Optional[str] = ..., id: _Optional[str] = ..., product_id: _Optional[str] = ..., payload: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ImageListSource(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[SourceImage]
    def __init__(self, images: _Optional[_Iterable[_Union[SourceImage, _Mapping]]] = ...) -> None: ...

class CollectionRouting(_message.Message):
    __slots__ = ("default_collection", "field", "create_missing", "distance")
    DEFAULT_COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    CREATE_MISSING_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    default_collection: str
    field: str
    create_missing: bool
    distance: str
    def __init__(self, default_collection: _Optional[str] = ..., field: _Optional[str] = ..., create_missing: _Optional[bool] = ..., distance: _Optional[str] = ...) -> None: ...

class EmbeddingJobSpec(_message.Message):
    __slots__ = ("products", "dataset", "metadata_filter", "images", "model", "batch_size", "normalize", "routing", "device")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    METADATA_FILTER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    products: ProductSource
    dataset: DatasetSource
    metadata_filter: CatalogFilterSource
    images: ImageListSource
    model: str
    batch_size: int
    normalize: bool
    routing: CollectionRouting
    device: str
    def __init__(self, products: _Optional[_Union[ProductSource, _Mapping]] = ..., dataset: _Optional[_Union[DatasetSource, _Mapping]] = ..., metadata_filter: _Optional[_Union[CatalogFilterSource, _Mapping]] = ..., images: _Optional[_Union[ImageListSource, _Mapping]] = ..., model: _Optional[str] = ..., batch_size: _Optional[int] = ..., normalize: _Optional[bool] = ..., routing: _Optional[_Union[CollectionRouting, _Mapping]] = ..., device: _Optional[str] = ...) -> None: ...

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
