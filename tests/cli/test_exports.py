"""`visionmesh export` and `visionmesh exports` against a fake gateway."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.cli.test_app import FakeGateway, _json, _sse, _state

CREATED = {
    "job": {
        "id": "j1",
        "kind": "JOB_KIND_EXPORT",
        "state": "JOB_STATE_PENDING",
        "modelVersionId": "mv1",
        "spec": {"formats": ["onnx", "tensorrt"], "opset": 17, "imgsz": 640},
    }
}


def _ref(name: str, content: bytes, artifact_id: str) -> dict[str, Any]:
    return {
        "id": artifact_id,
        "name": name,
        "key": f"jobs/j1/{name}",
        "sizeBytes": str(len(content)),
        "sha256": hashlib.sha256(content).hexdigest(),
    }


PACKAGE = b"zip-bytes" * 100
ONNX = b"onnx-bytes"
RESULT: dict[str, Any] = {
    "onnx": _ref("model.onnx", ONNX, "a-onnx"),
    "tritonRepositoryZip": _ref("triton.zip", PACKAGE, "a-zip"),
    "parityMaxAbsDiff": 2.5e-05,
    "parity": {"passed": True, "images": 4, "imageSource": "validation"},
    "tritonModels": [{"name": "shapes-v1", "platform": "onnxruntime_onnx"}],
}
EXPORT = {
    "export": {
        "id": "e1",
        "modelVersionId": "mv1",
        "jobId": "j1",
        "formats": ["onnx"],
        "createTime": "2026-11-29T20:00:00Z",
        "result": RESULT,
    }
}


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway()


def test_export_sends_only_the_flags_given(runner: CliRunner, gw: FakeGateway) -> None:
    gw.on("POST /v1/export/jobs", CREATED)
    result = gw.invoke(
        runner,
        "export", "mv1",
        "--format", "tensorrt",
        "-f", "onnx",
        "--format", "tensorrt",
        "--opset", "13",
        "--imgsz", "320",
        "--dynamic-batch",
        "--max-batch-size", "8",
        "--nms",
        "--half",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert gw.body("POST /v1/export/jobs") == {
        "modelVersionId": "mv1",
        "spec": {
            "formats": ["tensorrt", "onnx"],
            "opset": 13,
            "imgsz": 320,
            "maxBatchSize": 8,
            "dynamicBatch": True,
            "nms": True,
            "half": True,
        },
    }
    out = result.stdout
    assert "Created export job j1 (PENDING): onnx+tensorrt, opset 17 at 640px" in out
    assert "visionmesh jobs watch j1" in out

    plain = gw.invoke(runner, "export", "mv1", "--json")
    assert plain.exit_code == 0, plain.output
    assert gw.body("POST /v1/export/jobs") == {"modelVersionId": "mv1", "spec": {}}
    assert json.loads(plain.stdout) == CREATED


@pytest.mark.parametrize(
    "args",
    [["export"], ["export", "mv1", "--format", "tflite"], ["export", "mv1", "--imgsz", "0"]],
)
def test_export_argument_errors_are_usage_errors(
    runner: CliRunner, gw: FakeGateway, args: list[str]
) -> None:
    result = gw.invoke(runner, *args)
    assert result.exit_code == 2, result.output
    assert gw.requests == []


def test_export_refused_for_want_of_tensorrt_names_the_field(
    runner: CliRunner, gw: FakeGateway
) -> None:
    reason = "tensorrt is unavailable: no export service answered"
    body = {
        "code": 400,
        "status": "FAILED_PRECONDITION",
        "message": f"this deployment cannot export that: spec.formats: {reason}",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "FAILED_PRECONDITION"},
            {
                "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                "violations": [{"subject": "spec.formats", "description": reason}],
            },
        ],
    }
    gw.on("POST /v1/export/jobs", lambda _r: _json(body, 400))
    result = gw.invoke(runner, "export", "mv1", "--format", "tensorrt")
    assert result.exit_code == 1
    assert "FAILED_PRECONDITION" in result.stderr
    assert f"spec.formats: {reason}" in result.stderr


def test_export_watch_follows_the_job_and_names_the_export(
    runner: CliRunner, gw: FakeGateway
) -> None:
    gw.on("POST /v1/export/jobs", CREATED)
    events = [
        _state("QUEUED"),
        _state("RUNNING"),
        {"exportId": "e1", "job": {"id": "j1"}},
        _state("SUCCEEDED"),
    ]
    gw.on("GET /v1/jobs/j1/events", lambda _r: httpx.Response(200, content=_sse(*events)))
    job = {"id": "j1", "state": "JOB_STATE_SUCCEEDED", "modelVersionId": "mv1"}
    gw.on("GET /v1/jobs/j1", {"job": job})
    result = gw.invoke(runner, "export", "mv1", "--watch")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "recorded export e1" in out
    assert "Job j1 SUCCEEDED" in out
    assert "Export: e1 (download it with `visionmesh exports download e1 -o PATH`)" in out

    as_json = gw.invoke(runner, "export", "mv1", "--watch", "--json")
    assert as_json.exit_code == 0, as_json.output
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e.get("exportId") for e in lines] == [None, None, "e1", None]


def test_exports_get_shows_files_models_and_parity(runner: CliRunner, gw: FakeGateway) -> None:
    gw.on("GET /v1/exports/e1", EXPORT)
    result = gw.invoke(runner, "exports", "get", "e1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "mv1" in out and "j1" in out
    assert "passed on 4 validation images, max |diff| 2.5e-05" in out
    assert "shapes-v1 (onnxruntime_onnx)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["package"][1:2] == ["triton.zip"] and rows["package"][-1] == "a-zip"
    assert rows["onnx"][-1] == "a-onnx"
    assert "tensorrt" not in rows  # the export has no engine
    as_json = gw.invoke(runner, "exports", "get", "e1", "--json")
    assert json.loads(as_json.stdout) == EXPORT


def test_exports_download_the_package_or_one_file(
    runner: CliRunner, gw: FakeGateway, tmp_path: Path
) -> None:
    def url(request: httpx.Request) -> httpx.Response:
        file = request.url.params.get("file", "")
        ref = RESULT["onnx"] if file == "onnx" else RESULT["tritonRepositoryZip"]
        return _json({"url": f"http://s3/b/{ref['key']}", "expiresIn": "3600", "artifact": ref})

    gw.on("GET /v1/exports/e1:download", url)
    gw.on(
        "GET s3",
        lambda r: httpx.Response(200, content=ONNX if r.url.path.endswith(".onnx") else PACKAGE),
    )
    package = gw.invoke(runner, "exports", "download", "e1", "-o", f"{tmp_path}/")
    assert package.exit_code == 0, package.output
    assert gw.requests[0].url.params["file"] == "package"
    assert (tmp_path / "triton.zip").read_bytes() == PACKAGE
    assert "sha256 verified" in package.stdout

    onnx = gw.invoke(
        runner, "exports", "download", "e1", "--file", "onnx", "-o", str(tmp_path / "m.onnx")
    )
    assert onnx.exit_code == 0, onnx.output
    assert gw.requests[-2].url.params["file"] == "onnx"
    assert (tmp_path / "m.onnx").read_bytes() == ONNX

    bad = gw.invoke(runner, "exports", "download", "e1", "--file", "weights")
    assert bad.exit_code == 2
