"""`deploy`, `deployments`, `predict` and `batch`: serving exported models."""

from __future__ import annotations

import json
import mimetypes
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, ImageDraw, ImageFont
from rich.markup import escape
from visionmesh.cli.client import GatewayClient
from visionmesh.cli.commands.datasets import transfer_progress
from visionmesh.cli.commands.jobs import watch_job
from visionmesh.cli.render import details, number, styled_state, table, timestamp
from visionmesh.cli.runtime import (
    EXIT_FAILED,
    EXIT_OK,
    JsonOption,
    LimitOption,
    Runtime,
    fail,
    print_json,
    respond,
    runtime,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "batch_inputs",
    "draw_results",
    "predict_options",
    "register",
    "save_paths",
    "upload_batch_inputs",
]

deployments_app = typer.Typer(help="Deployed models: list, show, delete.", no_args_is_help=True)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""What `batch` uploads from a folder (BatchInferenceSpec's default extensions)."""
_READY = "DEPLOYMENT_STATE_READY"
_FAILED = "DEPLOYMENT_STATE_FAILED"
# Distinct, readable box colours, cycled by class id.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 56, 56),
    (56, 56, 255),
    (40, 180, 70),
    (255, 157, 0),
    (200, 40, 200),
    (0, 190, 200),
    (140, 90, 40),
    (110, 110, 110),
)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.add_typer(deployments_app, name="deployments")
    app.command("predict")(predict)
    app.command("batch")(batch)


class Backend(StrEnum):
    onnxruntime = "onnxruntime"
    triton = "triton"


# --- deployments ------------------------------------------------------------------------------


def _deployment_rows(deployment: Mapping[str, Any]) -> list[tuple[str, str]]:
    metadata = deployment.get("metadata") or {}
    rows = [
        ("name", escape(str(deployment.get("name", "-")))),
        ("state", styled_state(deployment.get("state"), "DEPLOYMENT_STATE_")),
        ("model version", str(deployment.get("modelVersionId") or "-")),
        ("export job", str(deployment.get("exportJobId") or "-")),
        ("backend", escape(str(deployment.get("backend") or "-"))),
        ("device", escape(str(deployment.get("device") or "-"))),
        ("created", timestamp(deployment.get("createTime"))),
        ("loaded", timestamp(deployment.get("loadTime"))),
    ]
    if metadata.get("task"):
        rows.append(("task", escape(str(metadata["task"]))))
    if deployment.get("failureReason"):
        rows.append(("failure", f"[red]{escape(str(deployment['failureReason']))}[/]"))
    return rows


def _show_deployment(rt: Runtime, response: Mapping[str, Any]) -> None:
    details(rt.out, _deployment_rows(response.get("deployment") or {}))


def wait_for_deployment(
    client: GatewayClient,
    name: str,
    *,
    timeout_seconds: float,
    interval_seconds: float = 1.0,
    on_poll: Callable[[Mapping[str, Any]], None] | None = None,
) -> Mapping[str, Any]:
    """Polls GetDeployment until READY or FAILED (or the timeout); the last deployment."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        deployment = client.get_deployment(name).get("deployment") or {}
        if on_poll is not None:
            on_poll(deployment)
        if deployment.get("state") in (_READY, _FAILED) or time.monotonic() >= deadline:
            return deployment
        time.sleep(interval_seconds)


def deploy(
    ctx: typer.Context,
    model_version_id: Annotated[str, typer.Argument(metavar="MODEL_VERSION_ID")],
    name: Annotated[
        str, typer.Option("--name", help="Deployment name: lowercase letters, digits, '_', '-'.")
    ],
    backend: Annotated[
        Backend | None,
        typer.Option(help="Runtime (default: the inference service's, usually onnxruntime)."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option("--replace", help="Swap in this version under a name already in use."),
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the deployment is READY or FAILED.")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds.", min=1)
    ] = 600.0,
    json_out: JsonOption = False,
) -> None:
    """Deploy a model version's newest export under a name."""
    rt = runtime(ctx)
    body: dict[str, Any] = {"name": name, "modelVersionId": model_version_id}
    if backend is not None:
        body["backend"] = backend.value
    if replace:
        body["replace"] = True
    with rt.client() as client:
        response = client.load_model(body)
        deployment: Mapping[str, Any] = response.get("deployment") or {}
        if wait and deployment.get("state") not in (_READY, _FAILED):
            if not json_out:
                rt.err.print(f"Waiting for deployment {escape(name)} to load...")
            deployment = wait_for_deployment(client, name, timeout_seconds=timeout)
    if json_out:
        print_json({"deployment": deployment})
    else:
        details(rt.out, _deployment_rows(deployment))
        if not wait:
            rt.out.print(f"Check it with: visionmesh deployments get {escape(name)}")
    if wait and deployment.get("state") != _READY:
        raise typer.Exit(EXIT_FAILED)


@deployments_app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 50, json_out: JsonOption = False) -> None:
    """List your deployments by name."""

    def show(rt: Runtime, deployments: list[dict[str, Any]]) -> None:
        result = table("NAME", "STATE", "MODEL VERSION", "BACKEND", "TASK", "CREATED")
        for d in deployments:
            result.add_row(
                escape(str(d.get("name", ""))),
                styled_state(d.get("state"), "DEPLOYMENT_STATE_"),
                str(d.get("modelVersionId") or "-"),
                escape(str(d.get("backend") or "-")),
                escape(str((d.get("metadata") or {}).get("task") or "-")),
                timestamp(d.get("createTime")),
            )
        rt.out.print(result if deployments else "No deployments.")

    respond(
        ctx,
        lambda client: list(client.list_deployments(limit=limit)),
        json_out=json_out,
        show=show,
        as_json=lambda deployments: {"deployments": deployments},
    )


@deployments_app.command("get")
def get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    json_out: JsonOption = False,
) -> None:
    """Show a deployment: its state, source and backend."""
    respond(
        ctx, lambda client: client.get_deployment(name), json_out=json_out, show=_show_deployment
    )


@deployments_app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    json_out: JsonOption = False,
) -> None:
    """Unload a deployment; calls in flight finish first."""

    def show(rt: Runtime, response: Mapping[str, Any]) -> None:
        rt.out.print(f"Deleted deployment [bold]{escape(name)}[/].")

    respond(ctx, lambda client: client.unload_model(name), json_out=json_out, show=show)


# --- predict -----------------------------------------------------------------------------------


def predict_options(
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    top_k: int | None = None,
    classes: str | None = None,
    agnostic: bool = False,
    imgsz: int | None = None,
) -> dict[str, str]:
    """The Predict form fields for the options given (PredictOptions names); `classes` is a
    comma list of class ids, checked here so a typo fails before any upload."""
    fields: dict[str, str] = {}
    for key, value in (
        ("conf", conf),
        ("iou", iou),
        ("max_det", max_det),
        ("top_k", top_k),
        ("imgsz", imgsz),
    ):
        if value is not None:
            fields[key] = str(value)
    if classes:
        ids = [part.strip() for part in classes.split(",") if part.strip()]
        if not all(part.isdigit() for part in ids):
            raise typer.BadParameter(
                f"{classes!r} is not a comma list of class ids", param_hint="--classes"
            )
        fields["classes"] = ",".join(ids)
    if agnostic:
        fields["agnostic"] = "true"
    return fields


def _content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def save_paths(images: Sequence[Path], save: Path) -> list[Path]:
    """Where `--save` writes each drawn image: the file itself for one image, else files of
    the same names in the directory `save`."""
    if len(images) == 1 and not save.is_dir() and save.suffix:
        return [save]
    names = [image.name for image in images]
    if len(set(names)) != len(names):
        # Same names from different folders must not overwrite each other.
        names = [f"{i:03d}-{name}" for i, name in enumerate(names)]
    return [save / name for name in names]


def _label(entry: Mapping[str, Any]) -> str:
    name = entry.get("className") or str(entry.get("classId", 0))
    return f"{name} {float(entry.get('score', 0.0)):.2f}"


def draw_results(image: Image.Image, result: Mapping[str, Any]) -> Image.Image:
    """The image with the result drawn on it: boxes (and mask outlines) labelled with class
    and score, or the top classes written in the corner for a classifier."""
    canvas = image.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 320))
    for detection in result.get("detections") or []:
        colour = _PALETTE[int(detection.get("classId", 0)) % len(_PALETTE)]
        polygon = [
            (float(p.get("x", 0.0)), float(p.get("y", 0.0))) for p in detection.get("polygon") or []
        ]
        if len(polygon) >= 3:
            draw.polygon(polygon, outline=colour, width=width)
        box = detection.get("box") or {}
        x1, y1 = float(box.get("x1", 0.0)), float(box.get("y1", 0.0))
        x2, y2 = float(box.get("x2", 0.0)), float(box.get("y2", 0.0))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = _label(detection)
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        # The label sits above the box, or inside it at the image's top edge.
        shift = bottom - top + 2 if y1 - (bottom - top) - 2 >= 0 else 0
        draw.rectangle((left, top - shift, right + 2, bottom - shift + 1), fill=colour)
        draw.text((x1 + 1, y1 - shift), label, fill=(255, 255, 255), font=font)
    y = 2
    for entry in result.get("classifications") or []:
        draw.text((3, y + 1), _label(entry), fill=(0, 0, 0), font=font)
        draw.text((2, y), _label(entry), fill=(255, 255, 255), font=font)
        y += 12
    return canvas


def _show_predictions(rt: Runtime, images: Sequence[Path], response: Mapping[str, Any]) -> None:
    results = response.get("results") or []
    task = str(response.get("task") or "")
    if task == "classify":
        out = table("IMAGE", "RANK", "CLASS", "SCORE")
    else:
        out = table("IMAGE", "CLASS", "SCORE", "X1", "Y1", "X2", "Y2")
    for image, result in zip(images, results, strict=False):
        error = result.get("error")
        if error:
            why = str(error.get("message") or error.get("reason"))
            rt.err.print(f"[red]{escape(image.name)}[/]: {escape(why)}")
            continue
        if task == "classify":
            for rank, entry in enumerate(result.get("classifications") or [], start=1):
                out.add_row(
                    escape(image.name),
                    str(rank),
                    escape(str(entry.get("className") or entry.get("classId", 0))),
                    f"{float(entry.get('score', 0.0)):.3f}",
                )
            continue
        for detection in result.get("detections") or []:
            box = detection.get("box") or {}
            out.add_row(
                escape(image.name),
                escape(str(detection.get("className") or detection.get("classId", 0))),
                f"{float(detection.get('score', 0.0)):.3f}",
                *(f"{float(box.get(k, 0.0)):.1f}" for k in ("x1", "y1", "x2", "y2")),
            )
    rt.out.print(out if out.row_count else "Nothing found.")
    timing = response.get("timing") or {}
    if timing:
        rt.out.print(
            "[dim]"
            + ", ".join(
                f"{label} {number(timing.get(key, 0.0))} ms"
                for label, key in (
                    ("queue", "queueMs"),
                    ("preprocess", "preprocessMs"),
                    ("inference", "inferenceMs"),
                    ("postprocess", "postprocessMs"),
                )
            )
            + "[/]"
        )


def predict(
    ctx: typer.Context,
    deployment: Annotated[str, typer.Argument(metavar="DEPLOYMENT")],
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", exists=True, dir_okay=False)],
    conf: Annotated[
        float | None, typer.Option(help="Minimum confidence, 0-1.", min=0, max=1)
    ] = None,
    iou: Annotated[float | None, typer.Option(help="NMS IoU threshold, 0-1.", min=0, max=1)] = None,
    max_det: Annotated[int | None, typer.Option(help="Most detections per image.", min=1)] = None,
    top_k: Annotated[
        int | None, typer.Option(help="Classes per image (classifiers).", min=1)
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Only these class ids, comma-separated (e.g. 0,2).")
    ] = None,
    agnostic: Annotated[bool, typer.Option("--agnostic", help="Class-agnostic NMS.")] = False,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size (models exported with a dynamic size).", min=32)
    ] = None,
    save: Annotated[
        Path | None,
        typer.Option(
            "--save",
            metavar="PATH",
            help="Draw the results: an image file for one image, else a directory.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a deployment on images and print what it finds."""
    rt = runtime(ctx)
    options = predict_options(
        conf=conf,
        iou=iou,
        max_det=max_det,
        top_k=top_k,
        classes=classes,
        agnostic=agnostic,
        imgsz=imgsz,
    )
    files = [(image.name, image.read_bytes(), _content_type(image)) for image in images]
    with rt.client() as client:
        response = client.predict(deployment, files, options=options)
    if json_out:
        print_json(response)
    else:
        _show_predictions(rt, images, response)
    if save is not None:
        targets = save_paths(images, save)
        for image, target, result in zip(
            images, targets, response.get("results") or [], strict=False
        ):
            if result.get("error"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(image) as source:
                draw_results(source, result).save(target)
            if not json_out:
                rt.out.print(f"Saved {escape(str(target))}")


# --- batch -------------------------------------------------------------------------------------


def batch_inputs(source: Path) -> list[Path]:
    """The images `batch` uploads from a folder (recursively, by name), or the zip itself."""
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise typer.BadParameter(f"{source} is neither a folder nor a zip", param_hint="INPUT")
        return [source]
    found = sorted(
        path
        for path in source.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not found:
        raise typer.BadParameter(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {source}", param_hint="INPUT"
        )
    return found


def _upload_names(source: Path, files: Sequence[Path]) -> list[str]:
    """Plain file names for the upload; a folder's subfolders are folded into the name."""
    return [str(path.relative_to(source)).replace("/", "__") for path in files]


def upload_batch_inputs(rt: Runtime, client: GatewayClient, source: Path) -> dict[str, str]:
    """Uploads a folder's images (or a zip) through presigned URLs with a progress bar;
    the spec fields naming them (inputPrefix or inputZipKey)."""
    files = batch_inputs(source)
    is_zip = source.is_file()
    response = client.create_batch_input_upload(
        () if is_zip else _upload_names(source, files), zip_file=is_zip
    )
    uploads = response.get("uploads") or []
    total = sum(path.stat().st_size for path in files)
    with transfer_progress(rt.err) as progress:
        task = progress.add_task(f"Uploading {len(files)} file(s)", total=total)
        for path, upload in zip(files, uploads, strict=True):
            client.upload(
                str(upload["url"]),
                path,
                on_progress=lambda n: progress.advance(task, n),
                content_type="application/zip" if is_zip else _content_type(path),
            )
    if is_zip:
        return {"inputZipKey": str(uploads[0]["key"])}
    return {"inputPrefix": str(response.get("inputPrefix", ""))}


def batch(
    ctx: typer.Context,
    arguments: Annotated[
        list[str],
        typer.Argument(
            metavar="[DEPLOYMENT] INPUT",
            help="The deployment to run (unless --model-version), then an image folder or zip.",
        ),
    ],
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", help="Run a model version (its newest export) instead."),
    ] = None,
    conf: Annotated[
        float | None, typer.Option(help="Minimum confidence, 0-1.", min=0, max=1)
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per model call.", min=1)] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job until it ends.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the results as JSON Lines (implies --watch).",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run a deployment (or a model version) on a folder of images or a zip, as a job."""
    rt = runtime(ctx)
    expected = 1 if model_version else 2
    if len(arguments) != expected:
        fail(
            rt,
            "give INPUT with --model-version"
            if model_version
            else "give a DEPLOYMENT and an INPUT (or --model-version ID and an INPUT)",
        )
    deployment = None if model_version else arguments[0]
    source = Path(arguments[-1])
    if not source.exists():
        fail(rt, f"{escape(str(source))} does not exist")
    spec: dict[str, Any] = (
        {"deployment": deployment} if deployment else {"modelVersionId": model_version}
    )
    if conf is not None:
        spec["options"] = {"conf": conf}
    if batch_size is not None:
        spec["batchSize"] = batch_size
    watch = watch or output is not None
    with rt.client() as client:
        spec.update(upload_batch_inputs(rt, client, source))
        response = client.create_batch_inference_job(spec)
        job = response.get("job") or {}
        job_id = str(job.get("id", ""))
        if json_out and not watch:
            print_json(response)
            return
        if not json_out:
            rt.out.print(
                f"Created batch inference job [bold]{job_id}[/] "
                f"({styled_state(job.get('state'), 'JOB_STATE_')})"
            )
        if not watch:
            rt.out.print(f"Follow it with: visionmesh jobs watch {job_id}")
            return
        code = watch_job(rt, client, job_id, json_out=json_out)
        if output is not None and code == EXIT_OK:
            written = 0
            with output.open("w", encoding="utf-8") as handle:
                for result in client.batch_results(job_id):
                    handle.write(json.dumps(result, separators=(",", ":")) + "\n")
                    written += 1
            rt.err.print(f"Wrote {written} result(s) to {escape(str(output))}")
    raise typer.Exit(code)
