"""Vector store benchmark: Qdrant Edge (the embedded default) against qdrant-client local mode.

Both stores are driven through the same `VectorStore` interface, in one run, on the same data:
--points random 384-d points (a mixture of 1,000 Gaussian clusters, L2-normalised: retrieval
embeddings cluster, and uniform noise would understate what HNSW does on real data), spread
over --tenants tenants in one space, each with a payload (brand, category, price,
discontinued). It prints:
  1. upserts per second: batches of --batch points through `upsert` (validation and payload
     scoping included), wall time over all points;
  2. Edge's HNSW build time (`optimize()`: a child process on a copy of the shard, then a
     swap) and the latency of searches run meanwhile; Edge searches by brute force until then;
  3. filtered top-10 search latency p50 / p99 over --queries queries (each a random tenant, a
     random query vector near a cluster, one of six filter shapes: brand = x; brand = x AND
     category IN [2]; price range; NOT discontinued AND category = x; NOT discontinued; the
     tenant scope alone), for Edge before and after optimize and for local mode (the first
     --local-queries of them: its scan takes seconds per query at 100k points);
  4. recall@10 of Edge's HNSW answers against exact search (numpy brute force over the points
     that satisfy the tenant scope and the filter): mean over the same queries (goal >= 0.95),
     and per filter shape: Qdrant answers a filter that selects few points (below its
     full_scan_threshold, ~6.5k 384-d vectors by default) exactly from the payload index, so
     only the broad shapes exercise the HNSW graph itself.

    uv run python benchmarks/vector_store.py [--points 100000] [--dim 384] [--queries 200]
        [--local-queries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.filters import And, AnyOf, Filter, Match, Not, Range
from visionmesh.embedding.core.qdrant_store import QdrantStore
from visionmesh.embedding.core.vector_store import PointIn, VectorStore, space_name

BRANDS = [f"brand{i}" for i in range(10)]
CATEGORIES = [f"cat{i}" for i in range(8)]
COLLECTION = "products"
SHAPES = [
    "brand = x",
    "brand = x AND category IN [y, z]",
    "price in [lo, lo+100)",
    "NOT discontinued AND category = x",
    "NOT discontinued",
    "tenant scope only",
]
INDEX_FIELDS = {"brand": "keyword", "category": "keyword", "price": "float", "discontinued": "bool"}


@dataclass
class Data:
    vectors: np.ndarray
    tenant: np.ndarray
    brand: np.ndarray
    category: np.ndarray
    price: np.ndarray
    discontinued: np.ndarray
    centres: np.ndarray

    def payload(self, i: int) -> dict[str, Any]:
        return {
            "product_id": f"prod{i % 5000}",
            "brand": BRANDS[self.brand[i]],
            "category": CATEGORIES[self.category[i]],
            "price": float(self.price[i]),
            "discontinued": bool(self.discontinued[i]),
        }


@dataclass
class Query:
    tenant: int
    vector: np.ndarray
    filter: Filter | None
    mask: np.ndarray  # the points the scope and the filter select
    shape: str


def make_data(n: int, dim: int, tenants: int, rng: np.random.Generator) -> Data:
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    assign = rng.integers(0, len(centres), n)
    vectors = centres[assign] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Data(
        vectors=vectors,
        tenant=rng.integers(0, tenants, n),
        brand=rng.integers(0, len(BRANDS), n),
        category=rng.integers(0, len(CATEGORIES), n),
        price=np.round(rng.uniform(0, 500, n), 2),
        discontinued=rng.random(n) < 0.2,
        centres=centres,
    )


def make_queries(data: Data, count: int, tenants: int, rng: np.random.Generator) -> list[Query]:
    queries = []
    for k in range(count):
        tenant = int(rng.integers(0, tenants))
        centre = data.centres[rng.integers(0, len(data.centres))]
        vector = centre + 0.6 * rng.standard_normal(centre.shape).astype(np.float32)
        vector /= np.linalg.norm(vector)
        scope = data.tenant == tenant
        b, c1, c2 = (int(x) for x in rng.choice(len(CATEGORIES), 3, replace=False))
        shape = k % len(SHAPES)
        flt: Filter | None
        if shape == 4:
            flt, mask = Not(Match("discontinued", True)), ~data.discontinued
        elif shape == 5:
            flt, mask = None, np.ones(len(data.tenant), dtype=bool)
        elif shape == 0:
            flt, mask = Match("brand", BRANDS[b]), data.brand == b
        elif shape == 1:
            flt = And(
                [Match("brand", BRANDS[b]), AnyOf("category", [CATEGORIES[c1], CATEGORIES[c2]])]
            )
            mask = (data.brand == b) & np.isin(data.category, [c1, c2])
        elif shape == 2:
            lo = float(rng.uniform(0, 400))
            flt, mask = (
                Range("price", gte=lo, lt=lo + 100),
                (data.price >= lo) & (data.price < lo + 100),
            )
        else:
            flt = And([Not(Match("discontinued", True)), Match("category", CATEGORIES[c1])])
            mask = ~data.discontinued & (data.category == c1)
        queries.append(Query(tenant, vector, flt, scope & mask, SHAPES[shape]))
    return queries


async def upsert_all(store: VectorStore, space: str, data: Data, batch: int) -> float:
    by_tenant = [np.flatnonzero(data.tenant == t) for t in range(int(data.tenant.max()) + 1)]
    total = 0
    start = time.perf_counter()
    for tenant, idx in enumerate(by_tenant):
        for lo in range(0, len(idx), batch):
            chunk = idx[lo : lo + batch]
            points = [PointIn(f"img{i}", data.vectors[i], data.payload(int(i))) for i in chunk]
            total += await store.upsert(space, f"tenant{tenant}", COLLECTION, points)
    return total / (time.perf_counter() - start)


async def run_queries(
    store: VectorStore, space: str, queries: list[Query]
) -> tuple[list[float], list[list[int]]]:
    latencies, answers = [], []
    for q in queries:
        start = time.perf_counter()
        hits = await store.search(
            space, f"tenant{q.tenant}", COLLECTION, q.vector, limit=10, filter=q.filter
        )
        latencies.append((time.perf_counter() - start) * 1000)
        answers.append([int(h.id[3:]) for h in hits])
    return latencies, answers


def exact_top10(data: Data, q: Query) -> list[int]:
    idx = np.flatnonzero(q.mask)
    scores = data.vectors[idx] @ q.vector
    return [int(i) for i in idx[np.argsort(-scores)[:10]]]


def recall(
    answers: list[list[int]], data: Data, queries: list[Query], shape: str | None = None
) -> float:
    values = []
    for got, q in zip(answers, queries, strict=True):
        if shape is not None and q.shape != shape:
            continue
        truth = exact_top10(data, q)
        if truth:
            values.append(len(set(got) & set(truth)) / len(truth))
    return statistics.fmean(values)


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--local-queries",
        type=int,
        default=50,
        help="queries for local mode (a Python scan: seconds per query at 100k points)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = make_data(args.points, args.dim, args.tenants, rng)
    queries = make_queries(data, args.queries, args.tenants, rng)
    space = space_name("bench", args.dim)
    rows: list[tuple[str, str]] = []

    with tempfile.TemporaryDirectory() as root:
        async with EdgeStore(root) as edge:
            await edge.ensure_space(space, dim=args.dim, index_fields=INDEX_FIELDS)  # type: ignore[arg-type]
            rate = await upsert_all(edge, space, data, args.batch)
            rows.append(("Edge upserts/s", f"{rate:,.0f}"))
            lat, plain_answers = await run_queries(edge, space, queries)
            rows.append(
                (
                    "Edge filtered search before optimize (brute force) p50 / p99 ms",
                    f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f}",
                )
            )
            start = time.perf_counter()
            build = asyncio.create_task(edge.optimize(space))
            during: list[float] = []
            while not build.done():
                # The service keeps answering while the child process builds the graph.
                lat, _ = await run_queries(edge, space, queries[len(during) % len(queries) :][:1])
                during.extend(lat)
                await asyncio.sleep(0.05)
            await build
            rows.append(
                (
                    "Edge HNSW build s (child process; searches kept running)",
                    f"{time.perf_counter() - start:.1f}",
                )
            )
            rows.append(
                (
                    f"  filtered search during the build p50 / max ms ({len(during)} queries)",
                    f"{pct(during, 50):.2f} / {max(during):.2f}" if during else "-",
                )
            )
            await run_queries(edge, space, queries[:20])  # warm-up
            lat, answers = await run_queries(edge, space, queries)
            rows.append(
                (
                    "Edge filtered search (HNSW) p50 / p99 ms",
                    f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f}",
                )
            )
            rows.append(
                ("Edge recall@10 vs exact (HNSW, all)", f"{recall(answers, data, queries):.4f}")
            )
            for shape in SHAPES:
                matched = statistics.median(int(q.mask.sum()) for q in queries if q.shape == shape)
                rows.append(
                    (
                        f"  recall@10, {shape} (median {matched:,.0f} matching)",
                        f"{recall(answers, data, queries, shape):.4f}",
                    )
                )
            rows.append(
                (
                    "Edge recall@10 vs exact (before optimize)",
                    f"{recall(plain_answers, data, queries):.4f}",
                )
            )

    with warnings.catch_warnings():
        # Local mode warns above 20k points and about payload indexes: both are the point here.
        warnings.simplefilter("ignore")
        async with QdrantStore.local(":memory:") as local:
            await local.ensure_space(space, dim=args.dim, index_fields=INDEX_FIELDS)  # type: ignore[arg-type]
            rate = await upsert_all(local, space, data, args.batch)
            rows.append(("qdrant-client local upserts/s", f"{rate:,.0f}"))
            local_queries = queries[: args.local_queries]
            lat, answers = await run_queries(local, space, local_queries)
            rows.append(
                (
                    "qdrant-client local filtered search p50 / p99 ms",
                    f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f}",
                )
            )
            rows.append(
                (
                    "qdrant-client local recall@10 vs exact",
                    f"{recall(answers, data, local_queries):.4f}",
                )
            )

    sel = [int(q.mask.sum()) for q in queries]
    print(
        f"{args.points:,} points, {args.dim}-d cosine, {args.tenants} tenants, {args.queries} "
        f"filtered top-10 queries (matching points per query: median {int(np.median(sel)):,}, "
        f"min {min(sel):,}, max {max(sel):,})"
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    asyncio.run(main())
