"""`deploy`, `deployments`, `predict` and `batch`: their pure parts (options, drawing, inputs)
directly, and the commands end to end against a real in-process gateway in front of the
real inference service and its batch worker (tests/gateway/served_inference.py)."""

from __future__ import annotations

import asyncio
import json
import zipfile
from pathlib import Path

import pytest
import typer
from google.protobuf import json_format
from PIL import Image
from typer.testing import CliRunner, Result
from visionmesh.cli.app import app
from visionmesh.cli.commands.inference import (
    batch_inputs,
    draw_results,
    predict_options,
    save_paths,
)
from visionmesh.common.events import EventBus

from tests.gateway.served_inference import (
    InferenceHarness,
    batch_worker,
    exported_version,
    predict_request,
    without_timing,
)
from tests.gateway.test_export_jobs import tenant_of

# -- pure parts --------------------------------------------------------------------------------


def test_predict_options_are_the_contracts_form_fields() -> None:
    assert predict_options() == {}
    assert predict_options(
        conf=0.25, iou=0.5, max_det=10, top_k=3, classes=" 0, 2,", agnostic=True, imgsz=320
    ) == {
        "conf": "0.25",
        "iou": "0.5",
        "max_det": "10",
        "top_k": "3",
        "classes": "0,2",
        "agnostic": "true",
        "imgsz": "320",
    }
    with pytest.raises(typer.BadParameter):
        predict_options(classes="0,cat")


def test_save_paths_for_one_image_or_a_directory(tmp_path: Path) -> None:
    a, b = Path("x/a.jpg"), Path("y/a.jpg")
    assert save_paths([a], tmp_path / "out.png") == [tmp_path / "out.png"]
    assert save_paths([a], tmp_path) == [tmp_path / "a.jpg"]
    assert save_paths([a, Path("b.png")], tmp_path / "drawn") == [
        tmp_path / "drawn" / "a.jpg",
        tmp_path / "drawn" / "b.png",
    ]
    # Two images of one name do not overwrite each other.
    assert save_paths([a, b], tmp_path) == [tmp_path / "000-a.jpg", tmp_path / "001-a.jpg"]


def test_boxes_and_labels_are_drawn_where_the_detections_are() -> None:
    image = Image.new("RGB", (200, 120), (255, 255, 255))
    result = {
        "detections": [
            {
                "classId": 0,
                "className": "circle",
                "score": 0.9,
                "box": {"x1": 40, "y1": 50, "x2": 120, "y2": 100},
            }
        ]
    }
    drawn = draw_results(image, result)
    assert drawn.size == image.size and image.getpixel((40, 75)) == (255, 255, 255)
    assert drawn.getpixel((40, 75)) == (255, 56, 56)  # left edge, class 0's colour
    assert drawn.getpixel((120, 100)) == (255, 56, 56)  # bottom-right corner
    assert drawn.getpixel((80, 75)) == (255, 255, 255)  # inside stays as it was
    label_area = [drawn.getpixel((x, y)) for x in range(40, 90) for y in range(38, 50)]
    assert (255, 56, 56) in label_area and (255, 255, 255) in label_area  # text on its colour
    # A box at the top edge keeps its label inside the image.
    top = draw_results(
        image,
        {
            "detections": [
                {**result["detections"][0], "box": {"x1": 5, "y1": 0, "x2": 60, "y2": 40}}
            ]
        },
    )
    assert (255, 56, 56) in [top.getpixel((x, 5)) for x in range(6, 40)]
    # Mask outlines of segment models.
    polygon = [{"x": 150, "y": 10}, {"x": 190, "y": 10}, {"x": 190, "y": 40}]
    segmented = draw_results(
        image,
        {
            "detections": [
                {
                    "classId": 2,
                    "score": 0.5,
                    "box": {"x1": 150, "y1": 10, "x2": 190, "y2": 40},
                    "polygon": polygon,
                }
            ]
        },
    )
    assert segmented.getpixel((170, 25)) == (40, 180, 70)  # on the polygon's diagonal edge
    # A classifier's top classes are written in the corner.
    classified = draw_results(image, {"classifications": [{"className": "cat", "score": 0.8}]})
    assert any(classified.getpixel((x, y)) != (255, 255, 255) for x in range(40) for y in range(12))


def test_batch_inputs_from_a_folder_or_a_zip(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.relative_to(folder).as_posix() for p in batch_inputs(folder)] == [
        "a.png",
        "b.JPG",
        "sub/c.webp",
    ]
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("a.png", b"x")
    assert batch_inputs(archive) == [archive]
    with pytest.raises(typer.BadParameter):
        batch_inputs(folder / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(typer.BadParameter):
        batch_inputs(tmp_path / "empty")


# -- end to end ----------------------------------------------------------------------------------

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Cli:
    def __init__(self, gateway: str, runner: CliRunner) -> None:
        self.gateway = gateway
        self.runner = runner

    async def __call__(self, *args: str) -> Result:
        return await asyncio.to_thread(self.runner.invoke, app, ["--gateway", self.gateway, *args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}"
    return result


def _png(path: Path, colour: tuple[int, int, int] = (200, 200, 200)) -> Path:
    Image.new("RGB", (32, 24), colour).save(path)
    return path


@sqlite_only
async def test_deploy_predict_and_manage_deployments(
    served: InferenceHarness, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    monkeypatch.setenv("VISIONMESH_TOKEN", token)
    version_id, export_jobs = await exported_version(served, token)
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
    cli = Cli(harness.rest_url, runner)

    out = ok(await cli("deploy", version_id, "--name", "dets", "--wait")).stdout
    assert "READY" in out and export_jobs[-1] in out
    row = await served.service.store.get(tenant_id, "dets")
    assert row is not None and row.export_job_id == export_jobs[-1]
    listed = json.loads(ok(await cli("deployments", "list", "--json")).stdout)
    assert [d["name"] for d in listed["deployments"]] == ["dets"]
    assert listed["deployments"][0]["state"] == "DEPLOYMENT_STATE_READY"
    assert "dets" in ok(await cli("deployments", "get", "dets")).stdout

    images = [_png(tmp_path / "one.png"), _png(tmp_path / "two.png", (10, 10, 10))]
    predicted = ok(
        await cli(
            "predict", "dets", *map(str, images),
            "--conf", "0.3", "--classes", "2,59", "--max-det", "2",
            "--save", str(tmp_path / "drawn"),
        )
    ).stdout  # fmt: skip
    # What the service answers itself for these files and options, row by row.
    direct = await served.direct(
        tenant_id,
        "predict",
        predict_request(
            "dets", *(p.read_bytes() for p in images), conf=0.3, classes=[2, 59], max_det=2
        ),
    )
    assert [len(r.detections) for r in direct.results] == [2, 2]
    rows = [r for r in map(str.split, predicted.splitlines()) if r and r[0].endswith(".png")]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (image.name, d.class_name, f"{d.score:.3f}")
        for image, result in zip(images, direct.results, strict=True)
        for d in result.detections
    ]
    for image, result in zip(images, direct.results, strict=True):
        with Image.open(image) as original, Image.open(tmp_path / "drawn" / image.name) as drawn:
            expected = draw_results(original.convert("RGB"), json_format.MessageToDict(result))
            assert drawn.tobytes() == expected.tobytes() != original.convert("RGB").tobytes()
    as_json = json.loads(
        ok(await cli("predict", "dets", str(images[0]), "--conf", "0.3", "--json")).stdout
    )
    alone = await served.direct(
        tenant_id, "predict", predict_request("dets", images[0].read_bytes(), conf=0.3)
    )
    assert without_timing(as_json) == without_timing(alone)

    missing = await cli("predict", "nope", str(images[0]))
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
    ok(await cli("deployments", "delete", "dets"))
    assert json.loads(ok(await cli("deployments", "list", "--json")).stdout)["deployments"] == []
    assert await served.service.store.get(tenant_id, "dets") is None


@sqlite_only
async def test_batch_uploads_runs_and_writes_the_results(
    served: InferenceHarness,
    runner: CliRunner,
    bus: EventBus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    monkeypatch.setenv("VISIONMESH_TOKEN", token)
    version_id, export_jobs = await exported_version(served, token)
    cli = Cli(harness.rest_url, runner)
    ok(await cli("deploy", version_id, "--name", "dets", "--wait"))
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    inputs = [_png(folder / "a.png"), _png(folder / "sub" / "b.png", (1, 2, 3))]

    out = ok(await cli("batch", "dets", str(folder), "--conf", "0.2")).stdout
    assert "Created batch inference job" in out
    async with harness.http(token) as client:
        (job,) = (await client.get("/v1/jobs", params={"kind": "JOB_KIND_BATCH_INFERENCE"})).json()[
            "jobs"
        ]
    assert job["id"] in out
    spec = job["spec"]
    assert spec["deployment"] == "dets" and spec["options"]["conf"] == pytest.approx(0.2)
    store = harness.gateway.store
    root = f"tenants/{tenant_id}/{spec['inputPrefix']}"
    assert [o.key[len(root) :] for o in await store.list(root)] == ["a.png", "sub__b.png"]
    assert await store.get_bytes(root + "a.png") == inputs[0].read_bytes()

    # --output: watch the job the service's batch worker runs, then page its results into
    # a file.
    results_file = tmp_path / "results.jsonl"
    async with batch_worker(bus, served.service):
        finished = ok(
            await asyncio.wait_for(
                cli(
                    "batch", "--model-version", version_id, str(folder),
                    "--output", str(results_file),
                ),
                120,
            )
        )  # fmt: skip
    assert "SUCCEEDED" in finished.stdout
    written = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert [r["key"].rsplit("/", 1)[-1] for r in written] == ["a.png", "sub__b.png"]
    assert all((r["width"], r["height"]) == (32, 24) and r["detections"] for r in written)
    async with harness.http(token) as client:
        jobs = (await client.get("/v1/jobs", params={"kind": "JOB_KIND_BATCH_INFERENCE"})).json()
    by_version = next(j for j in jobs["jobs"] if j.get("modelVersionId") == version_id)
    assert by_version["state"] == "JOB_STATE_SUCCEEDED"
    assert by_version["spec"]["export"]["onnx"]["key"] == f"jobs/{export_jobs[-1]}/model.onnx"

    both = await cli("batch", str(folder))
    assert both.exit_code == 1 and "DEPLOYMENT and an INPUT" in both.output
