"""The CLI end to end against a real in-process gateway (SQLite, NATS, SeaweedFS S3).

The gateway serves from the test's event loop, so every CLI invocation runs in a worker
thread (`asyncio.to_thread`) and the loop keeps answering it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.cli.app import app
from visionmesh.common.events import EventBus

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import ScriptedWorker, detect_zip, upload_dataset, wait_for
from tests.gateway.test_export_jobs import export_result, register_version, tenant_of, upload_files

# One backend keeps the suite quick; the gateway's own tests cover PostgreSQL.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

TRAIN_FLAGS = (
    "--framework", "ultralytics",
    "--task", "detect",
    "--model", "yolo11n.yaml",
    "--epochs", "3",
    "--imgsz", "64",
    "--batch", "4",
    "--seed", "0",
)  # fmt: skip
PASSWORD = "correct-horse-1"


class Cli:
    """Runs `visionmesh --gateway <harness> ...` in a thread."""

    def __init__(self, harness: GatewayHarness, runner: CliRunner) -> None:
        self.gateway = harness.rest_url
        self.runner = runner

    async def __call__(self, *args: str, input: str | None = None, gateway: bool = True) -> Result:
        argv = ["--gateway", self.gateway, *args] if gateway else list(args)
        return await asyncio.to_thread(self.runner.invoke, app, argv, input=input)

    def start(self, *args: str) -> asyncio.Task[Result]:
        return asyncio.create_task(self(*args))


@pytest.fixture
def cli(harness: GatewayHarness, runner: CliRunner) -> Cli:
    return Cli(harness, runner)


@pytest.fixture
async def token(harness: GatewayHarness, monkeypatch: pytest.MonkeyPatch) -> str:
    """Signs up and logs in over HTTP; the CLI picks the token up from VISIONMESH_TOKEN."""
    access = await harness.signup_and_login()
    monkeypatch.setenv("VISIONMESH_TOKEN", access)
    return access


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


async def test_signup_login_whoami_and_api_key(
    cli: Cli, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ok(await cli("signup", "--username", "ann", "--password", PASSWORD)).stdout
    assert "Created user ann (admin" in out

    bad = await cli("login", "-u", "ann", "-p", "wrong-password")
    assert bad.exit_code == 1 and "UNAUTHENTICATED" in bad.stderr
    assert not (config_dir / "credentials.json").exists()

    ok(await cli("login", "-u", "ann", input=f"{PASSWORD}\n"))  # password prompted
    credentials = config_dir / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    saved = json.loads(credentials.read_text())
    assert saved["currentGateway"] == cli.gateway
    assert saved["gateways"][cli.gateway]["token"].count(".") == 2  # a JWT

    # No --gateway: the last login's gateway and its token are used.
    me = json.loads(ok(await cli("whoami", "--json", gateway=False)).stdout)
    assert me["user"]["username"] == "ann" and me["credentialKind"] == "user"
    assert "admin" in ok(await cli("whoami")).stdout

    key = json.loads(ok(await cli("apikeys", "create", "ci", "--json")).stdout)
    monkeypatch.setenv("VISIONMESH_TOKEN", key["secret"])
    me = json.loads(ok(await cli("whoami", "--json")).stdout)
    assert me["credentialKind"] == "api_key" and me["user"]["username"] == "ann"

    monkeypatch.setenv("VISIONMESH_TOKEN", "vm_not-a-real-key")
    rejected = await cli("whoami")
    assert rejected.exit_code == 1 and "VISIONMESH_TOKEN was rejected" in rejected.stderr


async def test_upload_synthetic_dataset_and_broken_archive(
    cli: Cli, token: str, tmp_path: Path
) -> None:
    src = tmp_path / "shapes"
    ok(await cli("datasets", "synth", str(src), "--n-train", "6", "--n-val", "3", "--imgsz", "64"))
    # A folder is zipped on the fly.
    result = ok(await cli("datasets", "upload", str(src), "--name", "shapes"))
    out = result.stdout
    assert "is ready" in out and "yolo_detect" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["class"] == ["train", "val"]
    assert rows["images"] == ["6", "3"]
    labels = [line.split()[0] for line in (src / "labels" / "train").glob("*.txt") for line in
              line.read_text().splitlines()]  # fmt: skip
    assert rows["circle"][0] == str(labels.count("0"))
    assert "Uploading shapes.zip" in result.stderr

    datasets = json.loads(ok(await cli("datasets", "list", "--json")).stdout)["datasets"]
    assert [d["name"] for d in datasets] == ["shapes"]
    shown = json.loads(ok(await cli("datasets", "show", datasets[0]["id"], "--json")).stdout)
    assert shown["dataset"]["state"] == "DATASET_STATE_READY"
    assert int(shown["dataset"]["imageCount"]) == 9

    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("data.yaml", "names: [a]\ntrain: images/train\nval: images/val\n")
        archive.writestr("images/train/x.jpg", b"not an image")
        archive.writestr("images/val/y.jpg", b"not an image either")
    failed = await cli("datasets", "upload", str(broken), "--name", "broken")
    assert failed.exit_code == 1, failed.output
    assert "was rejected" in failed.stderr
    assert "images/train/x.jpg" in failed.stderr

    listing = ok(await cli("datasets", "list")).stdout
    assert "FAILED" in listing and "READY" in listing and "broken" in listing


async def _ready_dataset(harness: GatewayHarness, token: str) -> dict[str, Any]:
    async with harness.http(token) as client:
        result = await upload_dataset(client, detect_zip(harness.tmp))
    assert result["http_status"] == 200, result
    return dict(result["dataset"])


def _job_id(text: str) -> str:
    found = re.search(r"training job ([0-9a-f-]{36})", text)
    assert found, text
    return found.group(1)


async def test_train_list_and_cancel(
    cli: Cli, harness: GatewayHarness, token: str, tmp_path: Path
) -> None:
    dataset = await _ready_dataset(harness, token)
    created = ok(await cli("train", "--dataset", dataset["id"], *TRAIN_FLAGS))
    job_id = _job_id(created.stdout)
    assert re.search(r"\((PENDING|QUEUED)\)", created.stdout), created.stdout
    assert "yolo11n.yaml, 3 epochs at 64px" in created.stdout

    listing = ok(await cli("jobs", "list")).stdout
    assert job_id in listing and "training" in listing

    cancelled = ok(await cli("jobs", "cancel", job_id)).stdout
    assert "CANCELLED" in cancelled
    shown = json.loads(ok(await cli("jobs", "show", job_id, "--json")).stdout)
    assert shown["job"]["state"] == "JOB_STATE_CANCELLED"
    filtered = json.loads(ok(await cli("jobs", "list", "--state", "cancelled", "--json")).stdout)
    assert [j["id"] for j in filtered["jobs"]] == [job_id]
    assert "CANCELLED" in ok(await cli("jobs", "show", job_id)).stdout

    # The server's validation errors name the field.
    invalid = await cli("train", "--dataset", dataset["id"], *TRAIN_FLAGS, "--imgsz", "100")
    assert invalid.exit_code == 1 and "spec.imgsz" in invalid.stderr, invalid.output
    # Unknown YAML keys go to the server, which refuses them by name.
    spec = tmp_path / "spec.yaml"
    spec.write_text("framework: ultralytics\ntask: detect\nmodel: yolo11n.yaml\nepochz: 3\n")
    unknown = await cli("train", "--dataset", dataset["id"], "--spec", str(spec), "--imgsz", "64")
    assert unknown.exit_code == 1 and "epochz" in unknown.stderr, unknown.output
    assert len(json.loads(ok(await cli("jobs", "list", "--json")).stdout)["jobs"]) == 1

    # Training from a pinned snapshot.
    snapshot = json.loads(ok(await cli("datasets", "snapshot", dataset["id"], "--json")).stdout)
    snapshot_id = snapshot["snapshot"]["id"]
    pinned = ok(await cli("train", "--snapshot", snapshot_id, *TRAIN_FLAGS)).stdout
    assert f"on snapshot {snapshot_id}" in pinned


async def _queued_job(cli: Cli, harness: GatewayHarness, token: str, dataset_id: str) -> dict:
    created = ok(await cli("train", "--dataset", dataset_id, *TRAIN_FLAGS, "--json"))
    job = dict(json.loads(created.stdout)["job"])
    async with harness.http(token) as client:

        async def queued() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_QUEUED")

        await wait_for(queued, what="job QUEUED")
    return job


async def test_watch_a_scripted_run_then_download_its_checkpoint(
    cli: Cli, harness: GatewayHarness, bus: EventBus, token: str, tmp_path: Path
) -> None:
    dataset = await _ready_dataset(harness, token)
    job = await _queued_job(cli, harness, token, dataset["id"])
    watching = cli.start("jobs", "watch", job["id"])
    # Give the watcher time to connect, so that most events reach it live rather than
    # replayed (the output must be the same either way).
    await asyncio.sleep(0.3)

    worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
    await worker.state(job_pb2.JOB_STATE_RUNNING)
    for epoch in (1, 2, 3):
        await worker.emit(
            progress=job_pb2.JobProgress(
                epoch=epoch,
                total_epochs=3,
                fraction=epoch / 3,
                eta_seconds=10.0 * (3 - epoch),
                phase="train",
                losses={"box_loss": 2.0 / epoch},
                learning_rate=0.01,
            )
        )
        await worker.metrics(epoch, map50=0.25 * epoch, map50_95=0.125 * epoch)
    weights = b"checkpoint-bytes" * 4096
    key = f"jobs/{job['id']}/best.pt"
    await harness.gateway.store.put_bytes(key, weights)
    checkpoint = artifact_pb2.ArtifactRef(
        name="best.pt",
        kind="checkpoint",
        key=key,
        size_bytes=len(weights),
        sha256=hashlib.sha256(weights).hexdigest(),
        content_type="application/octet-stream",
    )
    await worker.emit(artifact=events_pb2.JobArtifactUploaded(artifact=checkpoint))
    await worker.emit(
        model_trained=events_pb2.ModelTrained(
            framework="ultralytics",
            task="detect",
            architecture="yolo11n.yaml",
            class_names=dataset["classNames"],
            imgsz=64,
            metrics={"map50": 0.75},
            checkpoint=checkpoint,
        )
    )
    await worker.state(job_pb2.JOB_STATE_SUCCEEDED, metrics={"map50": 0.75})

    result = await asyncio.wait_for(watching, timeout=30)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "state RUNNING" in out
    for epoch, line in ((1, "map50 0.25  map50_95 0.125"), (3, "map50 0.75  map50_95 0.375")):
        assert f"epoch {epoch}/3  {line}" in out, out
    assert "artifact best.pt (checkpoint, 65.5 KB)" in out
    assert "registered model version" in out
    assert "epoch 3/3" in out and "box_loss 0.6667" in out and "lr 0.01" in out
    assert f"Job {job['id']} SUCCEEDED" in out and "map50 0.75" in out

    history = ok(await cli("jobs", "metrics", job["id"])).stdout
    rows = [line.split() for line in history.splitlines() if line.strip()]
    assert rows[0] == ["EPOCH", "map50", "map50_95"]
    assert rows[-1] == ["3", "0.75", "0.375"]

    artifacts = json.loads(ok(await cli("artifacts", "list", job["id"], "--json")).stdout)
    [artifact] = artifacts["artifacts"]
    assert artifact["name"] == "best.pt" and artifact["sha256"] == checkpoint.sha256
    assert "best.pt" in ok(await cli("artifacts", "list", job["id"])).stdout
    downloaded = ok(await cli("artifacts", "download", artifact["id"], "-o", f"{tmp_path}/dl/"))
    assert (tmp_path / "dl" / "best.pt").read_bytes() == weights
    assert f"sha256 verified: {checkpoint.sha256}" in downloaded.stdout

    models = json.loads(ok(await cli("models", "list", "--json")).stdout)["models"]
    assert [m["name"] for m in models] == ["shapes-detect"]
    shown = ok(await cli("models", "show", models[0]["id"])).stdout
    assert "v1" in shown and "map50 0.75" in shown


async def test_watch_exits_1_with_the_reason_when_the_job_fails(
    cli: Cli, harness: GatewayHarness, bus: EventBus, token: str
) -> None:
    dataset = await _ready_dataset(harness, token)
    job = await _queued_job(cli, harness, token, dataset["id"])
    worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
    await worker.state(job_pb2.JOB_STATE_RUNNING)
    await worker.state(
        job_pb2.JOB_STATE_FAILED,
        error=job_pb2.JobError(reason="TRAINING_ERROR", message="CUDA out of memory"),
    )
    # Started after the end: the whole history is replayed, then the stream ends.
    result = await asyncio.wait_for(cli("jobs", "watch", job["id"]), timeout=30)
    assert result.exit_code == 1, result.output
    assert "TRAINING_ERROR: CUDA out of memory" in result.stderr
    assert f"Job {job['id']} FAILED" in result.stdout


async def test_export_a_model_version_watch_it_then_download_the_package(
    cli: Cli, harness: GatewayHarness, bus: EventBus, token: str, tmp_path: Path
) -> None:
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
    # No export service answers this gateway: TensorRT cannot be confirmed.
    refused = await cli("export", version_id, "--format", "tensorrt")
    assert refused.exit_code == 1, refused.output
    assert "FAILED_PRECONDITION" in refused.stderr and "spec.formats:" in refused.stderr

    created = json.loads(ok(await cli("export", version_id, "--opset", "13", "--json")).stdout)
    job = created["job"]
    assert job["spec"]["opset"] == 13 and job["spec"]["formats"] == ["onnx"]
    watching = cli.start("jobs", "watch", job["id"])
    await asyncio.sleep(0.3)
    result = export_result(job["id"], version_id)
    await upload_files(harness, result)
    worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
    await worker.state(job_pb2.JOB_STATE_RUNNING)
    await worker.emit(model_exported=events_pb2.ModelExported(result=result))
    await worker.state(job_pb2.JOB_STATE_SUCCEEDED)
    watched = await asyncio.wait_for(watching, timeout=30)
    assert watched.exit_code == 0, watched.output
    found = re.search(r"recorded export ([0-9a-f-]{36})", watched.stdout)
    assert found, watched.stdout
    export_id = found.group(1)
    assert f"Export: {export_id}" in watched.stdout

    shown = ok(await cli("exports", "get", export_id)).stdout
    assert version_id in shown and "triton.zip" in shown and "passed on 4 images" in shown
    package = ok(await cli("exports", "download", export_id, "-o", f"{tmp_path}/dl/"))
    zipped = result.triton_repository_zip
    assert (tmp_path / "dl" / "triton.zip").read_bytes() == zipped.key.encode()
    assert f"sha256 verified: {zipped.sha256}" in package.stdout
    ok(
        await cli(
            "exports", "download", export_id, "--file", "onnx", "-o", str(tmp_path / "m.onnx")
        )
    )
    assert (tmp_path / "m.onnx").read_bytes() == result.onnx.key.encode()
