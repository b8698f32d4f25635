"""Qdrant Edge's HNSW graph is built in a child process while the store goes on serving.

The points are 384-d, as DINOv2-small's: 8,000 of them pass Edge's own indexing threshold
(10 MB of vectors), below which it keeps segments for exact scan whatever is asked.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from visionmesh.common.errors import Unavailable
from visionmesh.embedding.core import edge_store
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.vector_store import PointIn, space_name

from tests.gateway.helpers import wait_for

DIM = 384
SPACE = space_name("index-test", DIM)
INDEXABLE = 8_000


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def fill(store: EdgeStore, vectors: np.ndarray, start: int = 0) -> None:
    await store.ensure_space(SPACE, dim=DIM, index_fields=["brand"])
    for lo in range(0, len(vectors), 1000):
        chunk = vectors[lo : lo + 1000]
        await store.upsert(
            SPACE,
            "t1",
            "c",
            [PointIn(f"p{start + lo + i}", v, {"brand": "acme"}) for i, v in enumerate(chunk)],
        )


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    built: list[Path] = []
    real = edge_store._build_index

    async def counted(path: Path) -> None:
        built.append(path)
        await real(path)

    monkeypatch.setattr(edge_store, "_build_index", counted)
    return built


async def test_the_graph_is_built_while_reads_and_writes_go_on(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, INDEXABLE)
    late = unit(rng, 200)
    async with EdgeStore(tmp_path) as store:
        await fill(store, vectors)
        assert store.index_status(SPACE).indexed == 0
        build = asyncio.create_task(store.optimize(SPACE))
        searches = written = 0
        while not build.done():
            # Each pass: one write and one search, answered while the child builds.
            if written < len(late):
                await store.upsert(SPACE, "t1", "c", [PointIn(f"late{written}", late[written])])
                written += 1
            hits = await store.search(SPACE, "t1", "c", vectors[searches % 50], limit=1)
            assert hits[0].id == f"p{searches % 50}"
            searches += 1
            await asyncio.sleep(0.005)
        await build
        assert searches > 10 and written > 10  # the event loop was never held by the build
        await store.delete_points(SPACE, "t1", "c", ids=["p0", "p1"])

        status = store.index_status(SPACE)
        assert status.points == INDEXABLE + written - 2
        assert status.indexed >= INDEXABLE - 2
        # Writes made during the build were replayed onto the indexed copy.
        for i in range(written):
            hits = await store.search(SPACE, "t1", "c", late[i], limit=1)
            assert hits[0].id == f"late{i}" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert not (tmp_path / SPACE / "shard.building").exists()
        assert not (tmp_path / SPACE / "shard.old").exists()

    async with EdgeStore(tmp_path) as reopened:
        assert await reopened.count(SPACE, "t1", "c") == INDEXABLE + written - 2
        assert reopened.index_status(SPACE).indexed >= INDEXABLE - 2


async def test_maintain_builds_only_when_enough_points_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = count_builds(monkeypatch)
    rng = np.random.default_rng(1)
    async with EdgeStore(tmp_path, index_threshold=5_000) as store:
        await fill(store, unit(rng, 3_000))
        await store.maintain()
        assert built == []  # 3,000 unindexed points: exact scan is cheap enough
        await fill(store, unit(rng, INDEXABLE - 3_000), start=3_000)
        await store.maintain()
        assert len(built) == 1
        assert store.index_status(SPACE).indexed >= INDEXABLE
        await store.maintain()
        assert len(built) == 1  # nothing changed since


async def test_a_failed_build_loses_nothing_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, INDEXABLE)
    async with EdgeStore(tmp_path, index_threshold=1_000) as store:
        await fill(store, vectors)

        async def broken(path: Path) -> None:
            # A write lands mid-build, then the child dies.
            await store.upsert(SPACE, "t1", "c", [PointIn("mid", vectors[0])])
            shutil.rmtree(path / "segments")
            raise Unavailable("building the vector index failed: killed")

        monkeypatch.setattr(edge_store, "_build_index", broken)
        with pytest.raises(Unavailable):
            await store.optimize(SPACE)
        assert await store.count(SPACE, "t1", "c") == INDEXABLE + 1
        assert not (tmp_path / SPACE / "shard.building").exists()
        monkeypatch.undo()

        built = count_builds(monkeypatch)
        await store.maintain()  # still due: the failed build indexed nothing
        assert len(built) == 1
        assert store.index_status(SPACE).indexed >= INDEXABLE


async def test_a_cancelled_build_kills_the_child_and_keeps_the_live_shard(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    async with EdgeStore(tmp_path) as store:
        await fill(store, unit(rng, INDEXABLE))
        build = asyncio.create_task(store.optimize(SPACE))

        async def started() -> bool:
            return (tmp_path / SPACE / "shard.building").exists()

        await wait_for(started, within=30, interval=0.01, what="the build to start")
        await asyncio.sleep(0.2)
        build.cancel()
        with pytest.raises(asyncio.CancelledError):
            await build
        assert not (tmp_path / SPACE / "shard.building").exists()
        assert store.index_status(SPACE).indexed == 0
        assert await store.count(SPACE, "t1", "c") == INDEXABLE


@pytest.mark.parametrize(
    "crash",
    [
        "copy-half-written",  # the child was building: the live shard is whole
        "between-renames",  # the live shard renamed away, the replayed copy not yet in place
    ],
)
async def test_a_crash_during_the_build_reopens_whole(tmp_path: Path, crash: str) -> None:
    rng = np.random.default_rng(4)
    async with EdgeStore(tmp_path) as store:
        await fill(store, unit(rng, 500))
    space_dir = tmp_path / SPACE
    shutil.copytree(space_dir / "shard", space_dir / "shard.building")
    if crash == "copy-half-written":
        shutil.rmtree(space_dir / "shard.building" / "segments")
    else:
        (space_dir / "shard").rename(space_dir / "shard.old")
    async with EdgeStore(tmp_path) as reopened:
        assert await reopened.count(SPACE, "t1", "c") == 500
    assert sorted(p.name for p in space_dir.iterdir()) == ["shard", "space.json"]


async def test_the_upkeep_loop_outlives_a_failed_pass(tmp_path: Path) -> None:
    passes: list[int] = []
    store = EdgeStore(tmp_path)

    async def flaky() -> None:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("disk full")

    store.maintain = flaky  # type: ignore[method-assign]
    loop = asyncio.create_task(store.maintain_forever(0.01))

    async def passed_thrice() -> bool:
        return len(passes) >= 3

    await wait_for(passed_thrice, within=10, interval=0.01, what="three upkeep passes")
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_two_builds_of_one_space_at_once_run_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = count_builds(monkeypatch)
    rng = np.random.default_rng(5)
    async with EdgeStore(tmp_path) as store:
        # Few points: this counts builds, and a shard below Edge's threshold builds fast.
        await fill(store, unit(rng, 500))
        # Both start while a write holds the lock; only one copies and builds.
        async with store._write_lock:
            first = asyncio.create_task(store.optimize(SPACE))
            second = asyncio.create_task(store.optimize(SPACE))
            await asyncio.sleep(0.05)
        await asyncio.gather(first, second)
        assert len(built) == 1
        assert not (tmp_path / SPACE / "shard.building").exists()
        assert await store.count(SPACE, "t1", "c") == 500
