"""The embedded vector store: Qdrant Edge (the Qdrant engine in-process), one shard per space.

Layout under `root`: `<space>/shard/` (the Edge shard: segments, WAL, edge_config.json) and
`<space>/space.json` (dimension, distance and payload indexes, so a reopened store validates
vectors before the engine sees them).

Edge calls hold the GIL for their whole duration (measured: another Python thread did not run
during a 35 s `optimize`), so a worker thread would buy no concurrency; calls run inline,
a few milliseconds each. Edge never indexes on its own: new points are searched by brute
force until `optimize()` builds the HNSW graph, which the service runs after bulk writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from visionmesh.embedding.core.filters import EDGE_BOOL_FIELD, edge_bool_tokens, to_edge
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

__all__ = ["EdgeStore"]

_DISTANCES: dict[Distance, qe.Distance] = {
    "cosine": qe.Distance.Cosine,
    "dot": qe.Distance.Dot,
    "euclid": qe.Distance.Euclid,
}
_SCROLL_PAGE = 1000


def _index_schema(kind: FieldType) -> qe.PayloadSchemaType | qe.KeywordIndexParams:
    if kind == "keyword":
        return qe.KeywordIndexParams()
    return {
        "integer": qe.PayloadSchemaType.Integer,
        "float": qe.PayloadSchemaType.Float,
        "bool": qe.PayloadSchemaType.Bool,
    }[kind]


class EdgeStore(VectorStore):
    """Spaces as Qdrant Edge shards under one directory (the embedded default)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}

    def _space_dir(self, space: str) -> Path:
        return self._root / space

    def _shard(self, space: str) -> qe.EdgeShard:
        return self._shards[space]

    async def _load_space(self, space: str) -> SpaceInfo | None:
        meta_path = self._space_dir(space) / "space.json"
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        info = SpaceInfo(
            name=space,
            dim=int(meta["dim"]),
            distance=meta["distance"],
            index_fields=dict(meta.get("index_fields", {})),
        )
        if space not in self._shards:
            self._shards[space] = qe.EdgeShard.load(str(self._space_dir(space) / "shard"))
        return info

    async def _ensure_space(self, info: SpaceInfo) -> SpaceInfo:
        existing = await self._load_space(info.name)
        if existing is not None and (existing.dim, existing.distance) != (info.dim, info.distance):
            return existing
        if existing is None:
            config = qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=info.dim, distance=_DISTANCES[info.distance])
            )
            self._space_dir(info.name).mkdir(parents=True, exist_ok=True)
            self._shards[info.name] = qe.EdgeShard.create(
                str(self._space_dir(info.name) / "shard"), config
            )
            index_fields: dict[str, FieldType] = {}
        else:
            index_fields = dict(existing.index_fields)
        shard = self._shard(info.name)
        present = set(shard.info().payload_schema)
        scope_indexes: dict[str, qe.PayloadSchemaType | qe.KeywordIndexParams] = {
            # is_tenant: the engine keeps each tenant's points together on disk and plans
            # tenant-filtered searches around it (Qdrant's multitenancy guide).
            TENANT_FIELD: qe.KeywordIndexParams(is_tenant=True),
            COLLECTION_FIELD: qe.KeywordIndexParams(),
            POINT_ID_FIELD: qe.KeywordIndexParams(),
            EDGE_BOOL_FIELD: qe.KeywordIndexParams(),
        }
        wanted = scope_indexes | {k: _index_schema(v) for k, v in info.index_fields.items()}
        for key, schema in wanted.items():
            if key not in present:
                shard.update(qe.UpdateOperation.create_field_index(key, schema))
        # Indexes only ever get added: a field indexed for an older filter stays indexed.
        merged = SpaceInfo(
            name=info.name,
            dim=info.dim,
            distance=info.distance,
            index_fields={**index_fields, **info.index_fields},
        )
        self._write_meta(merged)
        return merged

    def _write_meta(self, info: SpaceInfo) -> None:
        meta = {"dim": info.dim, "distance": info.distance, "index_fields": info.index_fields}
        path = self._space_dir(info.name) / "space.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, path)

    @staticmethod
    def _filter(scope: Scope) -> qe.Filter:
        scoped = to_edge(scope.engine_filter())
        if scope.point_uuids is None:
            return scoped
        return qe.Filter(must=[scoped, qe.HasIdCondition(set(scope.point_uuids))])

    async def _upsert(self, space: str, points: list[StoredPoint]) -> None:
        self._shard(space).update(
            qe.UpdateOperation.upsert_points(
                [qe.Point(p.uuid, p.vector, _with_bool_tokens(p.payload)) for p in points]
            )
        )

    async def _search(
        self,
        space: str,
        scope: Scope,
        vector: list[float],
        limit: int,
        score_threshold: float | None,
    ) -> list[tuple[float, dict[str, Any]]]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(vector),
            filter=self._filter(scope),
            with_payload=True,
            score_threshold=score_threshold,
        )
        return [(p.score, dict(p.payload or {})) for p in self._shard(space).query(request)]

    async def _scroll(
        self, space: str, scope: Scope, with_vectors: bool
    ) -> list[tuple[dict[str, Any], list[float] | None]]:
        shard = self._shard(space)
        found: list[tuple[dict[str, Any], list[float] | None]] = []
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset,
                    limit=_SCROLL_PAGE,
                    filter=self._filter(scope),
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
            for record in records:
                vector = record.vector if with_vectors else None
                found.append((dict(record.payload or {}), _dense(vector)))
            if offset is None:
                return found

    async def _count(self, space: str, scope: Scope) -> int:
        return self._shard(space).count(qe.CountRequest(exact=True, filter=self._filter(scope)))

    async def _delete(self, space: str, scope: Scope) -> None:
        self._shard(space).update(qe.UpdateOperation.delete_points_by_filter(self._filter(scope)))

    async def _optimize(self, space: str) -> None:
        self._shard(space).optimize()

    async def _close(self) -> None:
        shards, self._shards = self._shards, {}
        self._spaces.clear()
        for shard in shards.values():
            shard.flush()
            shard.close()


def _with_bool_tokens(payload: dict[str, Any]) -> dict[str, Any]:
    tokens = edge_bool_tokens(payload)
    return {**payload, EDGE_BOOL_FIELD: tokens} if tokens else payload


def _dense(vector: Any) -> list[float] | None:
    """The default (unnamed) dense vector of a record, as Edge returns it."""
    if vector is None:
        return None
    if isinstance(vector, dict):
        vector = vector.get("")
    return [float(x) for x in vector] if vector is not None else None
