"""Serving through the running mesh: train -> export -> deploy -> predict (REST, uploads,
KServe for Triton clients) and batch jobs, with the inference service as a real process."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from tests.embedding.env import DINOV2, save_dinov2
from tests.gateway.helpers import upload_dataset, wait_for
from tests.mesh import Mesh, box_iou, finished, running_mesh, train_detector

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(420)]

REFERENCE_SCRIPT = Path(__file__).parents[2] / "scripts" / "ultralytics_predict_reference.py"
# A model trained for two epochs on 16 images is unsure of everything.
CONF = 0.001


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    tmp = tmp_path_factory.mktemp("inference-mesh")
    # The embedding service reads DINOv2 from <data dir>/models/dinov2: a tiny random one.
    save_dinov2(tmp / "state" / "models" / "dinov2")
    async with running_mesh(
        tmp, workers=("training", "export", "inference", "embedding")
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployed(mesh: Mesh) -> dict[str, Any]:
    """A detect model trained and exported through the mesh, deployed as "shapes"."""
    version_id = (await train_detector(mesh))["id"]
    async with mesh.http() as client:
        created = await client.post(
            "/v1/export/jobs",
            json={"modelVersionId": version_id, "spec": {"dynamicBatch": True, "maxBatchSize": 4}},
        )
        assert created.status_code == 200, created.text
        exported = await finished(client, created.json()["job"]["id"])
        assert exported["state"] == "JOB_STATE_SUCCEEDED", exported

        deploy = await client.post(
            "/v1/deployments", json={"name": "shapes", "modelVersionId": version_id}
        )
        assert deploy.status_code == 200, deploy.text
        assert deploy.json()["deployment"]["state"] in (
            "DEPLOYMENT_STATE_LOADING",
            "DEPLOYMENT_STATE_READY",
        )

        async def ready() -> bool:
            state = (await client.get("/v1/deployments/shapes")).json()["deployment"]["state"]
            assert state != "DEPLOYMENT_STATE_FAILED"
            return bool(state == "DEPLOYMENT_STATE_READY")

        await wait_for(ready, within=120)
        version = (await client.get(f"/v1/model-versions/{version_id}")).json()["modelVersion"]
        checkpoint = await client.get(f"/v1/artifacts/{version['checkpoint']['id']}:download")
        async with httpx.AsyncClient(timeout=60) as s3:
            pt = (await s3.get(checkpoint.json()["url"])).content
    (mesh.tmp / "trained.pt").write_bytes(pt)
    return {"version_id": version_id, "export_job_id": exported["id"]}


def _boxes(result: dict[str, Any]) -> list[list[float]]:
    return [
        [
            d["box"].get("x1", 0.0),
            d["box"].get("y1", 0.0),
            d["box"].get("x2", 0.0),
            d["box"].get("y2", 0.0),
            d.get("score", 0.0),
            float(d.get("classId", 0)),
        ]
        for d in result.get("detections", [])
    ]


def _assert_same_detections(want: list[list[float]], got: list[list[float]]) -> int:
    free = list(got)
    matched = 0
    for box in sorted(want, key=lambda b: -b[4]):
        match = next(
            (
                g
                for g in free
                if g[5] == box[5] and box_iou(box, g) >= 0.99 and abs(box[4] - g[4]) <= 1e-3
            ),
            None,
        )
        # Only a box on the confidence threshold may fall on either side of it.
        assert match is not None or abs(box[4] - CONF) <= 1e-3, box
        if match is not None:
            free.remove(match)
            matched += 1
    assert all(abs(g[4] - CONF) <= 1e-3 for g in free), free
    return matched


async def test_predict_over_rest_equals_ultralytics_on_the_pt(
    mesh: Mesh, deployed: dict[str, Any]
) -> None:
    images = sorted((mesh.tmp / "detect-data" / "images" / "val").iterdir())[:3]
    async with mesh.http() as client:
        as_json = await client.post(
            "/v1/deployments/shapes:predict",
            json={
                "images": [{"data": base64.b64encode(p.read_bytes()).decode()} for p in images],
                "options": {"conf": CONF},
            },
        )
        assert as_json.status_code == 200, as_json.text
        body = as_json.json()
        assert body["task"] == "detect" and body["modelVersionId"] == deployed["version_id"]
        assert set(body["timing"]) >= {"preprocessMs", "inferenceMs", "postprocessMs"}
        # The same images as a browser or curl sends them: a multipart upload.
        as_files = await client.post(
            "/v1/deployments/shapes:predict",
            files=[("image", (p.name, p.read_bytes(), "image/png")) for p in images],
            data={"conf": str(CONF)},
        )
        assert as_files.status_code == 200, as_files.text
        assert [_boxes(r) for r in as_files.json()["results"]] == [
            _boxes(r) for r in body["results"]
        ]
        # An undecodable image is named, and the others are still answered.
        mixed = await client.post(
            "/v1/deployments/shapes:predict",
            json={
                "images": [
                    {"data": base64.b64encode(images[0].read_bytes()).decode()},
                    {"data": base64.b64encode(b"not an image").decode()},
                ]
            },
        )
        assert mixed.status_code == 200, mixed.text
        assert mixed.json()["results"][1]["error"]["field"] == "images[1].data"
        missing = await client.post(
            "/v1/deployments/nope:predict", json={"images": [{"data": "aGk="}]}
        )
        assert missing.status_code == 404, missing.text

    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(REFERENCE_SCRIPT),
            str(mesh.tmp / "trained.pt"),
            str(images[0].parent),
            "64",
            str(CONF),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    reference = json.loads(run.stdout.strip().splitlines()[-1])["images"]
    compared = sum(
        _assert_same_detections(reference[path.name]["boxes"], _boxes(result))
        for path, result in zip(images, body["results"], strict=True)
    )
    assert compared > 0, "the trained model detected nothing to compare"


async def test_triton_clients_reach_the_deployment_with_an_issued_token(
    mesh: Mesh, deployed: dict[str, Any]
) -> None:
    import tritonclient.http.aio as httpclient
    from tritonclient.utils import InferenceServerException

    async with mesh.http() as client:
        issued = await client.post("/v1/auth/service-tokens", json={"audience": "inference"})
        assert issued.status_code == 200, issued.text
        headers = {"authorization": f"Bearer {issued.json()['token']}"}
        key = await client.post("/v1/apikeys", json={"name": "triton-client"})
        assert key.status_code == 200, key.text
        created_key = key.json()
    triton = httpclient.InferenceServerClient(f"127.0.0.1:{mesh.stack.ports.kserve_http}")
    try:
        assert await triton.is_server_live()
        assert await triton.is_model_ready("shapes", headers=headers)
        metadata = await triton.get_model_metadata("shapes", headers=headers)
        assert [i["name"] for i in metadata["inputs"]] == ["images"]
        batch = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        result = await triton.infer("shapes", [tensor], headers=headers)
        assert result.as_numpy("output0").shape[0] == 2
        # Without the token nothing is served.
        assert not await triton.is_model_ready("shapes")
        with pytest.raises(InferenceServerException):
            await triton.get_model_metadata("shapes")
        # What users already hold works too: an API key, or the token from login (the
        # gateway vouches for them); a revoked key stops working.
        api_key = {"authorization": f"Bearer {created_key['secret']}"}
        login = {"authorization": f"Bearer {mesh.token}"}
        for credentials in (api_key, login):
            assert await triton.is_model_ready("shapes", headers=credentials)
        with pytest.raises(InferenceServerException):
            await triton.get_model_metadata("shapes", headers={"authorization": "Bearer vm_nope"})
    finally:
        await triton.close()


async def test_a_batch_job_pages_its_results_and_survives_a_killed_service(
    mesh: Mesh, deployed: dict[str, Any]
) -> None:
    images = sorted((mesh.tmp / "detect-data" / "images" / "val").iterdir())[:4]
    async with mesh.http() as client:
        names = [p.name for p in images] + ["corrupt.jpg"]
        upload = await client.post("/v1/batch-inference/uploads", json={"fileNames": names})
        assert upload.status_code == 200, upload.text
        async with httpx.AsyncClient(timeout=60) as s3:
            for entry in upload.json()["uploads"]:
                data = (
                    b"definitely not a jpeg"
                    if entry["fileName"] == "corrupt.jpg"
                    else (images[0].parent / entry["fileName"]).read_bytes()
                )
                (await s3.put(entry["url"], content=data)).raise_for_status()
        created = await client.post(
            "/v1/batch-inference/jobs",
            json={
                "spec": {
                    "deployment": "shapes",
                    "inputPrefix": upload.json()["inputPrefix"],
                    "options": {"conf": CONF},
                }
            },
        )
        assert created.status_code == 200, created.text
        job = await finished(client, created.json()["job"]["id"])
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        # The job's status and its results are two routes, both readable.
        assert (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["id"] == job["id"]
        results: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await client.get(
                f"/v1/batch-inference/jobs/{job['id']}/results",
                params={"pageSize": 2, "pageToken": token},
            )
            assert page.status_code == 200, page.text
            results += page.json().get("results", [])
            token = page.json().get("nextPageToken", "")
            if not token:
                break
        keys = [r["key"].rsplit("/", 1)[-1] for r in results]
        assert keys == sorted(names)
        errors = [r for r in results if "error" in r]
        assert [e["key"].rsplit("/", 1)[-1] for e in errors] == ["corrupt.jpg"]
        artifacts = (await client.get(f"/v1/jobs/{job['id']}/artifacts")).json()["artifacts"]
        assert {"coco.json"} <= {a["name"].rsplit("/", 1)[-1] for a in artifacts}

        # A model version runs too, without a deployment: its export is loaded for the job.
        by_version = await client.post(
            "/v1/batch-inference/jobs",
            json={
                "spec": {
                    "modelVersionId": deployed["version_id"],
                    "inputPrefix": upload.json()["inputPrefix"],
                    "options": {"conf": CONF},
                }
            },
        )
        assert by_version.status_code == 200, by_version.text
        second = await finished(client, by_version.json()["job"]["id"])
        assert second["state"] == "JOB_STATE_SUCCEEDED", second
        page = await client.get(
            f"/v1/batch-inference/jobs/{second['id']}/results", params={"pageSize": 100}
        )
        assert [_boxes(r) for r in page.json()["results"]] == [_boxes(r) for r in results]

        # kill -9: the supervisor restarts the service, which reloads its deployments from SQL.
        inference = mesh.stack.service("inference")
        old_pid = inference.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)

        async def serving_again() -> bool:
            if inference.pid in (None, old_pid):
                return False
            response = await client.get("/v1/deployments/shapes")
            return bool(
                response.status_code == 200
                and response.json()["deployment"]["state"] == "DEPLOYMENT_STATE_READY"
            )

        await wait_for(serving_again, within=180)
        again = await client.post(
            "/v1/deployments/shapes:predict",
            files=[("image", (images[0].name, images[0].read_bytes(), "image/png"))],
        )
        assert again.status_code == 200, again.text


async def test_a_catalogue_is_embedded_by_a_job_searched_and_matched_in_scenes(
    mesh: Mesh, deployed: dict[str, Any]
) -> None:
    """Catalogue dataset -> embedding job (metadata filter) -> typed result -> search with a
    filter -> scene matching through the deployed detector (embedding -> inference)."""
    from visionmesh.cli.synth import make_catalog_dataset, zip_dataset

    catalog = make_catalog_dataset(mesh.tmp / "shop", n_products=8, renders=2, imgsz=64, seed=0)
    archive = zip_dataset(catalog.root, mesh.tmp / "shop.zip")
    acme = [p for p in catalog.products if p.metadata["brand"] == "acme"]
    async with mesh.http() as client:
        uploaded = await upload_dataset(client, archive, name="shop")
        assert uploaded["http_status"] == 200, uploaded
        dataset = uploaded["dataset"]
        assert dataset["format"] == "DATASET_FORMAT_CATALOG" and int(dataset["productCount"]) == 8
        created = await client.post(
            "/v1/embedding/jobs",
            json={
                "spec": {
                    "model": DINOV2,
                    "metadataFilter": {
                        "datasetId": dataset["id"],
                        "filter": {"conditions": [{"key": "brand", "stringValue": "acme"}]},
                    },
                    "routing": {"defaultCollection": "products", "createMissing": True},
                }
            },
        )
        assert created.status_code == 200, created.text
        job = await finished(client, created.json()["job"]["id"])
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        result = job["result"]
        assert result["@type"].endswith("visionmesh.embedding.v1.EmbeddingJobResult")
        embedded = sum(len(p.images) for p in acme)
        assert int(result["imagesEmbedded"]) == embedded
        assert result["collections"] == [{"collection": "products", "points": str(embedded)}]

        query = (catalog.root / acme[0].images[0]).read_bytes()
        found = await client.post(
            "/v1/collections/products:search",
            json={
                "image": {"data": base64.b64encode(query).decode()},
                "topK": 3,
                "filter": {"conditions": [{"key": "brand", "stringValue": "acme"}]},
            },
        )
        assert found.status_code == 200, found.text
        points = found.json()["points"]
        assert points[0]["productId"] == acme[0].id
        assert all(p["payload"]["brand"] == "acme" for p in points)

        scene = (mesh.tmp / "detect-data" / "images" / "val").iterdir().__next__().read_bytes()
        matched = await client.post(
            "/v1/collections/products:match",
            json={
                "images": [{"data": base64.b64encode(scene).decode()}],
                "detectorDeployment": "shapes",
                "detectorOptions": {"conf": CONF, "maxDet": 3},
                "topK": 1,
            },
        )
        assert matched.status_code == 200, matched.text
        objects = matched.json()["results"][0]["objects"]
        assert 1 <= len(objects) <= 3
        assert all(o["detection"]["box"] and o["products"] for o in objects)
