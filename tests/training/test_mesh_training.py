"""Training through the running mesh: REST -> gateway -> NATS -> worker -> S3 -> events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from visionmesh.cli.synth import make_classify_dataset, make_detect_dataset, zip_dataset
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import AttemptLedger, AttemptRecord

from tests.gateway.helpers import upload_dataset, wait_for
from tests.training.conftest import Mesh

# Each test trains or exports through real processes; under `make test` two workers share the CPU.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(420)]

REFERENCE_SCRIPT = Path(__file__).parents[2] / "scripts" / "ultralytics_reference.py"

DETECT_SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 3,
    "imgsz": 64,
    "batch": 8,
    "seed": 0,
}
CLASSIFY_SPEC = {
    "framework": "torchvision",
    "task": "classify",
    "model": "resnet18",
    "epochs": 3,
    "imgsz": 64,
    "batch": 8,
    "seed": 0,
    "lr0": 0.01,
    "optimizer": "AdamW",
    "dataLoading": {"preload": True, "numWorkers": 0},
}
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


async def _dataset(mesh: Mesh, client: httpx.AsyncClient, task: str) -> dict[str, Any]:
    root = mesh.tmp / f"{task}-data"
    archive = mesh.tmp / f"{task}.zip"
    if not archive.exists():
        if task == "detect":
            make_detect_dataset(root, n_train=16, n_val=8, imgsz=64, seed=0)
        else:
            make_classify_dataset(root, n_per_class_train=12, n_per_class_val=6, imgsz=64, seed=0)
        zip_dataset(root, archive)
    result = await upload_dataset(client, archive, name=f"shapes-{task}")
    assert result["http_status"] == 200, result
    return dict(result["dataset"])


async def _events(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """Follows the SSE stream until the job ends."""
    events = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=600) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if event:
                    events.append(event)
    return events


async def _job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/jobs/{job_id}")).json()["job"])


async def _download(client: httpx.AsyncClient, artifact: dict[str, Any], dest: Path) -> Path:
    url = (await client.get(f"/v1/artifacts/{artifact['id']}:download")).json()["url"]
    async with httpx.AsyncClient(timeout=60) as s3:
        response = await s3.get(url)
        response.raise_for_status()
    await asyncio.to_thread(dest.write_bytes, response.content)
    return dest


async def test_detect_job_trains_streams_progress_and_registers_a_model(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "detect")
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": DETECT_SPEC}
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["id"]
        events = await _events(client, job_id)
        job = await _job(client, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        for name in ("map50", "map50_95", "precision", "recall"):
            assert name in job["metrics"]

        progress = [e["progress"] for e in events if "progress" in e]
        train = [p for p in progress if p.get("phase") == "train"]
        assert {p["epoch"] for p in train} == {1, 2, 3}
        assert all(p["totalEpochs"] == 3 for p in train)
        assert any(p.get("losses") for p in train) and any("etaSeconds" in p for p in train)
        epochs_with_metrics = {
            point["epoch"]
            for e in events
            if "metrics" in e
            for point in e["metrics"]["points"]
            if point["name"] == "map50"
        }
        assert epochs_with_metrics == {1, 2, 3}

        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        names = {a["name"]: a for a in artifacts}
        assert {"best.pt", "last.pt", "results.csv", "training_curves.png"} <= set(names)
        best = await _download(client, names["best.pt"], mesh.tmp / "detect-best.pt")
        csv = await _download(client, names["results.csv"], mesh.tmp / "results.csv")
        assert len(csv.read_text().strip().splitlines()) == 1 + 3  # header + one row per epoch

        from ultralytics import YOLO

        image = next((mesh.tmp / "detect-data" / "images" / "val").iterdir())
        model = YOLO(str(best))
        results = await asyncio.to_thread(model.predict, str(image), imgsz=64, verbose=False)
        assert len(results) == 1 and results[0].boxes is not None
        assert list(model.names.values()) == dataset["classNames"]

        version = (await client.get(f"/v1/model-versions/{job['modelVersionId']}")).json()
        version = version["modelVersion"]
        assert version["classNames"] == dataset["classNames"]
        assert version["imgsz"] == 64 and version["task"] == "detect"
        assert version["checkpoint"]["name"] == "best.pt"


async def test_classifier_job_learns_and_its_checkpoint_predicts(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "classify")
        created = await client.post(
            "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": CLASSIFY_SPEC}
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]["id"]
        await _events(client, job_id)
        job = await _job(client, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert set(job["metrics"]) >= {"top1", "top5"}
        assert job["metrics"]["top1"] > 1 / 3  # better than chance on 3 classes
        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        best = next(a for a in artifacts if a["name"] == "best.pt")
        path = await _download(client, best, mesh.tmp / "classify-best.pt")

    from PIL import Image
    from visionmesh.training.core import load_classifier, predict_classifier

    model, class_names, imgsz = load_classifier(path)
    assert class_names == dataset["classNames"] and imgsz == 64
    val_dir = mesh.tmp / "classify-data" / "val"
    images, labels = [], []
    for class_dir in sorted(val_dir.iterdir()):
        for file in sorted(class_dir.iterdir()):
            images.append(Image.open(file).convert("RGB"))
            labels.append(class_dir.name)
    probabilities = predict_classifier(model, images, imgsz=imgsz)
    predicted = [class_names[int(i)] for i in probabilities.argmax(dim=1)]
    accuracy = sum(p == label for p, label in zip(predicted, labels, strict=True))
    assert accuracy / len(labels) > 1 / 3


async def test_invalid_specs_are_refused_before_anything_is_queued(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "classify")
        before = (await client.get("/v1/jobs")).json()["jobs"]
        cases = {
            "spec.imgsz": {**CLASSIFY_SPEC, "imgsz": 100},
            "spec.epochs": {**CLASSIFY_SPEC, "epochs": -1},
            "spec.model": {**CLASSIFY_SPEC, "model": "resnet9000"},
            "spec.task": {**DETECT_SPEC},  # a detect task on a classification dataset
            "spec.data_loading.prefetch_factor": {
                **CLASSIFY_SPEC,
                "dataLoading": {"numWorkers": 0, "prefetchFactor": 2},
            },
        }
        for field, spec in cases.items():
            response = await client.post(
                "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": spec}
            )
            assert response.status_code == 400, (field, response.text)
            fields = [
                v["field"] for d in response.json()["details"] for v in d.get("fieldViolations", [])
            ]
            assert field in fields, (field, response.json())
        unknown = await client.post(
            "/v1/training/jobs",
            json={
                "datasetId": dataset["id"],
                "spec": {**CLASSIFY_SPEC, "dataLoading": {"turbo": 1}},
            },
        )
        assert unknown.status_code == 400 and "turbo" in unknown.text
        assert (await client.get("/v1/jobs")).json()["jobs"] == before


async def test_cancel_stops_a_running_job_at_a_batch_boundary(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "classify")
        spec = {**CLASSIFY_SPEC, "epochs": 200}
        job_id = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": spec})
        ).json()["job"]["id"]

        async def training() -> bool:
            job = await _job(client, job_id)
            return job["state"] == "JOB_STATE_RUNNING" and job["progress"].get("phase") == "train"

        await wait_for(training, within=180, what="the job to train")
        cancelled = (await client.post(f"/v1/jobs/{job_id}:cancel", json={})).json()["job"]
        assert cancelled["state"] == "JOB_STATE_CANCELLING"
        await _events(client, job_id)
        job = await _job(client, job_id)
        assert job["state"] == "JOB_STATE_CANCELLED"
        assert job["progress"].get("epoch", 0) < 200
        artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
        assert "last.pt" in {a["name"] for a in artifacts}
        assert not job.get("modelVersionId")


@pytest.mark.timeout(420)
async def test_killed_worker_job_resumes_from_its_checkpoint_on_a_new_worker(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "detect")
        spec = {**DETECT_SPEC, "epochs": 4}
        job_id = (
            await client.post(
                "/v1/training/jobs",
                json={"datasetId": dataset["id"], "spec": spec, "modelName": "resumed"},
            )
        ).json()["job"]["id"]

        async def epoch_three_training() -> bool:
            # Checkpoints upload while the next epoch trains, and epoch N+1's checkpoint
            # waits for epoch N's upload: once epoch 3 trains, epoch 1's is in the store.
            job = await _job(client, job_id)
            return int(job["progress"].get("epoch", 0)) >= 3 and job["progress"]["phase"] == "train"

        await wait_for(epoch_three_training, within=300, what="epoch 3 to start")
        training = mesh.stack.service("training")
        restarts = mesh.stack.restarts.get("training", 0)
        assert training.pid is not None
        os.kill(training.pid, signal.SIGKILL)
        # The supervisor (what `make up` runs) restarts it; the gateway serves meanwhile.
        await asyncio.sleep(0.5)
        assert (await client.get("/readyz")).status_code == 200
        await wait_for(
            lambda: _restarted(mesh, restarts), within=120, what="the supervisor to restart it"
        )
        await _events(client, job_id)
        job = await _job(client, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert job["attempts"] == 2
        record = await _attempt_record(mesh, job_id)
        assert record.crashes == 1  # a kill -9 spends one unit of the retry budget
        points = (await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "map50"})).json()
        epochs = [p["epoch"] for p in points["points"]]
        # Epoch 1 ran once, on the first worker; the second resumed from a checkpoint.
        assert epochs.count(1) == 1 and sorted(set(epochs)) == [1, 2, 3, 4]
        models = [
            m for m in (await client.get("/v1/models")).json()["models"] if m["name"] == "resumed"
        ]
        assert len(models) == 1
        model = (await client.get(f"/v1/models/{models[0]['id']}")).json()["model"]
        assert len(model["versions"]) == 1


async def _restarted(mesh: Mesh, before: int) -> bool:
    training = mesh.stack.service("training")
    return mesh.stack.restarts.get("training", 0) > before and training.running


async def _attempt_record(mesh: Mesh, job_id: str) -> AttemptRecord:
    async with EventBus(servers=mesh.stack.nats.url, name="test-ledger") as bus:
        record = await (await AttemptLedger.open(bus)).get(job_id)
    assert record is not None
    return record


def _relayout(root: Path, layout: str) -> None:
    """The synthetic detect dataset as other tools write it."""
    if layout == "data.yml":
        (root / "data.yaml").rename(root / "data.yml")
        return
    # Roboflow: split folders at the top, `../train/images` in the YAML.
    for split, folder in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            (root / folder).mkdir(exist_ok=True)
            (root / kind / split).rename(root / folder / kind)
    for kind in ("images", "labels"):
        (root / kind).rmdir()
    config = yaml.safe_load((root / "data.yaml").read_text())
    config.pop("path", None)
    config.update(train="../train/images", val="../valid/images")
    (root / "data.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("layout", ["data.yml", "roboflow"])
async def test_datasets_in_other_layouts_train_through_the_mesh(mesh: Mesh, layout: str) -> None:
    """The gateway and the worker read one resolved layout from the manifest: a data.yml
    (which once passed the gateway and failed in the worker) and a Roboflow export."""
    root = mesh.tmp / f"layout-{layout}"
    make_detect_dataset(root, n_train=8, n_val=4, imgsz=64, seed=0)
    _relayout(root, layout)
    archive = zip_dataset(root, mesh.tmp / f"layout-{layout}.zip")
    async with mesh.http() as client:
        result = await upload_dataset(client, archive, name=f"layout-{layout}")
        assert result["http_status"] == 200, result
        spec = {**DETECT_SPEC, "epochs": 1}
        job_id = (
            await client.post(
                "/v1/training/jobs", json={"datasetId": result["dataset"]["id"], "spec": spec}
            )
        ).json()["job"]["id"]
        await _events(client, job_id)
        job = await _job(client, job_id)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job


@pytest.mark.timeout(420)
async def test_sigterm_hands_the_job_back_without_spending_its_retry_budget(mesh: Mesh) -> None:
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "classify")
        spec = {**CLASSIFY_SPEC, "epochs": 6}
        job_id = (
            await client.post("/v1/training/jobs", json={"datasetId": dataset["id"], "spec": spec})
        ).json()["job"]["id"]

        async def epoch_two_training() -> bool:
            job = await _job(client, job_id)
            return int(job["progress"].get("epoch", 0)) >= 2 and job["progress"]["phase"] == "train"

        await wait_for(epoch_two_training, within=300, what="epoch 2 to start")
        training = mesh.stack.service("training")
        restarts = mesh.stack.restarts.get("training", 0)
        assert training.pid is not None
        os.kill(training.pid, signal.SIGTERM)
        await wait_for(lambda: _exited(training), within=60, what="a graceful exit")
        assert training.returncode == 0, training.log_tail()
        record = await _attempt_record(mesh, job_id)
        assert (record.state, record.hand_backs, record.crashes) == ("handed_back", 1, 0)
        await wait_for(
            lambda: _restarted(mesh, restarts), within=120, what="the supervisor to restart it"
        )
        await _events(client, job_id)
        job = await _job(client, job_id)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert job["attempts"] == 2
        points = (await client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "top1"})).json()
        assert sorted({p["epoch"] for p in points["points"]}) == [1, 2, 3, 4, 5, 6]
        record = await _attempt_record(mesh, job_id)
        assert (record.hand_backs, record.crashes) == (1, 0)  # no retry budget spent


async def _exited(process: Any) -> bool:
    return not process.running


@pytest.mark.timeout(420)
async def test_jobs_accepted_with_no_worker_all_run_and_a_fully_trained_one_finishes(
    mesh: Mesh,
) -> None:
    """Intake needs no live worker; and a job whose earlier attempt trained every epoch but
    died before finishing (final validation, upload, registration) finishes from its last
    checkpoint instead of failing "already trained all epochs", with one model version."""
    async with mesh.http() as client:
        dataset = await _dataset(mesh, client, "detect")
        spec = {**DETECT_SPEC, "epochs": 2}
        body = {"datasetId": dataset["id"], "spec": spec}
        first = (await client.post("/v1/training/jobs", json=body)).json()["job"]["id"]
        await _events(client, first)
        trained = await _job(client, first)
        assert trained["state"] == "JOB_STATE_SUCCEEDED", trained

        mesh.stack.held.add("training")
        try:
            await mesh.stack.service("training").stop()
            jobs = []
            for name in ("finished-before-crash", "queued-1", "queued-2"):
                created = await client.post("/v1/training/jobs", json={**body, "modelName": name})
                assert created.status_code == 200, created.text  # no 503: the outbox holds it
                jobs.append(created.json()["job"]["id"])
            # The first attempt of the first job "trained both epochs and died": its epoch
            # checkpoints are in the store, nothing else is.
            store = mesh.object_store()
            for name in ("last.pt", "best.pt"):
                data = await store.get_bytes(f"jobs/{first}/checkpoints/{name}")
                await store.put_bytes(f"jobs/{jobs[0]}/checkpoints/{name}", data)
            store.close()
            for job_id in jobs:
                assert (await _job(client, job_id))["state"] in {
                    "JOB_STATE_PENDING",
                    "JOB_STATE_QUEUED",
                }
        finally:
            mesh.stack.held.discard("training")
        await wait_for(lambda: _running(mesh), within=120, what="training to be back")
        finished = await _events(client, jobs[0])
        for job_id in jobs[1:]:
            await _events(client, job_id)
            assert (await _job(client, job_id))["state"] == "JOB_STATE_SUCCEEDED"
        job = await _job(client, jobs[0])
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        train_progress = [e for e in finished if e.get("progress", {}).get("phase") == "train"]
        assert train_progress == []  # nothing was trained again
        assert job["metrics"]["map50"] == pytest.approx(trained["metrics"]["map50"], abs=1e-3)
        models = [
            m
            for m in (await client.get("/v1/models")).json()["models"]
            if m["name"] == "finished-before-crash"
        ]
        model = (await client.get(f"/v1/models/{models[0]['id']}")).json()["model"]
        assert len(model["versions"]) == 1


async def _running(mesh: Mesh) -> bool:
    return mesh.stack.service("training").running


# Trains twice (mesh and reference); under `make test`'s two workers it shares the CPU.
@pytest.mark.timeout(420)
async def test_the_mesh_learns_exactly_what_ultralytics_learns_directly(mesh: Mesh) -> None:
    """Same data, spec and seed: a job's final metrics equal a plain Ultralytics run's.

    Tolerance 1e-6: YOLO training on the CPU is deterministic for a seed (same kernels,
    same single training thread in both processes), so the floats are identical; the
    margin only covers the float32 -> JSON -> double trip of reported metrics. The
    setting is one where the model really learns (mAP50 around 0.95), so equality of
    near-zero metrics cannot pass for parity.
    """
    spec = {
        **DETECT_SPEC,
        "epochs": 15,
        "imgsz": 96,
        "batch": 16,
        "optimizer": "SGD",
        "lr0": 0.05,
        "device": "cpu",
    }
    root = mesh.tmp / "parity-data"
    make_detect_dataset(root, n_train=128, n_val=32, imgsz=96, seed=0)
    archive = zip_dataset(root, mesh.tmp / "parity.zip")
    reference = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REFERENCE_SCRIPT),
        json.dumps(spec),
        str(root / "data.yaml"),
        str(mesh.tmp / "parity-direct"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "YOLO_CONFIG_DIR": str(mesh.tmp / "yolo-config")},
    )
    async with mesh.http() as client:
        result = await upload_dataset(client, archive, name="parity")
        assert result["http_status"] == 200, result
        job_id = (
            await client.post(
                "/v1/training/jobs", json={"datasetId": result["dataset"]["id"], "spec": spec}
            )
        ).json()["job"]["id"]
        await _events(client, job_id)
        job = await _job(client, job_id)
    stdout, _ = await reference.communicate()
    assert reference.returncode == 0
    direct = json.loads(stdout.decode().strip().splitlines()[-1])
    assert direct["arguments"]["optimizer"] == "SGD" and direct["arguments"]["lr0"] == 0.05
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["metrics"]["map50"] > 0.5, job["metrics"]
    # Ultralytics' metric keys, mapped here by hand, not by the platform's own mapping.
    ultralytics_names = {
        "map50": "metrics/mAP50(B)",
        "map50_95": "metrics/mAP50-95(B)",
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
    }
    for name, key in ultralytics_names.items():
        assert job["metrics"][name] == pytest.approx(direct["metrics"][key], abs=1e-6), name
