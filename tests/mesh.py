"""The whole mesh as real processes (NATS, S3, gateway, worker services) for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.stack import Ports, Stack


@dataclass
class Mesh:
    stack: Stack
    rest_url: str
    token: str
    tmp: Path

    def object_store(self) -> ObjectStore:
        """The stack's bucket, as the services see it (close() it when done)."""
        env = self.stack.common_env()
        return ObjectStore(
            ObjectStoreConfig(
                endpoint=env["VISIONMESH_S3_ENDPOINT"],
                access_key=env["VISIONMESH_S3_ACCESS_KEY"],
                secret_key=env["VISIONMESH_S3_SECRET_KEY"],
                bucket=env["VISIONMESH_S3_BUCKET"],
            )
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.rest_url, headers={"authorization": f"Bearer {self.token}"}, timeout=60
        )


@contextlib.asynccontextmanager
async def running_mesh(tmp: Path, *, workers: Sequence[str]) -> AsyncIterator[Mesh]:
    """A stack with `workers` on free ports, supervised as under `make up`, and a user."""
    stack = Stack(
        data_dir=tmp / "state",
        ports=Ports.free(),
        workers=workers,
        extra_env={
            # Short enough that a killed worker's job comes back within the test.
            "VISIONMESH_ACK_WAIT_SECONDS": "10",
            "VISIONMESH_HEARTBEAT_SECONDS": "2",
            "VISIONMESH_PROGRESS_EVERY_BATCHES": "1",
            "VISIONMESH_DEVICE": "cpu",
        },
    )
    await stack.start()
    # As under `make up`: a service that exits is restarted with backoff.
    supervisor = asyncio.create_task(stack.supervise(report=lambda line: print(line)))
    try:
        rest = f"http://127.0.0.1:{stack.ports.gateway_rest}"
        username = f"mesh-{uuid.uuid4().hex[:6]}"
        credentials = {"username": username, "password": "mesh-password-1"}
        async with httpx.AsyncClient(base_url=rest, timeout=60) as client:
            (await client.post("/v1/auth/signup", json=credentials)).raise_for_status()
            login = await client.post("/v1/auth/login", json=credentials)
            login.raise_for_status()
        yield Mesh(stack=stack, rest_url=rest, token=login.json()["accessToken"], tmp=tmp)
    finally:
        supervisor.cancel()
        await stack.stop()
