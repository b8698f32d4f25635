"""Embedding jobs on the shared job runtime: a source's images embedded into collections.

One attempt: select the images (`sources`), route each to its collection and check every
target (`routing`) before anything is written, then embed in batches of `spec.batch_size`,
each collection's points upserted in their own batches, and report an `EmbeddingJobResult`.

Point ids are derived from tenant, collection and the image's source id, so a redelivered
job replaces its points and never duplicates one. To skip work already done, the images are
cut into chunks of fixed size; once every point of a chunk is written, a small progress
marker (`<artifact prefix>progress/chunk-00000.json`) records what the chunk wrote. A later
attempt skips a chunk whose marker lists exactly its images and re-embeds any other, which
is safe: the same points are written again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import any_pb2
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.datasets import DatasetCache, DatasetManifest
from visionmesh.common.errors import InvalidArgument, NotFound
from visionmesh.common.jobs import JobContext, JobOutcome, PermanentJobError, is_out_of_memory
from visionmesh.common.logging import get_logger
from visionmesh.common.storage import ObjectStore
from visionmesh.common.vision.processing import decode_image
from visionmesh.embedding.core.embedders import Embedder
from visionmesh.embedding.core.proto_filters import filter_from_proto
from visionmesh.embedding.core.vector_store import RESERVED_FIELDS, PointIn, VectorStore
from visionmesh.embedding.worker.routing import Collections, Route, Target, resolve_targets, route
from visionmesh.embedding.worker.sources import (
    SourceItem,
    catalog_items,
    dataset_items,
    image_items,
)

__all__ = ["CHUNK", "MAX_SKIPPED_LISTED", "EmbeddingHandler", "OpenEmbedder", "progress_key"]

_log = get_logger(__name__)

CHUNK = 512
"""Images per progress marker. Fixed per job, so a redelivered attempt finds the same cuts."""
MAX_SKIPPED_LISTED = 1000
"""EmbeddingJobResult.skipped lists at most this many; images_skipped counts them all."""
DEFAULT_BATCH_SIZE = 32
_FETCH_CONCURRENCY = 8

OpenEmbedder = Callable[[str, str, str], Awaitable[Embedder]]
"""(tenant id, model name, device) -> the embedder; NotFound (or InvalidArgument naming
spec.model) when the tenant cannot use such a model here. The tenant matters: a backbone
belongs to the tenant that registered its model version."""

Image = npt.NDArray[np.uint8]


def progress_key(artifact_prefix: str, index: int) -> str:
    """The progress marker of chunk `index` under the job's artifact prefix."""
    return f"{artifact_prefix}progress/chunk-{index:05d}.json"


@dataclass(slots=True)
class _Totals:
    embedded: int = 0
    skipped: int = 0
    points: dict[str, int] = field(default_factory=dict)
    skipped_listed: list[embedding_pb2.SkippedImage] = field(default_factory=list)

    def skip(self, item: SourceItem, reason: str, message: str) -> None:
        self.skipped += 1
        if len(self.skipped_listed) < MAX_SKIPPED_LISTED:
            self.skipped_listed.append(
                embedding_pb2.SkippedImage(key=item.key, reason=reason, message=message[:500])
            )

    def add(self, other: _Totals) -> None:
        self.embedded += other.embedded
        self.skipped += other.skipped
        for name, count in other.points.items():
            self.points[name] = self.points.get(name, 0) + count
        room = MAX_SKIPPED_LISTED - len(self.skipped_listed)
        self.skipped_listed += other.skipped_listed[: max(room, 0)]

    def to_json(self, ids: list[list[str]]) -> bytes:
        return json.dumps(
            {
                "ids": ids,
                "embedded": self.embedded,
                "skipped": self.skipped,
                "points": self.points,
                "skipped_listed": [
                    {"key": s.key, "reason": s.reason, "message": s.message}
                    for s in self.skipped_listed
                ],
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, ids: list[list[str]]) -> _Totals | None:
        """The totals a marker records, or None unless it is a marker of exactly `ids`."""
        try:
            document = json.loads(data)
            if document["ids"] != ids:
                return None
            return cls(
                embedded=int(document["embedded"]),
                skipped=int(document["skipped"]),
                points={str(k): int(v) for k, v in document["points"].items()},
                skipped_listed=[
                    embedding_pb2.SkippedImage(
                        key=s["key"], reason=s["reason"], message=s["message"]
                    )
                    for s in document["skipped_listed"]
                ],
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class _Work:
    """One image with its collection."""

    item: SourceItem
    collection: str


class EmbeddingHandler:
    """Runs one attempt of an embedding job; the shared job runtime does the rest.

    `collections` resolves (and with create_missing creates) the tenant's collections;
    `open_embedder` gives the model's embedder. `chunk_size` must stay the same across the
    attempts of a job (a chunk cut otherwise is embedded again, which is merely slower).
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        cache: DatasetCache,
        vectors: VectorStore,
        collections: Collections,
        open_embedder: OpenEmbedder,
        max_image_bytes: int = 32 << 20,
        chunk_size: int = CHUNK,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._store = store
        self._cache = cache
        self._vectors = vectors
        self._collections = collections
        self._open_embedder = open_embedder
        self._max_image_bytes = max_image_bytes
        self._chunk_size = chunk_size

    async def run(self, job: JobContext) -> JobOutcome:
        started = time.monotonic()
        work = job.request.embedding
        spec = work.spec
        tenant_id = job.request.tenant_id
        await job.reporter.progress(job_pb2.JobProgress(phase="select", fraction=0.0))
        items, dataset_root = await self._select(tenant_id, work)
        routes = self._routes(spec, items)
        routed = [_Work(item, r.collection) for item, r in zip(items, routes, strict=True)]
        _check_unique(routed)
        model = spec.model or await self._default_model(tenant_id, spec.routing)
        embedder = await self._embedder(tenant_id, model, spec.device or "auto")
        targets = await resolve_targets(
            self._collections,
            tenant_id,
            routes,
            model=model,
            dim=embedder.dim,
            routing=spec.routing,
        )
        run = _Run(
            handler=self,
            job=job,
            embedder=embedder,
            targets=targets,
            dataset_root=dataset_root,
            batch_size=spec.batch_size if spec.HasField("batch_size") else DEFAULT_BATCH_SIZE,
            normalize=spec.normalize if spec.HasField("normalize") else True,
            artifact_prefix=work.artifact_prefix,
        )
        outcome, totals = await run.all(routed)
        if outcome == "stopped":
            return JobOutcome("stopped")
        result = embedding_pb2.EmbeddingJobResult(
            images_selected=len(items),
            images_embedded=totals.embedded,
            collections=[
                embedding_pb2.CollectionPoints(collection=name, points=totals.points.get(name, 0))
                for name in sorted(targets)
            ],
            skipped=totals.skipped_listed,
            images_skipped=totals.skipped,
        )
        packed = any_pb2.Any()
        packed.Pack(result)
        await job.reporter.emit(result=events_pb2.JobResultReported(result=packed))
        if outcome == "cancelled":
            return JobOutcome("cancelled")
        metrics: dict[str, float] = {
            "images_selected": float(len(items)),
            "images_embedded": float(totals.embedded),
            "images_skipped": float(totals.skipped),
            "seconds": time.monotonic() - started,
        }
        for name in sorted(targets):
            metrics[f"points_{name}"] = float(totals.points.get(name, 0))
        return JobOutcome("succeeded", metrics)

    # --- selection ------------------------------------------------------------------------

    async def _select(
        self, tenant_id: str, work: events_pb2.EmbeddingJobRequest
    ) -> tuple[list[SourceItem], Path | None]:
        spec = work.spec
        source = spec.WhichOneof("source")
        if source == "images":
            return image_items(tenant_id, spec.images), None
        if source is None:
            raise InvalidArgument.for_field(
                "spec.source", "set products, dataset, metadata_filter or images"
            )
        message = getattr(spec, source)
        field = f"spec.{source}"
        ref_field = f"{field}.{message.WhichOneof('catalog' if source != 'dataset' else 'ref')}"
        manifest, root = await self._materialise(work, ref_field)
        base: dict[str, Any] = {"snapshot_id": work.snapshot.snapshot_id}
        if getattr(message, "dataset_id", ""):
            base["dataset_id"] = message.dataset_id
        if source == "products":
            items = catalog_items(
                manifest, field=field, product_ids=list(message.product_ids), base_payload=base
            )
        elif source == "metadata_filter":
            selector = (
                filter_from_proto(message.filter, field=f"{field}.filter")
                if message.HasField("filter")
                else None
            )
            items = catalog_items(manifest, field=ref_field, filter=selector, base_payload=base)
        else:
            items = dataset_items(
                manifest,
                field=field,
                splits=list(message.splits),
                class_as_product_id=message.class_as_product_id,
                base_payload=base,
            )
        return items, root

    async def _materialise(
        self, work: events_pb2.EmbeddingJobRequest, field: str
    ) -> tuple[DatasetManifest, Path]:
        if not work.HasField("snapshot") or not work.snapshot.manifest_key:
            raise PermanentJobError(
                "NO_SNAPSHOT", f"{field}: the job request carries no pinned snapshot"
            )
        try:
            dataset = await self._cache.materialise(work.snapshot)
        except NotFound as exc:
            raise PermanentJobError(
                "NOT_FOUND", f"{field}: snapshot {work.snapshot.snapshot_id!r}: {exc.message}"
            ) from exc
        return dataset.manifest, dataset.root

    # --- routing and the model -------------------------------------------------------------

    @staticmethod
    def _routes(spec: embedding_pb2.EmbeddingJobSpec, items: Sequence[SourceItem]) -> list[Route]:
        return [
            route(
                spec.routing,
                item.payload,
                collection=item.collection,
                collection_field=f"{item.field}.collection",
            )
            for item in items
        ]

    async def _default_model(self, tenant_id: str, routing: embedding_pb2.CollectionRouting) -> str:
        # ValidateEmbeddingSpec fills spec.model in; an older spec takes the default's model.
        try:
            _, model, _, _ = await self._collections.resolve(
                tenant_id, routing.default_collection, create_with=None
            )
        except NotFound as exc:
            raise InvalidArgument.for_field(
                "spec.model",
                f"not set, and the default collection {routing.default_collection!r} "
                "does not exist to take its model from",
            ) from exc
        if not model:
            raise InvalidArgument.for_field(
                "spec.model",
                f"not set, and the default collection {routing.default_collection!r} has no "
                "model (vectors only)",
            )
        return model

    async def _embedder(self, tenant_id: str, model: str, device: str) -> Embedder:
        try:
            return await self._open_embedder(tenant_id, model, device)
        except NotFound as exc:
            raise InvalidArgument.for_field("spec.model", exc.message) from exc

    # --- reading --------------------------------------------------------------------------

    async def read(
        self, items: Sequence[SourceItem], root: Path | None
    ) -> list[bytes | tuple[str, str]]:
        """Each image's bytes, or (reason, message) when it cannot be read."""
        limit = asyncio.Semaphore(_FETCH_CONCURRENCY)

        async def one(item: SourceItem) -> bytes | tuple[str, str]:
            async with limit:
                if item.in_dataset:
                    if root is None:
                        raise RuntimeError("a dataset image without a materialised dataset")
                    try:
                        data = await asyncio.to_thread((root / item.location).read_bytes)
                    except FileNotFoundError:
                        return "NOT_FOUND", f"{item.key} is not in the snapshot"
                else:
                    try:
                        data = await self._store.get_bytes(item.location)
                    except NotFound:
                        return "NOT_FOUND", f"{item.key} not found"
            if len(data) > self._max_image_bytes:
                return "TOO_LARGE", f"{len(data)} bytes; at most {self._max_image_bytes}"
            return data

        return list(await asyncio.gather(*(one(item) for item in items)))


def _check_unique(routed: Sequence[_Work]) -> None:
    """Two listed images with one id in one collection would be one point: refused."""
    seen: dict[tuple[str, str], SourceItem] = {}
    for work in routed:
        key = (work.collection, work.item.source_id)
        earlier = seen.get(key)
        if earlier is not None:
            raise InvalidArgument.for_field(
                f"{work.item.field}.id" if work.item.field else "spec",
                f"point id {work.item.source_id!r} is also the id of "
                f"{earlier.field or earlier.key} in collection {work.collection!r}",
            )
        seen[key] = work.item


def _decode_all(payloads: Sequence[bytes | tuple[str, str]]) -> list[Image | tuple[str, str]]:
    decoded: list[Image | tuple[str, str]] = []
    for payload in payloads:
        if isinstance(payload, tuple):
            decoded.append(payload)
            continue
        try:
            decoded.append(decode_image(payload))
        except ValueError as exc:
            decoded.append(("UNDECODABLE", str(exc)))
    return decoded


def _stored_payload(item: SourceItem) -> dict[str, Any]:
    # The store sets tenant_id, collection and point_id itself; a catalogue whose metadata
    # uses one of those keys (a "collection" attribute) keeps it for routing only.
    return {k: v for k, v in item.payload.items() if k not in RESERVED_FIELDS}


class _Run:
    """The embedding loop of one attempt, chunk by chunk and batch by batch."""

    def __init__(
        self,
        *,
        handler: EmbeddingHandler,
        job: JobContext,
        embedder: Embedder,
        targets: dict[str, Target],
        dataset_root: Path | None,
        batch_size: int,
        normalize: bool,
        artifact_prefix: str,
    ) -> None:
        self._handler = handler
        self._job = job
        self._embedder = embedder
        self._targets = targets
        self._root = dataset_root
        self._batch_size = batch_size
        self._normalize = normalize
        self._prefix = artifact_prefix
        self._tenant = job.request.tenant_id
        self._store = handler._store

    async def all(self, routed: list[_Work]) -> tuple[str, _Totals]:
        """("succeeded" | "cancelled" | "stopped", what was written)."""
        size = self._handler._chunk_size
        total = len(routed)
        totals = _Totals()
        done = 0
        await self._progress(done, total)
        for index in range(0, total, size):
            chunk = routed[index : index + size]
            ids = [[w.collection, w.item.source_id] for w in chunk]
            resumed = await self._resumed(index // size, ids)
            if resumed is not None:
                totals.add(resumed)
                done += len(chunk)
                await self._progress(done, total)
                continue
            chunk_totals = _Totals()
            for start in range(0, len(chunk), self._batch_size):
                if self._job.should_stop():
                    totals.add(chunk_totals)
                    return self._interrupted(), totals
                batch = chunk[start : start + self._batch_size]
                await self._batch(batch, chunk_totals)
                done += len(batch)
                await self._progress(done, total)
            totals.add(chunk_totals)
            if self._prefix:
                await self._store.put_bytes(
                    progress_key(self._prefix, index // size),
                    chunk_totals.to_json(ids),
                    content_type="application/json",
                )
        return "succeeded", totals

    def _interrupted(self) -> str:
        return "cancelled" if self._job.cancel.is_set() else "stopped"

    async def _resumed(self, index: int, ids: list[list[str]]) -> _Totals | None:
        if not self._prefix:
            return None
        try:
            data = await self._store.get_bytes(progress_key(self._prefix, index))
        except NotFound:
            return None
        found = _Totals.from_json(data, ids)
        if found is None:
            _log.warning("progress marker of other images; embedding the chunk again", chunk=index)
        return found

    async def _batch(self, batch: Sequence[_Work], totals: _Totals) -> None:
        payloads = await self._handler.read([w.item for w in batch], self._root)
        decoded = await asyncio.to_thread(_decode_all, payloads)
        good: list[tuple[_Work, Image]] = []
        for work, image in zip(batch, decoded, strict=True):
            if isinstance(image, tuple):
                totals.skip(work.item, *image)
            else:
                good.append((work, image))
        if not good:
            return
        vectors = await self._embed([image for _, image in good])
        by_collection: dict[str, list[PointIn]] = {}
        for (work, _), vector in zip(good, vectors, strict=True):
            by_collection.setdefault(work.collection, []).append(
                PointIn(id=work.item.source_id, vector=vector, payload=_stored_payload(work.item))
            )
        for name, points in by_collection.items():
            target = self._targets[name]
            written = await self._handler._vectors.upsert(
                target.space, self._tenant, target.key, points
            )
            totals.points[name] = totals.points.get(name, 0) + written
        totals.embedded += len(good)

    async def _embed(self, images: list[Image]) -> npt.NDArray[np.float32]:
        try:
            return await asyncio.to_thread(self._embedder.embed, images, normalize=self._normalize)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise PermanentJobError(
                    "OUT_OF_MEMORY",
                    f"out of memory embedding a batch of {len(images)} with "
                    f"{self._embedder.name!r}: lower spec.batch_size ({exc})"[:2000],
                ) from exc
            raise

    async def _progress(self, done: int, total: int) -> None:
        await self._job.reporter.progress(
            job_pb2.JobProgress(
                phase="embed",
                step=done,
                total_steps=total,
                fraction=done / total if total else 1.0,
            )
        )
