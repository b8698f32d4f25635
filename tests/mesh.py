"""The whole mesh as real processes (NATS, S3, gateway, worker services) for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
DETECT_TRAIN_SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 2,
    "imgsz": 64,
    "batch": 8,
    "seed": 0,
}
"""A detector trained in seconds: two epochs on 16 images (unsure of everything)."""


async def job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/jobs/{job_id}")).json()["job"])


async def finished(client: httpx.AsyncClient, job_id: str, within: float = 300) -> dict[str, Any]:
    """The job once it is SUCCEEDED, FAILED or CANCELLED."""
    from tests.gateway.helpers import wait_for

    async def done() -> bool:
        return (await job(client, job_id))["state"] in TERMINAL

    await wait_for(done, within=within, what=f"job {job_id} to finish")
    return await job(client, job_id)


async def train_detector(mesh: Mesh, *, name: str = "shapes") -> dict[str, Any]:
    """A detect model trained through the mesh on a synthetic dataset in `mesh.tmp`
    (`detect-data/`): the registry's model version."""
    from visionmesh.cli.synth import make_detect_dataset, zip_dataset

    from tests.gateway.helpers import upload_dataset

    root, archive = mesh.tmp / "detect-data", mesh.tmp / "detect.zip"
    make_detect_dataset(root, n_train=16, n_val=8, imgsz=64, seed=0)
    zip_dataset(root, archive)
    async with mesh.http() as client:
        uploaded = await upload_dataset(client, archive, name=name)
        assert uploaded["http_status"] == 200, uploaded
        created = await client.post(
            "/v1/training/jobs",
            json={
                "datasetId": uploaded["dataset"]["id"],
                "spec": DETECT_TRAIN_SPEC,
                "modelName": name,
            },
        )
        assert created.status_code == 200, created.text
        trained = await finished(client, created.json()["job"]["id"], within=420)
        assert trained["state"] == "JOB_STATE_SUCCEEDED", trained
        response = await client.get(f"/v1/model-versions/{trained['modelVersionId']}")
        return dict(response.json()["modelVersion"])


def box_iou(a: list[float], b: list[float]) -> float:
    """IoU of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
