"""The server vector store: a Qdrant server through qdrant-client (its local mode in tests).

A space is a Qdrant collection. It keeps Qdrant's default HNSW (m=16) rather than the
multitenancy guide's `m=0, payload_m=16`: our scope is tenant AND logical collection, and
a small logical collection inside a large tenant is better served by the global graph with
filtering than by a per-tenant graph that also holds the tenant's other collections.
"""

from __future__ import annotations

from typing import Any

from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse
from visionmesh.embedding.core.filters import to_qdrant
from visionmesh.embedding.core.vector_store import (
    COLLECTION_FIELD,
    POINT_ID_FIELD,
    TENANT_FIELD,
    Distance,
    FieldType,
    Scope,
    SpaceInfo,
    StoredPoint,
    VectorStore,
)

__all__ = ["QdrantStore"]

_DISTANCES: dict[Distance, models.Distance] = {
    "cosine": models.Distance.COSINE,
    "dot": models.Distance.DOT,
    "euclid": models.Distance.EUCLID,
}
_FROM_DISTANCE: dict[models.Distance, Distance] = {v: k for k, v in _DISTANCES.items()}
_SCROLL_PAGE = 1000


def _index_schema(kind: FieldType) -> models.PayloadSchemaType | models.KeywordIndexParams:
    if kind == "keyword":
        return models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD)
    return {
        "integer": models.PayloadSchemaType.INTEGER,
        "float": models.PayloadSchemaType.FLOAT,
        "bool": models.PayloadSchemaType.BOOL,
    }[kind]


class QdrantStore(VectorStore):
    """Spaces as collections of a Qdrant server (or of qdrant-client's local mode)."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        super().__init__()
        self._client = client

    @classmethod
    def connect(cls, url: str, *, api_key: str | None = None, timeout: int = 30) -> QdrantStore:
        """A store on the Qdrant server at `url` (http://host:6333)."""
        return cls(AsyncQdrantClient(url=url, api_key=api_key, timeout=timeout))

    @classmethod
    def local(cls, location: str = ":memory:") -> QdrantStore:
        """qdrant-client's local mode (`:memory:` or a folder): a brute-force stand-in for tests."""
        if location == ":memory:":
            return cls(AsyncQdrantClient(location=":memory:"))
        return cls(AsyncQdrantClient(path=location))

    async def _load_space(self, space: str) -> SpaceInfo | None:
        if not await self._client.collection_exists(space):
            return None
        collection = await self._client.get_collection(space)
        params = collection.config.params.vectors
        if not isinstance(params, models.VectorParams):
            raise TypeError(f"collection {space!r} has named vectors; not a visionmesh space")
        index_fields: dict[str, FieldType] = {}
        for key, schema in (collection.payload_schema or {}).items():
            if key in (TENANT_FIELD, COLLECTION_FIELD, POINT_ID_FIELD):
                continue
            kind = str(schema.data_type.value if schema.data_type else "keyword")
            if kind in ("keyword", "integer", "float", "bool"):
                index_fields[key] = kind  # type: ignore[assignment]  # checked just above
        return SpaceInfo(
            name=space,
            dim=params.size,
            distance=_FROM_DISTANCE.get(params.distance, "cosine"),
            index_fields=index_fields,
        )

    async def _ensure_space(self, info: SpaceInfo) -> SpaceInfo:
        existing = await self._load_space(info.name)
        if existing is None:
            try:
                await self._client.create_collection(
                    info.name,
                    vectors_config=models.VectorParams(
                        size=info.dim, distance=_DISTANCES[info.distance]
                    ),
                )
            except (UnexpectedResponse, ValueError):
                # Another replica created it first (409 from a server, ValueError locally).
                if not await self._client.collection_exists(info.name):
                    raise
            existing = await self._load_space(info.name)
            assert existing is not None
        if (existing.dim, existing.distance) != (info.dim, info.distance):
            return existing
        scope_indexes: dict[str, models.PayloadSchemaType | models.KeywordIndexParams] = {
            # is_tenant: the server co-locates each tenant's points and plans tenant-filtered
            # searches around them (Qdrant's multitenancy guide).
            TENANT_FIELD: models.KeywordIndexParams(
                type=models.KeywordIndexType.KEYWORD, is_tenant=True
            ),
            COLLECTION_FIELD: _index_schema("keyword"),
            POINT_ID_FIELD: _index_schema("keyword"),
        }
        wanted = scope_indexes | {k: _index_schema(v) for k, v in info.index_fields.items()}
        for key, schema in wanted.items():
            # Creating an existing index is a no-op on the server; local mode ignores indexes.
            await self._client.create_payload_index(info.name, key, field_schema=schema, wait=True)
        return SpaceInfo(
            name=info.name,
            dim=info.dim,
            distance=info.distance,
            index_fields={**existing.index_fields, **info.index_fields},
        )

    @staticmethod
    def _filter(scope: Scope) -> models.Filter:
        scoped = to_qdrant(scope.engine_filter())
        if scope.point_uuids is None:
            return scoped
        return models.Filter(must=[scoped, models.HasIdCondition(has_id=list(scope.point_uuids))])

    async def _upsert(self, space: str, points: list[StoredPoint]) -> None:
        await self._client.upsert(
            space,
            points=[
                models.PointStruct(id=p.uuid, vector=p.vector, payload=p.payload) for p in points
            ],
            wait=True,
        )

    async def _search(
        self,
        space: str,
        scope: Scope,
        vector: list[float],
        limit: int,
        score_threshold: float | None,
    ) -> list[tuple[float, dict[str, Any]]]:
        response = await self._client.query_points(
            space,
            query=vector,
            query_filter=self._filter(scope),
            limit=limit,
            with_payload=True,
            score_threshold=score_threshold,
        )
        return [(p.score, dict(p.payload or {})) for p in response.points]

    async def _scroll(
        self, space: str, scope: Scope, with_vectors: bool
    ) -> list[tuple[dict[str, Any], list[float] | None]]:
        found: list[tuple[dict[str, Any], list[float] | None]] = []
        offset: Any = None
        while True:
            records, offset = await self._client.scroll(
                space,
                scroll_filter=self._filter(scope),
                limit=_SCROLL_PAGE,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for record in records:
                vector: Any = record.vector if with_vectors else None
                if isinstance(vector, dict):
                    vector = vector.get("")
                dense = [float(x) for x in vector] if isinstance(vector, list) else None
                found.append((dict(record.payload or {}), dense))
            if offset is None:
                return found

    async def _count(self, space: str, scope: Scope) -> int:
        result = await self._client.count(space, count_filter=self._filter(scope), exact=True)
        return result.count

    async def _delete(self, space: str, scope: Scope) -> None:
        await self._client.delete(
            space, points_selector=models.FilterSelector(filter=self._filter(scope)), wait=True
        )

    async def _optimize(self, space: str) -> None:
        """Nothing to do: the server's optimizer indexes in the background."""

    async def _close(self) -> None:
        self._spaces.clear()
        await self._client.close()
