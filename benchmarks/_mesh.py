"""Shared by the benchmarks: a running platform (real processes) and timing helpers."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from visionmesh.stack import Ports, Stack

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@asynccontextmanager
async def postgres_database(admin_url: str = POSTGRES_ADMIN_URL) -> AsyncIterator[str]:
    """A fresh PostgreSQL database for one run, dropped afterwards."""
    name = f"vm_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(admin_url)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def running_stack(
    data_dir: Path, *, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    stack = Stack(data_dir=data_dir, ports=Ports.free(), extra_env=extra_env or {})
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100)
    return {"p50": q[49], "p90": q[89], "p99": q[98], "mean": statistics.fmean(ordered)}


async def raw_http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, headers: str
) -> bytes:
    """One keep-alive HTTP/1.1 GET with the least client overhead we can manage."""
    return await raw_http(reader, writer, "GET", path, headers)


async def raw_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    headers: str,
    body: bytes = b"",
) -> bytes:
    """One keep-alive HTTP/1.1 request; returns the body of a 200 response."""
    length = f"content-length: {len(body)}\r\ncontent-type: application/json\r\n" if body else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nhost: bench\r\n{headers}{length}\r\n".encode() + body
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {head[:40]!r} {body[:200]!r}")
    return body
