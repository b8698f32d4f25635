"""CLI commands against a fake gateway (httpx.MockTransport): arguments, output, exit codes."""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result
from visionmesh.cli.app import Hooks, app

Handler = Callable[[httpx.Request], httpx.Response]


class FakeGateway:
    """Routes `METHOD path` to canned handlers and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[httpx.Request] = []

    def on(self, route: str, response: Handler | dict[str, Any]) -> None:
        self.routes[route] = response if callable(response) else (lambda _r: _json(response))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        handler = self.routes.get(key) or self.routes.get(f"{request.method} {request.url.host}")
        if handler is None:
            return httpx.Response(404, json={"code": 404, "status": "NOT_FOUND", "message": key})
        return handler(request)

    def invoke(self, runner: CliRunner, *args: str, input: str | None = None) -> Result:
        hooks = Hooks(transport=httpx.MockTransport(self), backoff_seconds=0)
        return runner.invoke(app, ["--gateway", "http://gw", *args], obj=hooks, input=input)

    def body(self, route: str) -> Any:
        method, path = route.split(" ", 1)
        for request in reversed(self.requests):
            if request.method == method and request.url.path == path:
                return json.loads(request.content)
        raise AssertionError(f"no {route} request")


def _json(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway()


def test_login_saves_a_private_token_that_later_commands_send(
    runner: CliRunner, gw: FakeGateway, config_dir: Path
) -> None:
    gw.on("POST /v1/auth/login", {"accessToken": "jwt-1", "expiresIn": "3600"})
    gw.on("GET /v1/me", {"user": {"username": "ann", "role": "ROLE_ADMIN"}, "tenant": {}})
    result = gw.invoke(runner, "login", "-u", "ann", "--password-stdin", input="pw-123456\n")
    assert result.exit_code == 0, result.output
    assert "Logged in to http://gw as ann" in result.stdout
    assert gw.body("POST /v1/auth/login") == {"username": "ann", "password": "pw-123456"}
    credentials = config_dir / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text())["gateways"]["http://gw"]["token"] == "jwt-1"

    result = gw.invoke(runner, "whoami")
    assert result.exit_code == 0, result.output
    assert "ann" in result.stdout and "admin" in result.stdout
    assert gw.requests[-1].headers["authorization"] == "Bearer jwt-1"

    assert gw.invoke(runner, "logout").exit_code == 0
    assert gw.invoke(runner, "whoami").exit_code == 0
    assert "authorization" not in gw.requests[-1].headers


def test_api_errors_print_every_field_and_exit_1(runner: CliRunner, gw: FakeGateway) -> None:
    gw.on(
        "POST /v1/training/jobs",
        lambda _r: _json(
            {
                "code": 400,
                "status": "INVALID_ARGUMENT",
                "message": "invalid training spec",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [
                            {"field": "spec.imgsz", "description": "must be a multiple of 32"},
                            {"field": "spec.epochs", "description": "must be greater than 0"},
                        ],
                    }
                ],
            },
            400,
        ),
    )
    result = gw.invoke(runner, "train", "--dataset", "d1", "--imgsz", "100", "--epochs", "0")
    assert result.exit_code == 1
    assert "invalid training spec" in result.stderr and "INVALID_ARGUMENT" in result.stderr
    assert "spec.imgsz: must be a multiple of 32" in result.stderr
    assert "spec.epochs: must be greater than 0" in result.stderr
    assert "Traceback" not in result.output


def test_unauthenticated_hints_at_login(runner: CliRunner, gw: FakeGateway) -> None:
    gw.on(
        "GET /v1/jobs",
        lambda _r: _json({"code": 401, "status": "UNAUTHENTICATED", "message": "no creds"}, 401),
    )
    result = gw.invoke(runner, "jobs", "list")
    assert result.exit_code == 1
    assert "not logged in to http://gw" in result.stderr and "visionmesh login" in result.stderr


def test_a_throttled_login_says_when_to_retry_and_saves_nothing(
    runner: CliRunner, gw: FakeGateway, config_dir: Path
) -> None:
    body = {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "message": "too many failed logins for this username; retry in 250s",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "LOGIN_THROTTLED",
                "metadata": {"retry_after_seconds": "250"},
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "250s"},
        ],
    }
    gw.on("POST /v1/auth/login", lambda _r: _json(body, 429))
    result = gw.invoke(runner, "login", "-u", "ann", "-p", "pw-123456")
    assert result.exit_code == 1
    assert "retry in 250s" in result.stderr and "RESOURCE_EXHAUSTED" in result.stderr
    assert len([r for r in gw.requests if r.url.path == "/v1/auth/login"]) == 1  # no retries
    assert not (config_dir / "credentials.json").exists()


def test_unreachable_gateway_is_reported_without_a_traceback(runner: CliRunner) -> None:
    hooks = Hooks(backoff_seconds=0)  # a real (refused) connection, retried without waiting
    result = runner.invoke(app, ["--gateway", "http://127.0.0.1:9", "whoami"], obj=hooks)
    assert result.exit_code == 1
    assert "cannot reach the gateway at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.output


def test_train_merges_yaml_and_flags_and_passes_unknown_keys_through(
    runner: CliRunner, gw: FakeGateway, tmp_path: Path
) -> None:
    gw.on(
        "POST /v1/training/jobs",
        lambda r: _json({"job": {"id": "j1", "state": "JOB_STATE_PENDING", "spec": {}}}),
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "framework: ultralytics\ntask: detect\nmodel: yolo11n.yaml\nepochs: 50\nimgsz: 640\n"
        "init_model_version_id: old\naugment: {fliplr: 0.5}\n"
        "data_loading: {numWorkers: 2}\nepochz: 3\n"
    )
    result = gw.invoke(
        runner,
        "train",
        "--snapshot", "s1",
        "--spec", str(spec),
        "--epochs", "3",
        "--lr0", "0.01",
        "--no-amp",
        "--init-model-version", "mv-2",
        "--augment", "mosaic=0",
        "--model-name", "shapes",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Created training job j1" in result.stdout and "PENDING" in result.stdout
    assert gw.body("POST /v1/training/jobs") == {
        "snapshotId": "s1",
        "modelName": "shapes",
        "spec": {
            "framework": "ultralytics",
            "task": "detect",
            "model": "yolo11n.yaml",
            "epochs": 3,
            "imgsz": 640,
            "lr0": 0.01,
            "amp": False,
            "initModelVersionId": "mv-2",
            "augment": {"fliplr": 0.5, "mosaic": 0.0},
            "data_loading": {"numWorkers": 2},
            "epochz": 3,
        },
    }


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--epochs", "3"],
        ["train", "--dataset", "d", "--snapshot", "s"],
        ["train", "--dataset", "d", "--augment", "mosaic"],
    ],
)
def test_train_argument_errors_are_usage_errors(
    runner: CliRunner, gw: FakeGateway, args: list[str]
) -> None:
    result = gw.invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert gw.requests == []


def test_jobs_list_maps_filters_and_prints_json(runner: CliRunner, gw: FakeGateway) -> None:
    job = {"id": "j1", "kind": "JOB_KIND_TRAINING", "state": "JOB_STATE_RUNNING"}
    gw.on("GET /v1/jobs", {"jobs": [job], "nextPageToken": ""})
    result = gw.invoke(runner, "jobs", "list", "--state", "running", "--kind", "training", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"jobs": [job]}
    params = gw.requests[-1].url.params
    assert params["state"] == "JOB_STATE_RUNNING" and params["kind"] == "JOB_KIND_TRAINING"
    table = gw.invoke(runner, "jobs", "list")
    assert "j1" in table.stdout and "RUNNING" in table.stdout and "training" in table.stdout


def _sse(*events: dict[str, Any]) -> bytes:
    frames = [
        f"id: {i}\nevent: message\ndata: {json.dumps({'sequence': str(i), **e})}\n\n"
        for i, e in enumerate(events, 1)
    ]
    return ("".join(frames) + "event: end\ndata: {}\n\n").encode()


def _state(state: str, **extra: Any) -> dict[str, Any]:
    return {"stateChange": {"state": f"JOB_STATE_{state}", **extra}, "job": {"id": "j1"}}


def _progress(epoch: int, total: int) -> dict[str, Any]:
    progress = {
        "epoch": epoch,
        "totalEpochs": total,
        "step": "0",
        "totalSteps": "0",
        "fraction": epoch / total,
        "etaSeconds": 30.0 * (total - epoch),
        "phase": "train",
        "losses": {"box_loss": 1.5 / epoch, "cls_loss": 0.8 / epoch},
        "learningRate": 0.001,
    }
    return {"progress": progress, "job": {"id": "j1", "progress": progress}}


def _metrics(epoch: int, **values: float) -> dict[str, Any]:
    points = [{"name": k, "value": v, "epoch": epoch} for k, v in values.items()]
    return {"metrics": {"points": points}, "job": {"id": "j1"}}


@pytest.mark.parametrize(
    ("final", "code"),
    [("SUCCEEDED", 0), ("FAILED", 1), ("CANCELLED", 2)],
)
def test_watch_renders_progress_and_exits_by_final_state(
    runner: CliRunner, gw: FakeGateway, final: str, code: int
) -> None:
    error = {"reason": "TRAINING_ERROR", "message": "CUDA out of memory"}
    events = [
        _state("QUEUED"),
        _state("RUNNING"),
        _progress(1, 2),
        _metrics(1, map50=0.25, map50_95=0.125),
        _progress(2, 2),
        _metrics(2, map50=0.5),
        _state(final, **({"error": error} if final == "FAILED" else {})),
    ]
    gw.on("GET /v1/jobs/j1/events", lambda _r: httpx.Response(200, content=_sse(*events)))
    job = {
        "id": "j1",
        "state": f"JOB_STATE_{final}",
        "metrics": {"map50": 0.5},
        "error": error if final == "FAILED" else {"reason": "", "message": ""},
    }
    gw.on("GET /v1/jobs/j1", {"job": job})
    result = gw.invoke(runner, "jobs", "watch", "j1")
    assert result.exit_code == code, result.output
    out = result.stdout
    assert "state RUNNING" in out
    assert "epoch 1/2  map50 0.25  map50_95 0.125" in out
    assert "epoch 2/2  map50 0.5" in out
    assert "box_loss 0.75" in out and "lr 0.001" in out  # the final bar
    assert f"Job j1 {final}" in out
    if final == "FAILED":
        assert "TRAINING_ERROR: CUDA out of memory" in result.stderr

    as_json = gw.invoke(runner, "jobs", "watch", "j1", "--json")
    assert as_json.exit_code == code
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [int(e["sequence"]) for e in lines] == list(range(1, len(events) + 1))


def test_artifact_download_refuses_a_corrupt_file(
    runner: CliRunner, gw: FakeGateway, tmp_path: Path
) -> None:
    artifact = {"id": "a1", "name": "../../best.pt", "sizeBytes": "4", "sha256": "0" * 64}
    gw.on("GET /v1/artifacts/a1:download", {"url": "http://s3/b/k", "artifact": artifact})
    gw.on("GET s3", lambda _r: httpx.Response(200, content=b"evil"))
    result = gw.invoke(runner, "artifacts", "download", "a1", "-o", f"{tmp_path}/")
    assert result.exit_code == 1
    assert "checksum mismatch" in result.stderr
    assert list(tmp_path.iterdir()) == []

    artifact["sha256"] = ""
    result = gw.invoke(runner, "artifacts", "download", "a1", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    # The server's name never picks the directory.
    assert (tmp_path / "best.pt").read_bytes() == b"evil"
    assert "not recorded by the server" in result.stdout


def test_synth_writes_a_folder_or_just_a_zip(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["datasets", "synth", str(tmp_path / "cls"), "--task", "classify", "--n-train", "2",
         "--n-val", "1", "--imgsz", "32", "--zip"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cls" / "train" / "circle").iterdir())) == 2
    assert zipfile.is_zipfile(tmp_path / "cls.zip")

    only_zip = tmp_path / "out" / "det.zip"
    result = runner.invoke(
        app,
        ["datasets", "synth", str(only_zip), "--n-train", "2", "--n-val", "1", "--imgsz", "32",
         "--zip", "--classes", "a,b"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in only_zip.parent.iterdir()) == ["det.zip"]
    with zipfile.ZipFile(only_zip) as archive:
        names = archive.namelist()
        assert "data.yaml" in names and "labels/train/00000.txt" in names
        assert "0: a" in archive.read("data.yaml").decode()


def test_a_corrupt_credentials_file_is_reported(
    runner: CliRunner, gw: FakeGateway, config_dir: Path
) -> None:
    config_dir.mkdir()
    (config_dir / "credentials.json").write_text("{not json")
    result = gw.invoke(runner, "whoami")
    assert result.exit_code == 1
    assert "cannot read" in result.stderr and "credentials.json" in result.stderr
    assert "Traceback" not in result.output
