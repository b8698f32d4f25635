"""The vector store: one async interface over Qdrant Edge and qdrant-client, tenant-scoped.

Multitenancy follows Qdrant's guidance: one physical collection (a "space") per embedding
model, dimension and distance, e.g. `vm-dinov2_vits14-384-cosine`, shared by every tenant.
Each point's payload carries `tenant_id` (a keyword index with `is_tenant=True`, so the engine
lays a tenant's points out together), `collection` (the tenant's logical collection name,
keyword-indexed) and `point_id` (the caller's free-string id). Per-tenant physical
collections would multiply HNSW graphs and file handles by the number of tenants; Qdrant
advises against it for many small tenants.

The tenant scope is applied in this module, never by a backend: every public method builds a
`Scope` (tenant + logical collection, optionally point ids and the caller's filter) and the
backend primitives only accept a `Scope`, so no call path can reach the engine unfiltered.
"""

from __future__ import annotations

import abc
import asyncio
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias

import numpy as np
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.common.logging import get_logger
from visionmesh.embedding.core.filters import EDGE_BOOL_FIELD, And, Filter, Match

__all__ = [
    "COLLECTION_FIELD",
    "DEFAULT_INDEX_FIELDS",
    "POINT_ID_FIELD",
    "POINT_NAMESPACE",
    "RESERVED_FIELDS",
    "TENANT_FIELD",
    "Distance",
    "FieldType",
    "Hit",
    "PointIn",
    "Record",
    "Scope",
    "SpaceInfo",
    "StoredPoint",
    "VectorStore",
    "point_uuid",
    "space_name",
]

_log = get_logger(__name__)

TENANT_FIELD = "tenant_id"
COLLECTION_FIELD = "collection"
POINT_ID_FIELD = "point_id"
RESERVED_FIELDS = frozenset({TENANT_FIELD, COLLECTION_FIELD, POINT_ID_FIELD, EDGE_BOOL_FIELD})
DEFAULT_INDEX_FIELDS: Mapping[str, FieldType] = {"product_id": "keyword"}
"""Indexed in every space besides the scope fields: product matching filters on it."""

POINT_NAMESPACE = uuid.UUID("6f1f4b0e-4c1a-5a3e-9d57-7669736d6573")
"""uuid5 namespace of point ids. Never change it: existing points would stop deduplicating."""

Distance: TypeAlias = Literal["cosine", "dot", "euclid"]
FieldType: TypeAlias = Literal["keyword", "integer", "float", "bool"]

_SPACE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def point_uuid(tenant_id: str, collection: str, source_id: str) -> str:
    """The deterministic point id: a redelivered write of the same source replaces, never adds.

    `source_id` is the caller's id, or the image's content hash when the caller gave none.
    """
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant_id}/{collection}/{source_id}"))


def space_name(model: str, dim: int, distance: Distance = "cosine") -> str:
    """The physical collection of a model: `vm-<model slug>-<dim>-<distance>`."""
    slug = re.sub(r"[^a-z0-9._-]+", "_", model.lower()).strip("_") or "model"
    return f"vm-{slug}-{dim}-{distance}"


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    name: str
    dim: int
    distance: Distance
    index_fields: Mapping[str, FieldType] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PointIn:
    """A point to write: the caller's free-string id, its vector and its payload."""

    id: str
    vector: Sequence[float] | np.ndarray
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: the caller's id, the engine's score, the caller's payload."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None


@dataclass(frozen=True, slots=True)
class StoredPoint:
    """A point as the engine stores it: uuid id, checked vector, payload with scope fields."""

    uuid: str
    vector: list[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Scope:
    """The selection every backend primitive works on; only `VectorStore._scope` makes one.

    `engine_filter()` always starts with the tenant and collection conditions.
    """

    tenant_id: str
    collection: str
    filter: Filter | None = None
    point_uuids: tuple[str, ...] | None = None

    def engine_filter(self) -> Filter:
        conditions: list[Filter] = [
            Match(TENANT_FIELD, self.tenant_id),
            Match(COLLECTION_FIELD, self.collection),
        ]
        if self.filter is not None:
            conditions.append(self.filter)
        return And(conditions)


def _caller_payload(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (stored or {}).items() if k not in RESERVED_FIELDS}


class VectorStore(abc.ABC):
    """Tenant-scoped points in shared spaces. Subclasses implement the `_`-prefixed primitives.

    Writes (upsert, delete, drop) are serialised per store, so that `delete_points` counts
    exactly what it deletes.
    """

    def __init__(self) -> None:
        self._spaces: dict[str, SpaceInfo] = {}
        self._write_lock = asyncio.Lock()

    # ------------------------------------------------------------ public interface

    async def ensure_space(
        self,
        space: str,
        *,
        dim: int,
        distance: Distance = "cosine",
        index_fields: Iterable[str] | Mapping[str, FieldType] = (),
    ) -> SpaceInfo:
        """Create the space if missing (idempotent), and every payload index asked for.

        `index_fields` names payload keys that filters use: a plain name is a keyword index,
        a mapping gives each key its type. A space that exists with another dimension or
        distance is FAILED_PRECONDITION.
        """
        if not _SPACE_NAME.match(space):
            raise InvalidArgument.for_field("space", f"{space!r} is not a valid space name")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= 65536:
            raise InvalidArgument.for_field("dim", f"{dim!r} is not a vector dimension")
        if distance not in ("cosine", "dot", "euclid"):
            raise InvalidArgument.for_field("distance", f"unknown distance {distance!r}")
        wanted: dict[str, FieldType] = dict(DEFAULT_INDEX_FIELDS)
        if isinstance(index_fields, Mapping):
            wanted.update(index_fields)
        else:
            wanted.update(dict.fromkeys(index_fields, "keyword"))
        for key, kind in wanted.items():
            if key in RESERVED_FIELDS:
                raise InvalidArgument.for_field("index_fields", f"{key!r} is indexed already")
            if kind not in ("keyword", "integer", "float", "bool"):
                raise InvalidArgument.for_field("index_fields", f"{key!r}: unknown type {kind!r}")
        info = SpaceInfo(name=space, dim=dim, distance=distance, index_fields=wanted)
        async with self._write_lock:
            existing = await self._ensure_space(info)
        if (existing.dim, existing.distance) != (dim, distance):
            raise FailedPrecondition(
                f"space {space!r} holds {existing.dim}-d {existing.distance} vectors, "
                f"not {dim}-d {distance}"
            )
        self._spaces[space] = existing
        return existing

    async def upsert(
        self,
        space: str,
        tenant_id: str,
        collection: str,
        points: Sequence[PointIn],
        *,
        field_path: str = "points",
    ) -> int:
        """Write points (replacing those with the same caller id); returns how many.

        A bad point is INVALID_ARGUMENT naming `{field_path}[i].vector` (or `.id`, `.payload`),
        and nothing of the batch is written.
        """
        info = await self._space_info(space)
        self._check_scope(tenant_id, collection)
        vectors = _checked_vectors([p.vector for p in points], info, field_path)
        stored: list[StoredPoint] = []
        for i, (point, vector) in enumerate(zip(points, vectors, strict=True)):
            if not isinstance(point.id, str) or not point.id:
                raise InvalidArgument.for_field(
                    f"{field_path}[{i}].id", "must be a non-empty string"
                )
            reserved = RESERVED_FIELDS.intersection(point.payload)
            if reserved:
                raise InvalidArgument.for_field(
                    f"{field_path}[{i}].payload", f"{sorted(reserved)} are set by the store"
                )
            payload = {
                **point.payload,
                TENANT_FIELD: tenant_id,
                COLLECTION_FIELD: collection,
                POINT_ID_FIELD: point.id,
            }
            stored.append(StoredPoint(point_uuid(tenant_id, collection, point.id), vector, payload))
        if stored:
            async with self._write_lock:
                await self._upsert(space, stored)
        return len(stored)

    async def search(
        self,
        space: str,
        tenant_id: str,
        collection: str,
        vector: Sequence[float] | np.ndarray,
        *,
        limit: int = 10,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        field_path: str = "vector",
    ) -> list[Hit]:
        """The nearest points of the tenant's collection, best first.

        Scores are the engine's: cosine similarity for cosine spaces (`score_threshold` is a
        minimum), distance for euclid (a maximum).
        """
        info = await self._space_info(space)
        if limit <= 0:
            raise InvalidArgument.for_field("limit", "must be > 0")
        query = _checked_vector(vector, info, field_path)
        scope = self._scope(tenant_id, collection, filter=filter)
        found = await self._search(space, scope, query, limit, score_threshold)
        return [
            Hit(
                id=str(payload.get(POINT_ID_FIELD, "")),
                score=score,
                payload=_caller_payload(payload),
            )
            for score, payload in found
        ]

    async def retrieve(
        self,
        space: str,
        tenant_id: str,
        collection: str,
        ids: Sequence[str],
        *,
        with_vectors: bool = False,
    ) -> list[Record]:
        """The tenant's points with these caller ids, in the order asked; missing ones skipped."""
        await self._space_info(space)
        if not ids:
            return []
        uuids = tuple(point_uuid(tenant_id, collection, i) for i in ids)
        scope = self._scope(tenant_id, collection, point_uuids=uuids)
        found = await self._scroll(space, scope, with_vectors)
        by_id = {
            str(payload.get(POINT_ID_FIELD)): Record(
                id=str(payload.get(POINT_ID_FIELD)), payload=_caller_payload(payload), vector=vec
            )
            for payload, vec in found
        }
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    async def count(
        self, space: str, tenant_id: str, collection: str, filter: Filter | None = None
    ) -> int:
        """Exact number of the tenant's points in the collection matching `filter`."""
        await self._space_info(space)
        return await self._count(space, self._scope(tenant_id, collection, filter=filter))

    async def delete_points(
        self,
        space: str,
        tenant_id: str,
        collection: str,
        *,
        ids: Sequence[str] | None = None,
        filter: Filter | None = None,
    ) -> int:
        """Delete by caller ids, by filter, or both (points matching both); returns how many."""
        await self._space_info(space)
        if ids is None and filter is None:
            raise InvalidArgument.for_field(
                "ids", "give ids or a filter (drop_collection deletes everything)"
            )
        uuids = None if ids is None else tuple(point_uuid(tenant_id, collection, i) for i in ids)
        if uuids == ():
            return 0
        scope = self._scope(tenant_id, collection, filter=filter, point_uuids=uuids)
        return await self._delete_counted(space, scope)

    async def drop_collection(self, space: str, tenant_id: str, collection: str) -> int:
        """Delete every point of one logical collection; other collections keep theirs."""
        await self._space_info(space)
        return await self._delete_counted(space, self._scope(tenant_id, collection))

    async def optimize(self, space: str) -> None:
        """Build indexes over what was written (Edge indexes only when asked; a server always).
        Reads and writes go on meanwhile; the backend serialises with writes where it must."""
        await self._space_info(space)
        await self._optimize(space)

    async def maintain(self) -> None:  # noqa: B027 (deliberately empty: a server's own upkeep)
        """One pass of upkeep the engine does not do by itself (Edge: build the HNSW graph
        of spaces with many unindexed points). A Qdrant server does its own: nothing to do."""

    async def maintain_forever(self, interval_seconds: float) -> None:
        """`maintain` every `interval_seconds`, forever. A failed pass is logged and the next
        one runs: the loop never dies silently. Cancelling it stops it."""
        while True:
            try:
                await self.maintain()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("vector store upkeep failed; retrying")
            await asyncio.sleep(interval_seconds)

    async def close(self) -> None:
        async with self._write_lock:
            await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------ shared helpers

    @staticmethod
    def _check_scope(tenant_id: str, collection: str) -> None:
        if not isinstance(tenant_id, str) or not tenant_id:
            raise InvalidArgument.for_field("tenant_id", "must be a non-empty string")
        if not isinstance(collection, str) or not collection:
            raise InvalidArgument.for_field("collection", "must be a non-empty string")

    def _scope(
        self,
        tenant_id: str,
        collection: str,
        *,
        filter: Filter | None = None,
        point_uuids: tuple[str, ...] | None = None,
    ) -> Scope:
        self._check_scope(tenant_id, collection)
        return Scope(tenant_id, collection, filter=filter, point_uuids=point_uuids)

    async def _space_info(self, space: str) -> SpaceInfo:
        info = self._spaces.get(space)
        if info is None:
            info = await self._load_space(space)
            if info is None:
                raise NotFound(resource_type="vector space", resource_id=space)
            self._spaces[space] = info
        return info

    async def _delete_counted(self, space: str, scope: Scope) -> int:
        async with self._write_lock:
            n = await self._count(space, scope)
            if n:
                await self._delete(space, scope)
        return n

    # ------------------------------------------------------------ backend primitives

    @abc.abstractmethod
    async def _ensure_space(self, info: SpaceInfo) -> SpaceInfo:
        """Create or open the space and its indexes; return what it actually holds."""

    @abc.abstractmethod
    async def _load_space(self, space: str) -> SpaceInfo | None:
        """An existing space's description, or None."""

    @abc.abstractmethod
    async def _upsert(self, space: str, points: list[StoredPoint]) -> None: ...

    @abc.abstractmethod
    async def _search(
        self,
        space: str,
        scope: Scope,
        vector: list[float],
        limit: int,
        score_threshold: float | None,
    ) -> list[tuple[float, dict[str, Any]]]:
        """(score, stored payload) pairs, best first."""

    @abc.abstractmethod
    async def _scroll(
        self, space: str, scope: Scope, with_vectors: bool
    ) -> list[tuple[dict[str, Any], list[float] | None]]:
        """Every (stored payload, vector) in the scope."""

    @abc.abstractmethod
    async def _count(self, space: str, scope: Scope) -> int: ...

    @abc.abstractmethod
    async def _delete(self, space: str, scope: Scope) -> None: ...

    @abc.abstractmethod
    async def _optimize(self, space: str) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...


def _checked_vector(
    vector: Sequence[float] | np.ndarray, info: SpaceInfo, field: str
) -> list[float]:
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument.for_field(field, "must be a list of numbers") from exc
    if array.ndim != 1 or array.shape[0] != info.dim:
        got = array.shape[0] if array.ndim == 1 else f"shape {array.shape}"
        raise InvalidArgument.for_field(
            field,
            f"has {got} dimensions; space {info.name!r} holds {info.dim}-d vectors",
            reason="VECTOR_DIMENSION_MISMATCH",
        )
    if not np.isfinite(array).all():
        raise InvalidArgument.for_field(field, "has a NaN or infinite component")
    if info.distance == "cosine" and not array.any():
        raise InvalidArgument.for_field(field, "is the zero vector, which has no direction")
    return array.tolist()


def _checked_vectors(
    vectors: Sequence[Sequence[float] | np.ndarray], info: SpaceInfo, field_path: str
) -> list[list[float]]:
    """A batch checked as one array (fast path); a bad batch is rechecked point by point so
    the error names the offending point."""
    if not vectors:
        return []
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        array = None
    if (
        array is not None
        and array.ndim == 2
        and array.shape[1] == info.dim
        and np.isfinite(array).all()
        and (info.distance != "cosine" or array.any(axis=1).all())
    ):
        return array.tolist()  # type: ignore[no-any-return]
    return [_checked_vector(v, info, f"{field_path}[{i}].vector") for i, v in enumerate(vectors)]
