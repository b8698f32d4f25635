"""Conformance suite of the vector store: Qdrant Edge and qdrant-client local mode pass it alike.

Filters are checked against `filters.matches` (the pure-Python oracle) on random payloads, and
tenant isolation with 1,000 random filtered queries over two tenants and two collections.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from visionmesh.common.errors import InvalidArgument, NotFound
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.filters import And, AnyOf, Filter, Match, Not, Or, Range, matches
from visionmesh.embedding.core.qdrant_store import QdrantStore
from visionmesh.embedding.core.vector_store import PointIn, VectorStore, point_uuid, space_name

SPACE = space_name("test-model", 16)
DIM = 16
INDEX_FIELDS = {
    "brand": "keyword",
    "category": "keyword",
    "price": "float",
    "stock": "integer",
    "discontinued": "bool",
}

BRANDS = ["nike", "adidas", "puma", "asics"]
CATEGORIES = ["shoes", "boots", "shirts", "hats"]
COLORS = ["red", "green", "blue"]


@pytest_asyncio.fixture(params=["edge", "qdrant-local"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    backend: VectorStore
    if request.param == "edge":
        backend = EdgeStore(tmp_path / "edge")
    else:
        backend = QdrantStore.local(":memory:")
    await backend.ensure_space(SPACE, dim=DIM, index_fields=INDEX_FIELDS)  # type: ignore[arg-type]
    async with backend:
        yield backend


def random_payload(rng: random.Random) -> dict[str, Any]:
    """Payloads with absent fields, lists, ints next to floats, booleans and nested objects."""
    payload: dict[str, Any] = {"product_id": f"p{rng.randrange(30)}"}
    if rng.random() < 0.85:
        payload["brand"] = rng.choice(BRANDS)
    r = rng.random()
    if r < 0.6:
        payload["category"] = rng.choice(CATEGORIES)
    elif r < 0.85:
        payload["category"] = rng.sample(CATEGORIES, k=rng.randint(1, 2))
    if rng.random() < 0.8:
        payload["price"] = (
            round(rng.uniform(0, 200), 2) if rng.random() < 0.7 else rng.randint(0, 200)
        )
    if rng.random() < 0.8:
        payload["stock"] = rng.randint(0, 50)
    if rng.random() < 0.7:
        payload["discontinued"] = rng.random() < 0.3
    if rng.random() < 0.6:
        payload["attrs"] = {"color": rng.choice(COLORS), "size": rng.randint(36, 46)}
    return payload


def random_leaf(rng: random.Random) -> Filter:
    kind = rng.randrange(11)
    if kind == 0:
        return Match("brand", rng.choice(BRANDS))
    if kind == 1:
        return Match("category", rng.choice(CATEGORIES))
    if kind == 2:
        return AnyOf("category", rng.sample(CATEGORIES, k=rng.randint(1, 3)))
    if kind == 3:
        return AnyOf("brand", rng.sample(BRANDS, k=rng.randint(1, 3)))
    if kind == 4:
        lo = rng.uniform(0, 150)
        return Range("price", gte=lo, lt=lo + rng.uniform(10, 100))
    if kind == 5:
        return (
            Range("stock", gt=rng.randint(0, 40))
            if rng.random() < 0.5
            else Range("stock", lte=rng.randint(0, 40))
        )
    if kind == 6:
        return Match("discontinued", rng.random() < 0.5)
    if kind == 7:
        return AnyOf("stock", [rng.randint(0, 50) for _ in range(5)])
    if kind == 8:
        return Match("attrs.color", rng.choice(COLORS))
    if kind == 9:
        return Range("attrs.size", gte=rng.randint(36, 46))
    return Match("product_id", f"p{rng.randrange(30)}")


def random_filter(rng: random.Random, depth: int = 0) -> Filter:
    r = rng.random()
    if depth >= 2 or r < 0.35:
        return random_leaf(rng)
    if r < 0.6:
        return And([random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3))])
    if r < 0.85:
        return Or([random_filter(rng, depth + 1) for _ in range(rng.randint(2, 3))])
    return Not(random_filter(rng, depth + 1))


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


async def test_upsert_replaces_by_id_and_counts(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 5)
    points = [PointIn(f"img-{i}", vectors[i], {"n": i}) for i in range(5)]
    assert await store.upsert(SPACE, "t1", "products", points) == 5
    assert await store.count(SPACE, "t1", "products") == 5
    # A redelivered job: the same caller ids again, new payloads; the count stays.
    again = [PointIn(f"img-{i}", vectors[i], {"n": i + 100}) for i in range(5)]
    await store.upsert(SPACE, "t1", "products", again)
    assert await store.count(SPACE, "t1", "products") == 5
    records = await store.retrieve(SPACE, "t1", "products", ["img-3", "missing", "img-0"])
    assert [(r.id, r.payload) for r in records] == [("img-3", {"n": 103}), ("img-0", {"n": 100})]
    # The same caller id in another collection or tenant is another point.
    await store.upsert(SPACE, "t1", "cutouts", points[:2])
    await store.upsert(SPACE, "t2", "products", points[:3])
    assert await store.count(SPACE, "t1", "products") == 5
    assert await store.count(SPACE, "t1", "cutouts") == 2
    assert await store.count(SPACE, "t2", "products") == 3


def test_point_uuid_is_deterministic_and_scoped() -> None:
    a = point_uuid("t1", "products", "sha256:abc")
    assert a == point_uuid("t1", "products", "sha256:abc")
    assert (
        len({a, point_uuid("t2", "products", "sha256:abc"), point_uuid("t1", "c", "sha256:abc")})
        == 3
    )
    assert space_name("DINOv2 ViT-S/14", 384) == "vm-dinov2_vit-s_14-384-cosine"


async def test_search_orders_by_cosine_and_applies_threshold(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 40)
    await store.upsert(SPACE, "t1", "c", [PointIn(f"p{i}", vectors[i]) for i in range(40)])
    query = unit(rng, 1)[0]
    sims = vectors @ query
    expected = [f"p{i}" for i in np.argsort(-sims)]
    hits = await store.search(SPACE, "t1", "c", query, limit=10)
    assert [h.id for h in hits] == expected[:10]
    assert [h.score for h in hits] == pytest.approx(sorted(sims, reverse=True)[:10], abs=1e-5)
    threshold = float(np.sort(sims)[-7]) - 1e-4  # exactly 7 points reach it
    hits = await store.search(SPACE, "t1", "c", query, limit=30, score_threshold=threshold)
    assert [h.id for h in hits] == expected[:7]
    # An unnormalised query scores the same under cosine.
    hits = await store.search(SPACE, "t1", "c", query * 3.0, limit=3)
    assert [h.id for h in hits] == expected[:3]


async def test_filters_agree_with_the_oracle(store: VectorStore) -> None:
    rng = random.Random(3)
    vectors = unit(np.random.default_rng(3), 300)
    payloads = {f"p{i}": random_payload(rng) for i in range(300)}
    points = [PointIn(pid, vectors[i], p) for i, (pid, p) in enumerate(payloads.items())]
    await store.upsert(SPACE, "t1", "c", points)
    query = unit(np.random.default_rng(4), 1)[0]
    nonempty = 0
    for _ in range(120):
        flt = random_filter(rng)
        expected = {pid for pid, p in payloads.items() if matches(flt, p)}
        nonempty += bool(expected)
        assert await store.count(SPACE, "t1", "c", flt) == len(expected), flt
        hits = await store.search(SPACE, "t1", "c", query, limit=300, filter=flt)
        assert {h.id for h in hits} == expected, flt
    assert nonempty > 60  # the random filters select something most of the time


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Match("v", 1), {"int1", "list"}),
        (Match("v", True), {"true"}),
        (Match("v", "1"), {"str1"}),
        (AnyOf("v", [1, 2]), {"int1", "list"}),
        (Range("v", gte=0.5, lte=1.5), {"int1", "float1", "list"}),
        (Not(Match("v", 1)), {"true", "str1", "float1", "absent", "null"}),
        (Match("v", 7), set()),
    ],
)
async def test_types_are_not_coerced(store: VectorStore, flt: Filter, expected: set[str]) -> None:
    payloads: dict[str, dict[str, Any]] = {
        "int1": {"v": 1},
        "true": {"v": True},
        "str1": {"v": "1"},
        "float1": {"v": 1.0},
        "list": {"v": [5, 1]},
        "absent": {},
        "null": {"v": None},
    }
    vectors = unit(np.random.default_rng(5), len(payloads))
    await store.upsert(
        SPACE, "t1", "c", [PointIn(k, vectors[i], p) for i, (k, p) in enumerate(payloads.items())]
    )
    assert {k for k, p in payloads.items() if matches(flt, p)} == expected
    hits = await store.search(SPACE, "t1", "c", vectors[0], limit=20, filter=flt)
    assert {h.id for h in hits} == expected


async def test_delete_by_ids_and_by_filter(store: VectorStore) -> None:
    rng = random.Random(6)
    vectors = unit(np.random.default_rng(6), 100)
    payloads = {f"p{i}": random_payload(rng) for i in range(100)}
    await store.upsert(
        SPACE, "t1", "c", [PointIn(k, vectors[i], p) for i, (k, p) in enumerate(payloads.items())]
    )
    await store.upsert(SPACE, "t2", "c", [PointIn("p1", vectors[1], payloads["p1"])])
    assert await store.delete_points(SPACE, "t1", "c", ids=["p1", "p2", "nope"]) == 2
    del payloads["p1"], payloads["p2"]
    assert await store.count(SPACE, "t1", "c") == 98
    assert await store.count(SPACE, "t2", "c") == 1  # same caller id, other tenant: untouched
    flt = Or([Match("brand", "nike"), Range("price", lt=50)])
    expected = {k for k, p in payloads.items() if matches(flt, p)}
    assert await store.delete_points(SPACE, "t1", "c", filter=flt) == len(expected) > 0
    remaining = await store.retrieve(SPACE, "t1", "c", list(payloads))
    assert {r.id for r in remaining} == set(payloads) - expected
    # ids and filter together: only points matching both.
    some = sorted(set(payloads) - expected)[:10]
    both = Match("brand", "adidas")
    n_both = sum(matches(both, payloads[k]) for k in some)
    assert await store.delete_points(SPACE, "t1", "c", ids=some, filter=both) == n_both
    with pytest.raises(InvalidArgument):
        await store.delete_points(SPACE, "t1", "c")


async def test_drop_collection_leaves_the_others(store: VectorStore) -> None:
    vectors = unit(np.random.default_rng(7), 10)
    for tenant in ("t1", "t2"):
        for collection in ("products", "cutouts"):
            await store.upsert(
                SPACE, tenant, collection, [PointIn(f"p{i}", vectors[i]) for i in range(10)]
            )
    assert await store.drop_collection(SPACE, "t1", "products") == 10
    assert await store.count(SPACE, "t1", "products") == 0
    assert await store.count(SPACE, "t1", "cutouts") == 10
    assert await store.count(SPACE, "t2", "products") == 10
    assert await store.drop_collection(SPACE, "t1", "products") == 0


async def test_wrong_dimension_and_bad_vectors_are_refused(store: VectorStore) -> None:
    good = unit(np.random.default_rng(8), 1)[0]
    with pytest.raises(InvalidArgument) as info:
        await store.upsert(SPACE, "t1", "c", [PointIn("a", good), PointIn("b", np.ones(DIM + 1))])
    assert info.value.field_violations[0].field == "points[1].vector"
    assert await store.count(SPACE, "t1", "c") == 0  # nothing of the batch was written
    with pytest.raises(InvalidArgument) as info:
        await store.upsert(SPACE, "t1", "c", [PointIn("a", [0.5] * 8)], field_path="images")
    assert info.value.field_violations[0].field == "images[0].vector"
    with pytest.raises(InvalidArgument) as info:
        await store.search(SPACE, "t1", "c", np.ones(DIM - 1), limit=3)
    assert info.value.field_violations[0].field == "vector"
    for bad in (np.zeros(DIM), np.full(DIM, np.nan)):
        with pytest.raises(InvalidArgument):
            await store.upsert(SPACE, "t1", "c", [PointIn("a", bad)])
    with pytest.raises(InvalidArgument):
        await store.upsert(SPACE, "t1", "c", [PointIn("a", good, {"tenant_id": "t2"})])
    with pytest.raises(NotFound):
        await store.count("vm-no-such-space", "t1", "c")
    with pytest.raises(Exception, match="16-d cosine"):
        await store.ensure_space(SPACE, dim=DIM * 2)


async def test_payload_round_trip(store: VectorStore) -> None:
    payload = {
        "name": "Air Zoom — ünïcode",
        "count": 3,
        "big": 2**53,
        "ratio": 0.125,
        "flag": False,
        "tags": ["a", "b"],
        "mixed": [1, "two", 3.5, True, None],
        "nested": {"deep": {"list": [{"x": 1}, {"y": [1, 2]}]}, "empty": {}},
        "nothing": None,
    }
    vector = unit(np.random.default_rng(9), 1)[0]
    await store.upsert(SPACE, "t1", "c", [PointIn("a", vector, payload)])
    (record,) = await store.retrieve(SPACE, "t1", "c", ["a"], with_vectors=True)
    assert record.payload == payload
    assert record.vector == pytest.approx(vector.tolist(), abs=1e-6)
    (hit,) = await store.search(SPACE, "t1", "c", vector, limit=1)
    assert (hit.id, hit.payload) == ("a", payload)


async def test_tenant_isolation_1000_random_filtered_queries(store: VectorStore) -> None:
    rng = random.Random(10)
    vectors = unit(np.random.default_rng(10), 4 * 150)
    scopes = [(t, c) for t in ("acme", "globex") for c in ("products", "cutouts")]
    truth: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    k = 0
    for tenant, collection in scopes:
        payloads: dict[str, dict[str, Any]] = {}
        points = []
        for i in range(150):
            # Ids collide across scopes on purpose: only the scope keeps them apart.
            pid = f"p{i}"
            payloads[pid] = {**random_payload(rng), "owner": f"{tenant}/{collection}"}
            points.append(PointIn(pid, vectors[k], payloads[pid]))
            k += 1
        truth[(tenant, collection)] = payloads
        await store.upsert(SPACE, tenant, collection, points)
    qrng = np.random.default_rng(11)
    foreign = 0
    answered = 0
    for _ in range(1000):
        tenant, collection = rng.choice(scopes)
        flt = random_filter(rng) if rng.random() < 0.9 else None
        hits = await store.search(
            SPACE, tenant, collection, unit(qrng, 1)[0], limit=rng.choice([1, 10, 50]), filter=flt
        )
        answered += bool(hits)
        for hit in hits:
            if hit.payload.get("owner") != f"{tenant}/{collection}":
                foreign += 1
            assert matches(flt, truth[(tenant, collection)][hit.id])
    assert foreign == 0
    assert answered > 700


async def test_edge_persists_across_close_and_reopen(tmp_path: Path) -> None:
    vectors = unit(np.random.default_rng(12), 20)
    async with EdgeStore(tmp_path) as store:
        await store.ensure_space(SPACE, dim=DIM, index_fields=["brand"])
        await store.upsert(
            SPACE, "t1", "c", [PointIn(f"p{i}", vectors[i], {"brand": "nike"}) for i in range(20)]
        )
        await store.optimize(SPACE)
    async with EdgeStore(tmp_path) as reopened:
        # No ensure_space: the space is found on disk, dimension included.
        assert await reopened.count(SPACE, "t1", "c", Match("brand", "nike")) == 20
        hits = await reopened.search(SPACE, "t1", "c", vectors[4], limit=1)
        assert hits[0].id == "p4"
        with pytest.raises(InvalidArgument):
            await reopened.upsert(SPACE, "t1", "c", [PointIn("x", np.ones(DIM + 1))])


async def test_edge_wal_survives_a_killed_process(tmp_path: Path) -> None:
    """Points acknowledged before the process dies without close() are there on reopen."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        import numpy as np
        from visionmesh.embedding.core.edge_store import EdgeStore
        from visionmesh.embedding.core.vector_store import PointIn

        async def main():
            store = EdgeStore({str(tmp_path)!r})
            await store.ensure_space({SPACE!r}, dim={DIM})
            rng = np.random.default_rng(0)
            points = [PointIn(f"p{{i}}", rng.standard_normal({DIM})) for i in range(50)]
            await store.upsert({SPACE!r}, "t1", "c", points)
            os._exit(0)  # no flush, no close

        asyncio.run(main())
        """
    )
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    async with EdgeStore(tmp_path) as store:
        assert await store.count(SPACE, "t1", "c") == 50
