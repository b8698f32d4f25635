"""The embedded vector store: Qdrant Edge (the Qdrant engine in-process), one shard per space.

Layout under `root`: `<space>/shard/` (the Edge shard: segments, WAL, edge_config.json) and
`<space>/space.json` (dimension, distance and payload indexes, so a reopened store validates
vectors before the engine sees them).

Edge calls hold the GIL for their whole duration (measured: another Python thread did not run
during a 35 s `optimize`), so a worker thread would buy no concurrency; queries and writes run
inline, a few milliseconds each. Edge never indexes on its own: new points are searched by
exact scan until its optimizer builds the HNSW graph, which takes minutes at 100k points. So
the graph is built in a child process, on a copy of the shard (`edge_indexer`), while this
process goes on serving: writes made meanwhile are kept in a journal, replayed onto the
indexed copy, which then replaces the shard (so a build needs the shard's size again in free
disk). `maintain` starts that for every space with at least `index_threshold` unindexed
points that changed since its last build.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from visionmesh.common.errors import Unavailable
from visionmesh.common.logging import get_logger
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

__all__ = ["DEFAULT_INDEX_THRESHOLD", "EdgeStore", "IndexStatus"]

_log = get_logger(__name__)
# Unindexed points that make `maintain` build the graph: exact scan over 10k 384-d vectors
# costs about a millisecond, so fewer are not worth a child process.
DEFAULT_INDEX_THRESHOLD = 10_000
_SHARD = "shard"
_BUILDING = "shard.building"
_RETIRED = "shard.old"

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


@dataclass(frozen=True)
class IndexStatus:
    points: int
    indexed: int  # points in HNSW-indexed segments; the rest are searched by exact scan


class EdgeStore(VectorStore):
    """Spaces as Qdrant Edge shards under one directory (the embedded default)."""

    def __init__(
        self, root: str | os.PathLike[str], *, index_threshold: int = DEFAULT_INDEX_THRESHOLD
    ) -> None:
        super().__init__()
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._index_threshold = index_threshold
        self._shards: dict[str, qe.EdgeShard] = {}
        # Writes per space since its last index build, and, while one runs, their operations.
        self._writes: dict[str, int] = {}
        self._journals: dict[str, list[qe.UpdateOperation]] = {}

    def _space_dir(self, space: str) -> Path:
        return self._root / space

    def _shard(self, space: str) -> qe.EdgeShard:
        return self._shards[space]

    def _apply(self, space: str, operation: qe.UpdateOperation) -> None:
        """Every write goes through here, so that a build in progress misses none."""
        self._shard(space).update(operation)
        self._writes[space] = self._writes.get(space, 0) + 1
        journal = self._journals.get(space)
        if journal is not None:
            journal.append(operation)

    def index_status(self, space: str) -> IndexStatus:
        info = self._shard(space).info()
        return IndexStatus(points=info.points_count, indexed=info.indexed_vectors_count)

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
            self._shards[space] = qe.EdgeShard.load(str(_recovered_shard(self._space_dir(space))))
            # Points written before this process started count as changed: a build may be due.
            self._writes[space] = 1
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
                str(self._space_dir(info.name) / _SHARD), config
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
                self._apply(info.name, qe.UpdateOperation.create_field_index(key, schema))
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
        self._apply(
            space,
            qe.UpdateOperation.upsert_points(
                [qe.Point(p.uuid, p.vector, _with_bool_tokens(p.payload)) for p in points]
            ),
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
        self._apply(space, qe.UpdateOperation.delete_points_by_filter(self._filter(scope)))

    async def maintain(self) -> None:
        for space in list(self._shards):
            if space in self._shards and self._index_due(space):
                await self.optimize(space)

    def _index_due(self, space: str) -> bool:
        status = self.index_status(space)
        return self._writes.get(space, 0) > 0 and (
            status.points - status.indexed >= self._index_threshold
        )

    async def _optimize(self, space: str) -> None:
        """Builds the HNSW graph in a child process on a copy, then swaps the copy in."""
        space_dir = self._space_dir(space)
        building = space_dir / _BUILDING
        async with self._write_lock:
            if space in self._journals:
                return  # a build of this space is running already
            shutil.rmtree(building, ignore_errors=True)
            shard = self._shard(space)
            shard.flush()
            # No await from here to the journal's start: no write can fall in between.
            shutil.copytree(space_dir / _SHARD, building)
            self._journals[space] = []
            self._writes[space] = 0
        swapped = False
        try:
            await _build_index(building)
            async with self._write_lock:
                if space in self._shards:  # else the store was closed meanwhile
                    self._swap_in(space, building, self._journals[space])
                    swapped = True
        finally:
            del self._journals[space]
            if not swapped:
                # Failed or cancelled: the live shard holds every write; the copy goes.
                self._writes[space] = self._writes.get(space, 0) + 1
                shutil.rmtree(building, ignore_errors=True)

    def _swap_in(self, space: str, building: Path, journal: list[qe.UpdateOperation]) -> None:
        """Replays the writes made during the build onto the indexed copy, which replaces the
        live shard. Synchronous throughout, so no query or write sees a half-swapped space;
        each step leaves a directory `_recovered_shard` can open after a crash."""
        indexed = qe.EdgeShard.load(str(building))
        for operation in journal:
            indexed.update(operation)
        indexed.flush()
        indexed.close()
        self._shards.pop(space).close()
        space_dir = self._space_dir(space)
        try:
            os.replace(space_dir / _SHARD, space_dir / _RETIRED)
            os.replace(building, space_dir / _SHARD)
        finally:
            # Whatever happened, the space is served again from a complete shard.
            self._shards[space] = qe.EdgeShard.load(str(_recovered_shard(space_dir)))
        status = self.index_status(space)
        _log.info(
            "vector index built",
            space=space,
            points=status.points,
            indexed=status.indexed,
            replayed_writes=len(journal),
        )

    async def _close(self) -> None:
        shards, self._shards = self._shards, {}
        self._spaces.clear()
        for shard in shards.values():
            shard.flush()
            shard.close()


def _recovered_shard(space_dir: Path) -> Path:
    """The shard to open, after tidying what a crash during an index build left behind.

    A build copy is complete only once the swap has begun (it renames the live shard away
    first); before that the live shard plus its WAL hold everything, and the copy goes.
    """
    shard, building, retired = space_dir / _SHARD, space_dir / _BUILDING, space_dir / _RETIRED
    if not shard.exists():
        os.replace(building if building.exists() else retired, shard)
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)
    return shard


async def _build_index(path: Path) -> None:
    """Runs Edge's optimizer on the shard at `path` in a child process (its own GIL)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "visionmesh.embedding.core.edge_indexer",
        str(path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await process.communicate()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise Unavailable(f"building the vector index failed: {' | '.join(tail)}")


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
