"""Export through the running mesh: train -> export -> download -> the ONNX predicts as the .pt."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.gateway.helpers import wait_for
from tests.mesh import Mesh, box_iou, finished, running_mesh, train_detector
from tests.mesh import job as get_job

# Each test trains or exports through real processes; under `make test` two workers share the CPU.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(420)]

REFERENCE_SCRIPT = Path(__file__).parents[2] / "scripts" / "onnx_predict_reference.py"
# A model trained for two epochs on 16 images is unsure of everything.
CONF = 0.001


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("export-mesh"), workers=("training", "export")
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def version(mesh: Mesh) -> dict[str, Any]:
    """A detect model trained through the mesh: the registry's model version."""
    return await train_detector(mesh)


async def _events(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    events = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=600) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:") and (event := json.loads(line.removeprefix("data:"))):
                events.append(event)
    return events


async def _export(client: httpx.AsyncClient, version_id: str, spec: dict[str, Any]) -> str:
    created = await client.post(
        "/v1/export/jobs", json={"modelVersionId": version_id, "spec": spec}
    )
    assert created.status_code == 200, created.text
    return str(created.json()["job"]["id"])


async def _fetch(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=60) as s3:
        response = await s3.get(url)
        response.raise_for_status()
        return response.content


@pytest.mark.timeout(900)
async def test_a_trained_model_exports_verified_and_its_onnx_predicts_as_the_pt(
    mesh: Mesh, version: dict[str, Any]
) -> None:
    async with mesh.http() as client:
        job_id = await _export(
            client, version["id"], {"dynamicBatch": True, "maxBatchSize": 4, "imgsz": 64}
        )
        events = await _events(client, job_id)
        job = await get_job(client, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        phases = [e["progress"].get("phase") for e in events if "progress" in e]
        for phase in ("load", "export", "parity", "package", "upload"):
            assert phase in phases
        assert job["metrics"]["parity_images"] == 8  # the model's own validation images
        assert job["metrics"]["parity_max_abs_diff"] < 1e-3
        export_id = next(e["exportId"] for e in events if "exportId" in e)

        listed = (await client.get(f"/v1/model-versions/{version['id']}")).json()["modelVersion"]
        assert [e["id"] for e in listed["exports"]] == [export_id]
        export = (await client.get(f"/v1/exports/{export_id}")).json()["export"]
        result = export["result"]
        assert result["parity"]["passed"] and result["parity"]["imageSource"] == "validation"
        assert result["metadata"]["classNames"] == version["classNames"]
        platforms = {m["name"]: m["platform"] for m in result["tritonModels"]}
        assert platforms["shapes-v1"] == "onnxruntime_onnx"
        assert set(platforms.values()) == {"onnxruntime_onnx", "python", "ensemble"}

        package = (await client.get(f"/v1/exports/{export_id}:download")).json()
        assert package["artifact"]["name"] == "triton.zip"
        archive = zipfile.ZipFile(io.BytesIO(await _fetch(package["url"])))
        assert "shapes-v1/config.pbtxt" in archive.namelist()
        assert "shapes-v1/1/model.onnx" in archive.namelist()
        config = archive.read("shapes-v1/config.pbtxt").decode()
        assert 'key: "metadata"' in config and "max_batch_size: 4" in config

        onnx_url = (await client.get(f"/v1/exports/{export_id}:download?file=onnx")).json()["url"]
        onnx_path = mesh.tmp / "exported.onnx"
        onnx_path.write_bytes(await _fetch(onnx_url))
        checkpoint = await client.get(f"/v1/artifacts/{version['checkpoint']['id']}:download")
        pt_path = mesh.tmp / "trained.pt"
        pt_path.write_bytes(await _fetch(checkpoint.json()["url"]))

    # The independent reference: Ultralytics' own predict on both files.
    images = mesh.tmp / "detect-data" / "images" / "val"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(REFERENCE_SCRIPT),
            str(pt_path),
            str(onnx_path),
            str(images),
            "64",
            str(CONF),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    reference = json.loads(run.stdout.strip().splitlines()[-1])
    compared = 0
    for name, pt_boxes in reference["pt"].items():
        free = list(reference["onnx"][name])
        for want in sorted(pt_boxes, key=lambda b: -b[4]):
            match = next(
                (
                    got
                    for got in free
                    if got[5] == want[5]
                    and box_iou(want, got) >= 0.99
                    and abs(want[4] - got[4]) <= 1e-3
                ),
                None,
            )
            # Only a box on the confidence threshold may fall on either side of it.
            assert match is not None or abs(want[4] - CONF) <= 1e-3, (name, want)
            if match is not None:
                free.remove(match)
                compared += 1
        assert all(abs(got[4] - CONF) <= 1e-3 for got in free), (name, free)
    assert compared > 0, "the trained model detected nothing to compare"


async def test_capabilities_come_from_the_export_service_and_tensorrt_is_refused(
    mesh: Mesh, version: dict[str, Any]
) -> None:
    async with mesh.http() as client:
        capabilities = (await client.get("/v1/export/capabilities")).json()
        formats = {f["name"]: f for f in capabilities["formats"]}
        assert formats["onnx"]["available"]
        assert not formats["tensorrt"]["available"]
        assert formats["tensorrt"]["unavailableReason"] in {
            "tensorrt is not installed",
            "no CUDA device",
        }
        before = (await client.get("/v1/jobs")).json().get("jobs", [])
        refused = await client.post(
            "/v1/export/jobs",
            json={"modelVersionId": version["id"], "spec": {"formats": ["tensorrt"]}},
        )
        assert refused.status_code == 400, refused.text
        assert "spec.formats" in refused.text
        assert formats["tensorrt"]["unavailableReason"] in refused.text
        assert (await client.get("/v1/jobs")).json().get("jobs", []) == before


@pytest.mark.timeout(600)
async def test_failed_parity_and_cancel_leave_no_package(
    mesh: Mesh, version: dict[str, Any]
) -> None:
    async with mesh.http() as client:
        # Zero tolerance: ONNX Runtime and PyTorch differ in the last float bits.
        failing = await _export(client, version["id"], {"parity": {"atol": 0, "rtol": 0}})
        job = await finished(client, failing)
        assert job["state"] == "JOB_STATE_FAILED", job
        assert job["error"]["reason"] == "PARITY_FAILED"
        assert "output0: max |diff|" in job["error"]["message"]

        cancelled = await _export(client, version["id"], {})

        async def running() -> bool:
            return (await get_job(client, cancelled))["state"] == "JOB_STATE_RUNNING"

        await wait_for(running, within=120, what="the export to start")
        (await client.post(f"/v1/jobs/{cancelled}:cancel", json={})).raise_for_status()
        job = await finished(client, cancelled)
        assert job["state"] == "JOB_STATE_CANCELLED", job
        for job_id in (failing, cancelled):
            artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
            assert artifacts == []
        store = mesh.object_store()
        try:
            for job_id in (failing, cancelled):
                assert await store.list(f"jobs/{job_id}/") == []
        finally:
            store.close()


@pytest.mark.timeout(600)
async def test_a_killed_export_worker_is_redelivered_without_duplicates(
    mesh: Mesh, version: dict[str, Any]
) -> None:
    async with mesh.http() as client:
        job_id = await _export(client, version["id"], {"nms": True})

        async def exporting() -> bool:
            job = await get_job(client, job_id)
            return job["progress"].get("phase") in {"export", "parity", "package", "upload"}

        await wait_for(exporting, within=180, what="the export to start exporting")
        worker = mesh.stack.service("export")
        restarts = mesh.stack.restarts.get("export", 0)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)

        async def restarted() -> bool:
            return (
                mesh.stack.restarts.get("export", 0) > restarts
                and mesh.stack.service("export").running
            )

        await wait_for(restarted, within=120, what="the supervisor to restart the export service")
        job = await finished(client, job_id, within=400)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert job["attempts"] == 2
        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        names = [a["name"] for a in artifacts]
        assert len(names) == len(set(names)) and "model.onnx" in names
        listed = (await client.get(f"/v1/model-versions/{version['id']}")).json()["modelVersion"]
        assert [e["jobId"] for e in listed["exports"]].count(job_id) == 1
        store = mesh.object_store()
        try:
            keys = [info.key for info in await store.list(f"jobs/{job_id}/")]
        finally:
            store.close()
        assert sorted(keys) == sorted(f"jobs/{job_id}/{name}" for name in names)
