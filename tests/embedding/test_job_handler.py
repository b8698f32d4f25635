"""Embedding jobs on the real job runtime: NATS, S3, the dataset cache, Qdrant Edge and a
small random-init DINOv2 loaded through the real code path.

Only the collection registry is a dict here (the service's collections table implements the
same protocol); every count is checked against a synthetic catalogue's answer key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from google.protobuf import struct_pb2
from PIL import Image
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.cli.synth import SynthCatalog, make_catalog_dataset, zip_dataset
from visionmesh.common.datasets import DatasetCache
from visionmesh.common.errors import NotFound
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import JobContext, JobOutcome, JobWorker
from visionmesh.common.storage import ObjectStore
from visionmesh.common.subjects import (
    job_control_subject,
    job_request_subject,
)
from visionmesh.common.vision.processing import decode_image
from visionmesh.embedding.core.dinov2 import Dinov2Embedder, load_dinov2
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.embedders import EmbedderInfo, Family
from visionmesh.embedding.core.vector_store import VectorStore, space_name
from visionmesh.embedding.worker import EmbeddingHandler, NewCollection, progress_key
from visionmesh.gateway.core.archive import inspect_archive, manifest_json

from tests.job_runtime import Events, job_bus, job_worker
from tests.job_runtime import running as _running

TENANT = "t"
KIND = job_pb2.JOB_KIND_EMBEDDING
MODEL = "dinov2_tiny"
N_PRODUCTS = 8
RENDERS = 2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedding-jobs")


@pytest.fixture(scope="module")
def dinov2(workdir: Path) -> Dinov2Embedder:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14
    )
    Dinov2Model(config).save_pretrained(workdir / MODEL)
    return load_dinov2(workdir / MODEL, name=MODEL, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def catalog(workdir: Path) -> SynthCatalog:
    return make_catalog_dataset(
        workdir / "shop", n_products=N_PRODUCTS, renders=RENDERS, imgsz=32, seed=5
    )


class Gate:
    """The real embedder, counting images; with `block_at`, the first call once that many
    images were embedded waits until `release` (a worker stuck mid-job); with `die`, it then
    raises instead of embedding, so the attempt writes nothing more (a worker killed)."""

    def __init__(
        self, inner: Dinov2Embedder, *, block_at: int | None = None, die: bool = False
    ) -> None:
        self._inner = inner
        self.images = 0
        self._block_at = block_at
        self._die = die
        self.blocked = threading.Event()
        self.release = threading.Event()

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def dim(self) -> int:
        return self._inner.dim

    @property
    def family(self) -> Family:
        return self._inner.family

    @property
    def imgsz(self) -> int:
        return self._inner.imgsz

    @property
    def model_version_id(self) -> str:
        return self._inner.model_version_id

    @property
    def device(self) -> str:
        return self._inner.device

    @property
    def info(self) -> EmbedderInfo:
        return self._inner.info

    def embed(
        self, images: Sequence[npt.NDArray[np.uint8]], *, normalize: bool = True
    ) -> npt.NDArray[np.float32]:
        if self._block_at is not None and self.images >= self._block_at:
            self.blocked.set()
            self.release.wait(60)
            if self._die:
                raise RuntimeError("the worker was killed")
        self.images += len(images)
        return self._inner.embed(images, normalize=normalize)


class Registry:
    """The collections table as a dict; creating a collection ensures its space."""

    def __init__(self, vectors: VectorStore) -> None:
        self._vectors = vectors
        self.rows: dict[tuple[str, str], tuple[str, str, int, str]] = {}

    async def add(self, name: str, model: str, dim: int, tenant: str = TENANT) -> None:
        space = space_name(model, dim)
        await self._vectors.ensure_space(space, dim=dim)
        self.rows[(tenant, name)] = (space, model, dim, name)

    async def resolve(
        self, tenant_id: str, name: str, *, create_with: NewCollection | None
    ) -> tuple[str, str, int, str]:
        row = self.rows.get((tenant_id, name))
        if row is None:
            if create_with is None:
                raise NotFound(resource_type="collection", resource_id=name)
            space = space_name(create_with.model, create_with.dim, create_with.distance)
            await self._vectors.ensure_space(
                space, dim=create_with.dim, distance=create_with.distance
            )
            row = self.rows[(tenant_id, name)] = (space, create_with.model, create_with.dim, name)
        return row

    async def count(self, name: str) -> int:
        space = self.rows[(TENANT, name)][0]
        return await self._vectors.count(space, TENANT, name)


class Recording:
    """The handler, keeping each attempt's context so a test can see its cancel flag."""

    def __init__(self, inner: EmbeddingHandler) -> None:
        self._inner = inner
        self.jobs: list[JobContext] = []

    async def run(self, job: JobContext) -> JobOutcome:
        self.jobs.append(job)
        return await self._inner.run(job)


class Env:
    def __init__(self, store: ObjectStore, tmp: Path, embedder: Gate | Dinov2Embedder) -> None:
        self.store = store
        self.tmp = tmp
        self.vectors = EdgeStore(tmp / "edge")
        self.registry = Registry(self.vectors)
        self.embedder = embedder

    def handler(self, embedder: Gate | Dinov2Embedder | None = None, **kwargs: Any) -> Recording:
        chosen = embedder or self.embedder

        async def open_embedder(tenant_id: str, model: str, device: str) -> Gate | Dinov2Embedder:
            assert tenant_id == TENANT
            if model != MODEL:
                raise NotFound(f"embedding model {model!r} not found")
            assert device == "cpu"
            return chosen

        return Recording(
            EmbeddingHandler(
                store=self.store,
                cache=DatasetCache(root=self.tmp / "cache", store=self.store),
                vectors=self.vectors,
                collections=self.registry,
                open_embedder=open_embedder,
                **kwargs,
            )
        )


async def _snapshot(store: ObjectStore, catalog: SynthCatalog, tmp: Path) -> events_pb2.SnapshotRef:
    """The catalogue as the gateway stores it: archive plus manifest."""
    archive = zip_dataset(catalog.root, tmp / "shop.zip")
    manifest = manifest_json(inspect_archive(archive, max_bytes=1 << 30))
    await store.put_file("datasets/d/archive.zip", archive)
    await store.put_bytes("datasets/d/manifest.json", manifest)
    return events_pb2.SnapshotRef(
        snapshot_id="s1",
        manifest_key="datasets/d/manifest.json",
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        archive_key="datasets/d/archive.zip",
        task="catalog",
    )


def _request(
    job_id: str,
    snapshot: events_pb2.SnapshotRef | None = None,
    *,
    routing: embedding_pb2.CollectionRouting | None = None,
    **source: Any,
) -> events_pb2.JobRequest:
    spec = embedding_pb2.EmbeddingJobSpec(
        model=MODEL,
        batch_size=3,
        device="cpu",
        routing=routing
        or embedding_pb2.CollectionRouting(default_collection="products", create_missing=True),
        **source,
    )
    return events_pb2.JobRequest(
        job_id=job_id,
        tenant_id=TENANT,
        kind=KIND,
        embedding=events_pb2.EmbeddingJobRequest(
            spec=spec, snapshot=snapshot, artifact_prefix=f"jobs/{job_id}/"
        ),
    )


def _mesh(tmp: Path) -> contextlib.AbstractAsyncContextManager[tuple[EventBus, Events]]:
    return job_bus(tmp, name="embedding-handler-test")


def _worker(bus: EventBus, handler: Any) -> JobWorker:
    return job_worker(bus, handler, kind=KIND)


async def _publish(bus: EventBus, *requests: events_pb2.JobRequest) -> None:
    for request in requests:
        await bus.publish(job_request_subject(KIND), request, msg_id=request.job_id)


def _points(result: embedding_pb2.EmbeddingJobResult) -> dict[str, int]:
    return {c.collection: c.points for c in result.collections}


def _progress(events: Sequence[events_pb2.JobEvent]) -> list[tuple[int, int]]:
    return [
        (e.progress.step, e.progress.total_steps)
        for e in events
        if e.HasField("progress") and e.progress.phase == "embed"
    ]


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _struct(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
async def test_each_catalogue_mode_embeds_exactly_what_its_selection_implies(
    object_store: ObjectStore, tmp_path: Path, dinov2: Dinov2Embedder, catalog: SynthCatalog
) -> None:
    env = Env(object_store, tmp_path, dinov2)
    snapshot = await _snapshot(object_store, catalog, tmp_path)
    issue_filter = embedding_pb2.MetadataFilter(
        conditions=[
            embedding_pb2.FilterCondition(key="brand", string_value="acme"),
            embedding_pb2.FilterCondition(
                key="category", in_strings=embedding_pb2.StringValues(values=["shoes", "boots"])
            ),
        ]
    )
    # Shoes and boots go to "footwear" through the map; other categories name themselves.
    by_category = embedding_pb2.CollectionRouting(
        default_collection="products",
        field="category",
        routes={"shoes": "footwear", "boots": "footwear"},
        create_missing=True,
    )
    requests = [
        _request(
            "products",
            snapshot,
            routing=embedding_pb2.CollectionRouting(
                default_collection="chosen", create_missing=True
            ),
            products=embedding_pb2.ProductSource(
                dataset_id="d", product_ids=["p0006", "p0001", "p0003"]
            ),
        ),
        _request(
            "filtered",
            snapshot,
            routing=embedding_pb2.CollectionRouting(
                default_collection="filtered", create_missing=True
            ),
            metadata_filter=embedding_pb2.CatalogFilterSource(
                snapshot_id="s1", filter=issue_filter
            ),
        ),
        _request(
            "everything",
            snapshot,
            routing=by_category,
            dataset=embedding_pb2.DatasetSource(dataset_id="d"),
        ),
        _request(
            "unknown",
            snapshot,
            products=embedding_pb2.ProductSource(dataset_id="d", product_ids=["p0001", "p9999"]),
        ),
    ]
    handler = env.handler()
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, handler)):
        await _publish(bus, *requests)
        await events.ended("products", "filtered", "everything", "unknown")

    chosen = events.result("products", embedding_pb2.EmbeddingJobResult())
    assert (chosen.images_selected, chosen.images_embedded, chosen.images_skipped) == (6, 6, 0)
    assert _points(chosen) == {"chosen": 6} and await env.registry.count("chosen") == 6

    # Product i: brand acme when i % 4 == 0, category shoes/boots when (i // 4) % 5 < 2.
    expected = [p for p in catalog.products if p.id in ("p0000", "p0004")]
    assert all(
        p.metadata["brand"] == "acme" and p.metadata["category"] in ("shoes", "boots")
        for p in expected
    )
    filtered = events.result("filtered", embedding_pb2.EmbeddingJobResult())
    assert filtered.images_embedded == len(expected) * RENDERS == 4
    assert await env.registry.count("filtered") == 4

    everything = events.result("everything", embedding_pb2.EmbeddingJobResult())
    per_category: dict[str, int] = {}
    for product in catalog.products:
        category = str(product.metadata["category"])
        name = "footwear" if category in ("shoes", "boots") else category
        per_category[name] = per_category.get(name, 0) + len(product.images)
    assert everything.images_embedded == N_PRODUCTS * RENDERS == sum(per_category.values())
    assert _points(everything) == per_category
    for name, count in per_category.items():
        assert await env.registry.count(name) == count
    end = events.end("everything")
    assert end is not None and end.state == job_pb2.JOB_STATE_SUCCEEDED
    assert end.metrics["images_embedded"] == N_PRODUCTS * RENDERS
    assert end.metrics["points_footwear"] == per_category["footwear"]
    assert _progress(events.by_job["everything"])[-1] == (16, 16)

    unknown = events.end("unknown")
    assert unknown is not None and unknown.state == job_pb2.JOB_STATE_FAILED
    assert unknown.error.reason == "INVALID_SPEC"
    assert "spec.products.product_ids[1]" in unknown.error.message

    # A stored point: the product's metadata, and the vector of a direct forward on its file.
    product = catalog.products[3]
    path = product.images[1]
    data = (catalog.root / path).read_bytes()
    source_id = f"{product.id}/{hashlib.sha256(data).hexdigest()}"
    space = env.registry.rows[(TENANT, "chosen")][0]
    (record,) = await env.vectors.retrieve(space, TENANT, "chosen", [source_id], with_vectors=True)
    assert record.payload == {
        **product.metadata,
        "product_id": product.id,
        "path": path,
        "snapshot_id": "s1",
        "dataset_id": "d",
    }
    direct = dinov2.embed([decode_image(data)])[0]
    assert record.vector is not None
    np.testing.assert_allclose(record.vector, direct, rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(300)
async def test_listed_images_are_routed_each_and_bad_images_are_skipped_with_the_reason(
    object_store: ObjectStore, tmp_path: Path, dinov2: Dinov2Embedder
) -> None:
    env = Env(object_store, tmp_path, dinov2)
    for i in range(5):
        await object_store.put_bytes(f"tenants/{TENANT}/in/{i}.png", _png(i))
    await object_store.put_bytes(f"tenants/{TENANT}/in/broken.jpg", _png(9)[:100])
    # Another tenant's object under the same key is not this tenant's image.
    await object_store.put_bytes("tenants/u/in/gone.png", _png(7))
    images = embedding_pb2.ImageListSource(
        images=[
            embedding_pb2.SourceImage(key="in/0.png", payload=_struct(kind="cutout")),
            embedding_pb2.SourceImage(key="in/1.png", id="one", payload=_struct(kind="ref")),
            embedding_pb2.SourceImage(key="in/2.png", product_id="p2", payload=_struct(n=2)),
            embedding_pb2.SourceImage(key="in/broken.jpg", payload=_struct(kind="cutout")),
            embedding_pb2.SourceImage(key="in/gone.png"),
            embedding_pb2.SourceImage(key="in/3.png", collection="shelves"),
            embedding_pb2.SourceImage(key="in/4.png", payload=_struct(kind="shelves")),
        ]
    )
    routing = embedding_pb2.CollectionRouting(
        default_collection="products",
        field="kind",
        routes={"cutout": "cutouts", "ref": "products"},
        create_missing=True,
    )
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, env.handler())):
        await _publish(bus, _request("listed", routing=routing, images=images))
        await events.ended("listed")

    end = events.end("listed")
    assert end is not None and end.state == job_pb2.JOB_STATE_SUCCEEDED, end
    result = events.result("listed", embedding_pb2.EmbeddingJobResult())
    assert (result.images_selected, result.images_embedded, result.images_skipped) == (7, 5, 2)
    assert [(s.key, s.reason) for s in result.skipped] == [
        ("in/broken.jpg", "UNDECODABLE"),
        ("in/gone.png", "NOT_FOUND"),
    ]
    assert _points(result) == {"cutouts": 1, "products": 2, "shelves": 2}
    assert end.metrics["images_skipped"] == 2 and end.metrics["points_shelves"] == 2
    assert {n: await env.registry.count(n) for n in ("cutouts", "products", "shelves")} == {
        "cutouts": 1,
        "products": 2,
        "shelves": 2,
    }
    space = env.registry.rows[(TENANT, "products")][0]
    records = await env.vectors.retrieve(space, TENANT, "products", ["one", "in/2.png"])
    assert [r.payload for r in records] == [
        {"kind": "ref", "image_key": "in/1.png"},
        {"n": 2, "image_key": "in/2.png", "product_id": "p2"},
    ]


@pytest.mark.timeout(300)
async def test_a_routed_collection_of_another_model_fails_the_job_before_any_write(
    object_store: ObjectStore, tmp_path: Path, dinov2: Dinov2Embedder
) -> None:
    env = Env(object_store, tmp_path, dinov2)
    await env.registry.add("products", MODEL, dinov2.dim)
    await env.registry.add("cutouts", "resnet18", 512)
    for i in range(2):
        await object_store.put_bytes(f"tenants/{TENANT}/in/{i}.png", _png(i))
    images = embedding_pb2.ImageListSource(
        images=[
            embedding_pb2.SourceImage(key="in/0.png"),
            embedding_pb2.SourceImage(key="in/1.png", payload=_struct(kind="cutout")),
        ]
    )
    routing = embedding_pb2.CollectionRouting(
        default_collection="products", field="kind", routes={"cutout": "cutouts"}
    )
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, env.handler())):
        await _publish(bus, _request("mismatch", routing=routing, images=images))
        await events.ended("mismatch")

    end = events.end("mismatch")
    assert end is not None and end.state == job_pb2.JOB_STATE_FAILED
    assert end.error.reason == "INVALID_SPEC"
    assert end.error.message.startswith("spec.routing.routes[\"cutout\"]: collection 'cutouts'")
    assert "'resnet18'" in end.error.message
    assert await env.registry.count("products") == 0
    assert not any(e.HasField("result") for e in events.by_job["mismatch"])


@pytest.mark.timeout(300)
async def test_a_job_killed_midway_resumes_without_duplicates_or_repeated_chunks(
    object_store: ObjectStore, tmp_path: Path, dinov2: Dinov2Embedder, catalog: SynthCatalog
) -> None:
    env = Env(object_store, tmp_path, dinov2)
    snapshot = await _snapshot(object_store, catalog, tmp_path)
    request = _request("resumed", snapshot, dataset=embedding_pb2.DatasetSource(dataset_id="d"))
    # Chunks of 4 in batches of 3: chunk 0 completes (marker written), chunk 1 has written
    # its first batch of 3 points when the worker dies in its second batch.
    crashing = Gate(dinov2, block_at=7, die=True)
    async with _mesh(tmp_path) as (bus, events):
        first = _worker(bus, env.handler(crashing, chunk_size=4))
        first_task = asyncio.create_task(first.run())
        await _publish(bus, request)
        assert await asyncio.to_thread(crashing.blocked.wait, 120)
        assert await object_store.exists(progress_key("jobs/resumed/", 0))
        assert not await object_store.exists(progress_key("jobs/resumed/", 1))
        assert await env.registry.count("products") == 7
        # The worker dies (no end state, no ack): JetStream redelivers after ack_wait. The
        # runtime's handler task outlives the cancelled loop; the gate ends it unreported.
        first_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first_task
        crashing.release.set()

        again = Gate(dinov2)
        async with _running(_worker(bus, env.handler(again, chunk_size=4))):
            await events.ended("resumed")

    end = events.end("resumed")
    assert end is not None and end.state == job_pb2.JOB_STATE_SUCCEEDED, end
    assert {e.attempt for e in events.by_job["resumed"]} == {1, 2}
    result = events.result("resumed", embedding_pb2.EmbeddingJobResult())
    total = N_PRODUCTS * RENDERS
    assert (result.images_selected, result.images_embedded) == (total, total)
    assert _points(result) == {"products": total}
    assert await env.registry.count("products") == total
    # Chunk 0 was skipped on its marker; chunk 1's three written points were written again.
    assert again.images == total - 4
    attempt_two = [e for e in events.by_job["resumed"] if e.attempt == 2]
    assert _progress(attempt_two)[:2] == [(0, total), (4, total)]


@pytest.mark.timeout(300)
async def test_a_cancel_stops_between_batches_and_reports_what_was_written(
    object_store: ObjectStore, tmp_path: Path, dinov2: Dinov2Embedder, catalog: SynthCatalog
) -> None:
    env = Env(object_store, tmp_path, dinov2)
    snapshot = await _snapshot(object_store, catalog, tmp_path)
    gate = Gate(dinov2, block_at=6)
    handler = env.handler(gate)
    async with _mesh(tmp_path) as (bus, events), _running(_worker(bus, handler)):
        await _publish(
            bus,
            _request("cancelled", snapshot, dataset=embedding_pb2.DatasetSource(snapshot_id="s1")),
        )
        assert await asyncio.to_thread(gate.blocked.wait, 120)
        await bus.publish(
            job_control_subject("cancelled"),
            events_pb2.JobControl(job_id="cancelled", action=events_pb2.JOB_CONTROL_ACTION_CANCEL),
        )
        assert await asyncio.to_thread(handler.jobs[0].cancel.wait, 30)
        gate.release.set()
        await events.ended("cancelled")

    end = events.end("cancelled")
    assert end is not None and end.state == job_pb2.JOB_STATE_CANCELLED, end
    result = events.result("cancelled", embedding_pb2.EmbeddingJobResult())
    # The batch running at the cancel finishes (its points are written); no later one starts.
    assert result.images_embedded == 9 and gate.images == 9
    assert _points(result) == {"products": 9}
    assert await env.registry.count("products") == 9
    assert result.images_selected == N_PRODUCTS * RENDERS
