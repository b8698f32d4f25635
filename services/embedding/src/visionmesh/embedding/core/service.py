"""The embedding service's core: embeddings, tenant-scoped collections, search and matching.

Both transports (EmbeddingService over gRPC and REST through the gateway) and embedding jobs
go through this class; the servicer only adapts messages. Every call reads the caller's
tenant from the bound principal: a collection of another tenant is NOT_FOUND, and the vector
store scopes every operation to the tenant and the collection.

A collection row binds a logical name to one model, dimension and distance; its points live
in the vector store's shared space of that model. The store's scope key is the row's id, not
its name, so points a racing writer left behind after a delete can never reappear in a new
collection of the same name.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, struct_pb2
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.auth import Principal, current_principal, require_principal
from visionmesh.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    VisionMeshError,
)
from visionmesh.common.logging import get_logger
from visionmesh.common.paging import DEFAULT_PAGE_SIZE, name_after, name_page_token
from visionmesh.common.specs.embedding import RESOLVED_BACKBONE_SCOPE
from visionmesh.common.storage import ObjectStore
from visionmesh.common.tenancy import tenant_key
from visionmesh.common.vision.processing import decode_image
from visionmesh.embedding.core.collections import CollectionStore
from visionmesh.embedding.core.embedders import Embedder, EmbedderInfo
from visionmesh.embedding.core.filters import Filter, index_types
from visionmesh.embedding.core.proto_filters import filter_from_proto
from visionmesh.embedding.core.provider import EmbedderProvider, backbone_name
from visionmesh.embedding.core.vector_store import (
    RESERVED_FIELDS,
    Distance,
    Hit,
    PointIn,
    VectorStore,
    space_name,
)
from visionmesh.embedding.db.models import CollectionRow

__all__ = [
    "DEFAULT_MATCH_TOP_K",
    "DEFAULT_SEARCH_TOP_K",
    "IMAGE_KEY_FIELD",
    "PRODUCT_ID_FIELD",
    "Detect",
    "EmbeddingCore",
    "ImageLimits",
]

DEFAULT_SEARCH_TOP_K = 10
DEFAULT_MATCH_TOP_K = 5
MATCH_CANDIDATES_PER_PRODUCT = 10
MIN_MATCH_CANDIDATES = 50
PRODUCT_ID_FIELD = "product_id"
IMAGE_KEY_FIELD = "_image_key"
"""The object key an image was stored from; "_" keys are reserved, never shown as payload."""
VECTOR_ONLY_SPACE = "vectors"
"""Space-name stem of collections without a model (vectors given by callers)."""

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DISTANCES: tuple[Distance, ...] = ("cosine", "dot", "euclid")

Image = npt.NDArray[np.uint8]


_log = get_logger(__name__)


class RememberBackbone(Protocol):
    """Keeps a gateway-resolved backbone checkpoint for a tenant (core.backbone_files)."""

    async def remember(self, tenant_id: str, backbone: embedding_pb2.ResolvedBackbone) -> None: ...

    async def known(self, tenant_id: str) -> list[str]:
        """The model version ids resolved for the tenant."""
        ...


Detect = Callable[
    [Principal, str, Sequence[bytes], inference_pb2.PredictOptions],
    Awaitable[list[list[inference_pb2.Detection]]],
]
"""(caller, detector deployment, encoded images, options) -> each image's detections, boxes in
original image pixels. The service wiring calls the inference service's Predict over gRPC
with the caller's credentials, so the deployment is looked up in the caller's tenant."""


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class _Loaded:
    data: bytes
    pixels: Image
    key: str = ""
    """The key the caller named it by; empty for inline bytes."""


class EmbeddingCore:
    """Embeddings, collections and queries of the caller's tenant."""

    def __init__(
        self,
        *,
        collections: CollectionStore,
        vectors: VectorStore,
        embedders: EmbedderProvider,
        objects: ObjectStore | None = None,
        detect: Detect | None = None,
        default_model: str = "",
        limits: ImageLimits | None = None,
        backbones: RememberBackbone | None = None,
    ) -> None:
        self._collections = collections
        self._vectors = vectors
        self._embedders = embedders
        self._objects = objects
        self._detect = detect
        self._default_model = default_model
        self._limits = limits or ImageLimits()
        self._backbones = backbones
        self._indexed: set[tuple[str, str]] = set()

    # --- capabilities and Embed ---------------------------------------------------------

    @property
    def default_model(self) -> str:
        """The configured default, else the first DINOv2 model present ("" with none)."""
        if self._default_model:
            return self._default_model
        found = self._embedders.dinov2_models()
        return found[0].name if found else ""

    async def capabilities(self) -> embedding_pb2.GetCapabilitiesResponse:
        """DINOv2 models present here, then the caller's backbones the gateway resolved."""
        models = [_model(info) for info in self._embedders.dinov2_models()]
        caller = current_principal()
        if caller is not None and self._backbones is not None:
            for version in await self._backbones.known(caller.tenant_id):
                name = backbone_name(version)
                try:
                    info = await self._embedders.describe(name, tenant_id=caller.tenant_id)
                except VisionMeshError as exc:
                    _log.warning("backbone not listed", backbone=name, reason=exc.message)
                    continue
                models.append(_model(info))
        return embedding_pb2.GetCapabilitiesResponse(
            models=models, default_model=self.default_model
        )

    async def embed(self, request: embedding_pb2.EmbedRequest) -> embedding_pb2.EmbedResponse:
        caller = require_principal()
        await self._remember_backbone(caller, request, "backbone")
        name = request.model or self.default_model
        if not name:
            raise InvalidArgument.for_field("model", "required: this deployment has no default")
        embedder = await self._embedders.get(name, tenant_id=caller.tenant_id)
        loaded = await self._load_images(caller, request.images, "images")
        normalize = request.normalize if request.HasField("normalize") else True
        vectors = await _embed(embedder, [image.pixels for image in loaded], normalize=normalize)
        return embedding_pb2.EmbedResponse(
            model=embedder.name,
            dim=embedder.dim,
            embeddings=[embedding_pb2.Embedding(vector=row.tolist()) for row in vectors],
        )

    # --- collections -----------------------------------------------------------------------

    async def create_collection(
        self, request: embedding_pb2.CreateCollectionRequest
    ) -> embedding_pb2.Collection:
        caller = require_principal()
        await self._remember_backbone(caller, request, "backbone")
        _check_name(request.name, "name")
        distance = request.distance or "cosine"
        if distance not in _DISTANCES:
            raise InvalidArgument.for_field(
                "distance", f"{distance!r} is not cosine, dot or euclid"
            )
        dim = request.dim
        if request.model:
            info = await self._embedders.describe(request.model, tenant_id=caller.tenant_id)
            if dim and dim != info.dim:
                raise InvalidArgument.for_field(
                    "dim",
                    f"model {request.model!r} makes {info.dim}-d vectors, not {dim}-d",
                    reason="VECTOR_DIMENSION_MISMATCH",
                )
            dim = info.dim
        elif dim <= 0:
            raise InvalidArgument.for_field(
                "dim", "required for a collection without a model (vectors are given directly)"
            )
        space = space_name(request.model or VECTOR_ONLY_SPACE, dim, distance)  # type: ignore[arg-type]
        await self._vectors.ensure_space(space, dim=dim, distance=distance)  # type: ignore[arg-type]
        row = await self._collections.create(
            tenant_id=caller.tenant_id,
            name=request.name,
            model=request.model,
            dim=dim,
            distance=distance,
            space=space,
        )
        return _collection(row, 0)

    async def get_collection(self, name: str) -> embedding_pb2.Collection:
        row = await self._row(require_principal(), name)
        return _collection(row, await self._count(row))

    async def list_collections(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[embedding_pb2.Collection], str]:
        caller = require_principal()
        after = name_after(page_token)
        limit = page_size or DEFAULT_PAGE_SIZE
        rows = await self._collections.page(caller.tenant_id, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        token = name_page_token(rows[-1].name) if more else ""
        return [_collection(row, await self._count(row)) for row in rows], token

    async def delete_collection(self, name: str) -> embedding_pb2.Collection:
        caller = require_principal()
        row = await self._row(caller, name)
        count = await self._count(row)
        # Points first: a failure leaves the collection in place, and deleting again retries.
        await self._vectors.drop_collection(row.space, row.tenant_id, row.id)
        if await self._collections.delete(caller.tenant_id, name) is None:
            raise NotFound(resource_type="collection", resource_id=name)
        return _collection(row, count)

    async def collection(self, tenant_id: str, name: str, *, field: str) -> CollectionRow:
        """A tenant's collection for a job or a check; NotFound naming `field`."""
        row = await self._collections.get(tenant_id, name)
        if row is None:
            raise NotFound(
                f"{field}: collection {name!r} not found",
                resource_type="collection",
                resource_id=name,
            )
        return row

    def check_target(self, row: CollectionRow, embedder: EmbedderInfo, *, field: str) -> None:
        """InvalidArgument naming `field` unless `embedder`'s vectors may go to collection `row`.

        Every collection a write reaches is checked, so a vector of another model or
        dimension never lands in a collection (a routing target as much as the default).
        """
        if not row.model:
            raise FailedPrecondition.for_field(
                field,
                f"collection {row.name!r} has no model: it holds vectors given directly, "
                "so images cannot be embedded into it",
            )
        if row.model != embedder.name or row.dim != embedder.dim:
            raise InvalidArgument.for_field(
                field,
                f"collection {row.name!r} holds {row.dim}-d vectors of model {row.model!r}, "
                f"not {embedder.dim}-d vectors of {embedder.name!r}",
                reason="COLLECTION_MODEL_MISMATCH",
            )

    # --- points ----------------------------------------------------------------------------

    async def upsert_images(
        self, request: embedding_pb2.UpsertImagesRequest
    ) -> embedding_pb2.UpsertImagesResponse:
        caller = require_principal()
        row = await self._row(caller, request.collection)
        embedder = await self._collection_embedder(caller, row, "collection")
        payloads: list[dict[str, Any]] = []
        for index, point in enumerate(request.points):
            field = f"points[{index}]"
            if not point.id:
                raise InvalidArgument.for_field(f"{field}.id", "must not be empty")
            if not point.HasField("image"):
                raise InvalidArgument.for_field(f"{field}.image", "required")
            payloads.append(_payload_in(point, f"{field}.payload"))
        loaded = await self._load_images(
            caller, [point.image for point in request.points], "points", suffix=".image"
        )
        vectors = await _embed(embedder, [image.pixels for image in loaded])
        points = []
        for point, payload, image, vector in zip(
            request.points, payloads, loaded, vectors, strict=True
        ):
            if image.key:
                payload[IMAGE_KEY_FIELD] = image.key
            points.append(PointIn(id=point.id, vector=vector, payload=payload))
        await self._vectors.upsert(row.space, row.tenant_id, row.id, points)
        return embedding_pb2.UpsertImagesResponse(
            ids=[point.id for point in request.points], points_count=await self._count(row)
        )

    async def delete_points(
        self, request: embedding_pb2.DeletePointsRequest
    ) -> embedding_pb2.DeletePointsResponse:
        caller = require_principal()
        row = await self._row(caller, request.collection)
        where = await self._indexed_filter(row, request)
        has_filter = request.HasField("filter")
        if not request.ids and not has_filter:
            raise InvalidArgument.for_field("ids", "give ids, a filter, or both")
        if has_filter and where is None and not request.ids:
            # An empty filter matches every point: that is DeleteCollection's job, and a
            # mistake here would be costly.
            raise InvalidArgument.for_field(
                "filter", "is empty and would delete every point; delete the collection instead"
            )
        deleted = await self._vectors.delete_points(
            row.space,
            row.tenant_id,
            row.id,
            ids=list(request.ids) or None,
            filter=where,
        )
        return embedding_pb2.DeletePointsResponse(
            deleted=deleted, points_count=await self._count(row)
        )

    # --- queries ---------------------------------------------------------------------------

    async def search(self, request: embedding_pb2.SearchRequest) -> embedding_pb2.SearchResponse:
        caller = require_principal()
        row = await self._row(caller, request.collection)
        where = await self._indexed_filter(row, request)
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_SEARCH_TOP_K
        if top_k <= 0:
            raise InvalidArgument.for_field("top_k", "must be > 0")
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        which = request.WhichOneof("query")
        exclude = ""
        field = "vector.values"
        query: Sequence[float] | npt.NDArray[np.float32]
        if which == "image":
            embedder = await self._collection_embedder(caller, row, "collection")
            (image,) = await self._load_images(caller, [request.image], "image", indexed=False)
            query = (await _embed(embedder, [image.pixels]))[0]
            field = "image"
        elif which == "vector":
            query = list(request.vector.values)
        elif which == "point_id":
            records = await self._vectors.retrieve(
                row.space, row.tenant_id, row.id, [request.point_id], with_vectors=True
            )
            if not records or records[0].vector is None:
                raise NotFound(
                    f"point_id: collection {row.name!r} has no point {request.point_id!r}",
                    resource_type="point",
                    resource_id=request.point_id,
                )
            query = records[0].vector
            exclude = request.point_id
            field = "point_id"
        else:
            raise InvalidArgument.for_field("query", "give an image, a vector or a point_id")
        hits = await self._vectors.search(
            row.space,
            row.tenant_id,
            row.id,
            query,
            limit=top_k + (1 if exclude else 0),
            filter=where,
            score_threshold=threshold,
            field_path=field,
        )
        points = [_scored(hit) for hit in hits if hit.id != exclude][:top_k]
        return embedding_pb2.SearchResponse(points=points)

    async def match(self, request: embedding_pb2.MatchRequest) -> embedding_pb2.MatchResponse:
        caller = require_principal()
        row = await self._row(caller, request.collection)
        embedder = await self._collection_embedder(caller, row, "collection")
        where = await self._indexed_filter(row, request)
        top_k = request.top_k if request.HasField("top_k") else DEFAULT_MATCH_TOP_K
        if top_k <= 0:
            raise InvalidArgument.for_field("top_k", "must be > 0")
        threshold = request.threshold if request.HasField("threshold") else None
        loaded = await self._load_images(caller, request.images, "images")
        if request.detector_deployment:
            return await self._match_scenes(caller, request, row, embedder, loaded, top_k, where)
        vectors = await _embed(embedder, [image.pixels for image in loaded])
        response = embedding_pb2.MatchResponse()
        for vector in vectors:
            products = await self._products(row, vector, top_k, where, threshold)
            response.results.append(
                embedding_pb2.ImageMatches(matched=bool(products), products=products)
            )
        return response

    async def _match_scenes(
        self,
        caller: Principal,
        request: embedding_pb2.MatchRequest,
        row: CollectionRow,
        embedder: Embedder,
        loaded: list[_Loaded],
        top_k: int,
        where: Filter | None,
    ) -> embedding_pb2.MatchResponse:
        if self._detect is None:
            raise FailedPrecondition.for_field(
                "detector_deployment", "this deployment is not connected to an inference service"
            )
        threshold = request.threshold if request.HasField("threshold") else None
        detections = await self._detect(
            caller,
            request.detector_deployment,
            [image.data for image in loaded],
            request.detector_options,
        )
        if len(detections) != len(loaded):
            raise RuntimeError(
                f"the detector answered {len(detections)} images for {len(loaded)} asked"
            )
        crops: list[Image] = []
        owners: list[tuple[int, int]] = []
        for image_index, (image, found) in enumerate(zip(loaded, detections, strict=True)):
            for object_index, detection in enumerate(found):
                crop = crop_box(image.pixels, detection.box)
                if crop is not None:
                    crops.append(crop)
                    owners.append((image_index, object_index))
        vectors = await _embed(embedder, crops)
        matched: dict[tuple[int, int], list[embedding_pb2.ProductMatch]] = {}
        for owner, vector in zip(owners, vectors, strict=True):
            matched[owner] = await self._products(row, vector, top_k, where, threshold)
        response = embedding_pb2.MatchResponse()
        for image_index, found in enumerate(detections):
            result = embedding_pb2.ImageMatches()
            for object_index, detection in enumerate(found):
                products = matched.get((image_index, object_index), [])
                result.objects.append(
                    embedding_pb2.ObjectMatches(
                        detection=detection, matched=bool(products), products=products
                    )
                )
            response.results.append(result)
        return response

    async def _products(
        self,
        row: CollectionRow,
        vector: npt.NDArray[np.float32],
        top_k: int,
        where: Filter | None,
        threshold: float | None,
    ) -> list[embedding_pb2.ProductMatch]:
        """The best `top_k` products of one query vector, each scored by its best point.

        Candidates are the nearest points (several per product wanted, since one product
        has several reference images); a product is counted once, at its best point.
        Points without a product id are not products and never match.
        """
        limit = max(top_k * MATCH_CANDIDATES_PER_PRODUCT, MIN_MATCH_CANDIDATES)
        hits = await self._vectors.search(
            row.space,
            row.tenant_id,
            row.id,
            vector,
            limit=limit,
            filter=where,
            score_threshold=threshold,
        )
        lower_is_better = row.distance == "euclid"
        best: dict[str, Hit] = {}
        for hit in hits:
            product = hit.payload.get(PRODUCT_ID_FIELD)
            if not isinstance(product, str) or not product:
                continue
            if threshold is not None and (
                hit.score > threshold if lower_is_better else hit.score < threshold
            ):
                continue
            held = best.get(product)
            if held is None or (
                hit.score < held.score if lower_is_better else hit.score > held.score
            ):
                best[product] = hit
        ranked = sorted(best.items(), key=lambda item: item[1].score, reverse=not lower_is_better)
        return [
            embedding_pb2.ProductMatch(product_id=product, score=hit.score, point=_scored(hit))
            for product, hit in ranked[:top_k]
        ]

    # --- embedding job specs ---------------------------------------------------------------

    async def validate_embedding_spec(
        self, spec: embedding_pb2.EmbeddingJobSpec
    ) -> embedding_pb2.EmbeddingJobSpec:
        """The spec with defaults filled in, once every collection it can write to is checked."""
        caller = require_principal()
        await self._remember_backbone(caller, spec, "spec.backbone")
        checked = embedding_pb2.EmbeddingJobSpec()
        checked.CopyFrom(spec)
        routing = checked.routing
        if not routing.default_collection:
            raise InvalidArgument.for_field("spec.routing.default_collection", "required")
        _check_name(routing.default_collection, "spec.routing.default_collection")
        distance = routing.distance or "cosine"
        if distance not in _DISTANCES:
            raise InvalidArgument.for_field(
                "spec.routing.distance", f"{distance!r} is not cosine, dot or euclid"
            )
        routing.distance = distance
        default = await self._collections.get(caller.tenant_id, routing.default_collection)
        if default is None and not routing.create_missing:
            raise NotFound(
                f"spec.routing.default_collection: collection {routing.default_collection!r} "
                "not found (set create_missing to create it)",
                resource_type="collection",
                resource_id=routing.default_collection,
            )
        if not checked.model:
            checked.model = default.model if default is not None else self.default_model
            if not checked.model:
                raise InvalidArgument.for_field(
                    "spec.model",
                    f"required: collection {routing.default_collection!r} has no model",
                )
        info = await self._embedders.describe(
            checked.model, tenant_id=caller.tenant_id, field="spec.model"
        )
        targets: dict[str, str] = {
            routing.default_collection: "spec.routing.default_collection",
        }
        for value, target in sorted(routing.routes.items()):
            targets.setdefault(target, f"spec.routing.routes[{value!r}]")
        if checked.WhichOneof("source") == "images":
            for index, image in enumerate(checked.images.images):
                if image.collection:
                    targets.setdefault(image.collection, f"spec.images.images[{index}].collection")
        for name, field in targets.items():
            _check_name(name, field)
            row = await self._collections.get(caller.tenant_id, name)
            if row is not None:
                # The default collection decides when the spec names no model, so a
                # mismatch there is about spec.model; elsewhere it is the target's.
                self.check_target(
                    row, info, field="spec.model" if name == routing.default_collection else field
                )
            elif not routing.create_missing and field.startswith("spec.images."):
                raise NotFound(
                    f"{field}: collection {name!r} not found (set create_missing to create it)",
                    resource_type="collection",
                    resource_id=name,
                )
        if checked.WhichOneof("source") == "metadata_filter":
            filter_from_proto(checked.metadata_filter.filter, field="spec.metadata_filter.filter")
        if not checked.HasField("batch_size"):
            checked.batch_size = 32
        if not checked.HasField("normalize"):
            checked.normalize = True
        if not checked.device:
            checked.device = "auto"
        return checked

    # --- helpers ---------------------------------------------------------------------------

    async def _indexed_filter(self, row: CollectionRow, request: Any) -> Filter | None:
        """The request's filter, once every payload field it reads is indexed in the space:
        indexes follow the filters callers use (created once per space and field)."""
        where = filter_from_proto(request.filter) if request.HasField("filter") else None
        wanted = {
            key: kind
            for key, kind in index_types(where).items()
            if (row.space, key) not in self._indexed and key not in RESERVED_FIELDS
        }
        if wanted:
            await self._vectors.ensure_space(
                row.space,
                dim=row.dim,
                distance=row.distance,  # type: ignore[arg-type]
                index_fields=wanted,
            )
            self._indexed.update((row.space, key) for key in wanted)
        return where

    async def _remember_backbone(self, caller: Principal, message: Any, field: str) -> None:
        """Keeps the checkpoint the gateway resolved for an `mv-<id>` model (it alone may)."""
        if not message.HasField("backbone"):
            return
        if not caller.has_scope(RESOLVED_BACKBONE_SCOPE):
            raise PermissionDenied(
                f"{field} is set by the gateway only; name the model as mv-<model_version_id>",
                reason="BACKBONE_NOT_RESOLVED",
            )
        if self._backbones is None:
            raise FailedPrecondition.for_field(field, "this deployment serves no backbones")
        await self._backbones.remember(caller.tenant_id, message.backbone)

    async def _row(self, caller: Principal, name: str) -> CollectionRow:
        row = await self._collections.get(caller.tenant_id, name)
        if row is None:
            raise NotFound(resource_type="collection", resource_id=name)
        return row

    async def _count(self, row: CollectionRow) -> int:
        return await self._vectors.count(row.space, row.tenant_id, row.id)

    async def _collection_embedder(
        self, caller: Principal, row: CollectionRow, field: str
    ) -> Embedder:
        if not row.model:
            raise FailedPrecondition.for_field(
                field,
                f"collection {row.name!r} has no model: it holds vectors given directly, "
                "so images cannot be embedded for it",
            )
        embedder = await self._embedders.get(row.model, tenant_id=caller.tenant_id, field=field)
        self.check_target(row, embedder.info, field=field)
        return embedder

    async def _load_images(
        self,
        caller: Principal,
        images: Sequence[image_pb2.Image],
        field: str,
        *,
        suffix: str = "",
        indexed: bool = True,
    ) -> list[_Loaded]:
        """Every image's bytes (inline or by key in the tenant) and decoded RGB pixels."""
        fields = [f"{field}[{i}]{suffix}" if indexed else field for i in range(len(images))]
        return list(
            await asyncio.gather(
                *(
                    self._load_image(caller, image, name)
                    for image, name in zip(images, fields, strict=True)
                )
            )
        )

    async def _load_image(self, caller: Principal, image: image_pb2.Image, field: str) -> _Loaded:
        limit = self._limits.max_image_bytes
        which = image.WhichOneof("source")
        if which == "key":
            key = tenant_key(caller.tenant_id, image.key, field=f"{field}.key")
            if self._objects is None:
                raise FailedPrecondition.for_field(f"{field}.key", "no object store is configured")
            try:
                info = await self._objects.stat(key)
            except NotFound:
                raise NotFound(
                    f"{field}.key: no object {image.key!r} in your tenant",
                    resource_type="image",
                    resource_id=image.key,
                ) from None
            if info.size > limit:
                raise InvalidArgument.for_field(
                    f"{field}.key", f"{info.size} bytes, the limit is {limit}", reason="TOO_LARGE"
                )
            data = await self._objects.get_bytes(key)
            source = f"{field}.key"
        elif which == "data":
            data = image.data
            source = f"{field}.data"
            if len(data) > limit:
                raise InvalidArgument.for_field(
                    source, f"{len(data)} bytes, the limit is {limit}", reason="TOO_LARGE"
                )
        else:
            raise InvalidArgument.for_field(field, "give the image's data or key")
        try:
            pixels = await asyncio.to_thread(decode_image, data)
        except ValueError as exc:
            raise InvalidArgument.for_field(
                source, f"not a decodable image: {exc}", reason="UNDECODABLE"
            ) from None
        height, width = pixels.shape[:2]
        if height * width > self._limits.max_image_pixels:
            raise InvalidArgument.for_field(
                source,
                f"{width}x{height} pixels, the limit is {self._limits.max_image_pixels}",
                reason="TOO_LARGE",
            )
        return _Loaded(data=data, pixels=pixels, key=image.key if which == "key" else "")


def crop_box(image: Image, box: inference_pb2.Box) -> Image | None:
    """The pixels of a box (original image pixels), clipped to the image; None when empty."""
    height, width = image.shape[:2]
    x1 = max(0, math.floor(box.x1))
    y1 = max(0, math.floor(box.y1))
    x2 = min(width, math.ceil(box.x2))
    y2 = min(height, math.ceil(box.y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return np.ascontiguousarray(image[y1:y2, x1:x2])


async def _embed(
    embedder: Embedder, images: Sequence[Image], *, normalize: bool = True
) -> npt.NDArray[np.float32]:
    if not images:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    # The forward blocks for a while; the event loop keeps answering meanwhile.
    return await asyncio.to_thread(embedder.embed, images, normalize=normalize)


def _payload_in(point: embedding_pb2.ImagePoint, field: str) -> dict[str, Any]:
    payload = _plain(json_format.MessageToDict(point.payload)) if point.HasField("payload") else {}
    reserved = sorted(key for key in payload if key.startswith("_"))
    if reserved:
        raise InvalidArgument.for_field(field, f"keys starting with '_' are reserved: {reserved}")
    if point.product_id:
        stated = payload.get(PRODUCT_ID_FIELD)
        if stated is not None and stated != point.product_id:
            raise InvalidArgument.for_field(
                f"{field}.{PRODUCT_ID_FIELD}",
                f"{stated!r} differs from the point's product_id {point.product_id!r}",
            )
        payload[PRODUCT_ID_FIELD] = point.product_id
    return payload


def _plain(value: Any) -> Any:
    """JSON numbers arrive as doubles; integral ones become ints, so an integer filter
    (`size = 42`, `IN [1, 2]`) matches what a caller wrote as 42."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _scored(hit: Hit) -> embedding_pb2.ScoredPoint:
    payload = {key: value for key, value in hit.payload.items() if not key.startswith("_")}
    product = hit.payload.get(PRODUCT_ID_FIELD)
    image_key = hit.payload.get(IMAGE_KEY_FIELD)
    point = embedding_pb2.ScoredPoint(
        id=hit.id,
        score=hit.score,
        product_id=product if isinstance(product, str) else "",
        image_key=image_key if isinstance(image_key, str) else "",
    )
    if payload:
        point.payload.CopyFrom(_struct(payload))
    return point


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _model(info: EmbedderInfo) -> embedding_pb2.EmbeddingModel:
    return embedding_pb2.EmbeddingModel(
        name=info.name,
        dim=info.dim,
        family=info.family,
        description=info.description,
        imgsz=info.imgsz,
        model_version_id=info.model_version_id,
    )


def _collection(row: CollectionRow, points_count: int) -> embedding_pb2.Collection:
    collection = embedding_pb2.Collection(
        name=row.name,
        tenant_id=row.tenant_id,
        dim=row.dim,
        distance=row.distance,
        model=row.model,
        points_count=points_count,
    )
    collection.create_time.FromDatetime(row.create_time)
    return collection


def _check_name(name: str, field: str) -> None:
    if not _NAME.match(name):
        raise InvalidArgument.for_field(
            field,
            f"{name!r} is not a collection name: 1-63 lowercase letters, digits, '_' and '-', "
            "starting with a letter or digit",
        )
