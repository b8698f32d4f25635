"""`export` a model version to deployable formats; `exports` shows and downloads the results."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.markup import escape
from visionmesh.cli.commands.artifacts import save_download
from visionmesh.cli.commands.jobs import watch_job
from visionmesh.cli.render import details, human_bytes, number, styled_state, table, timestamp
from visionmesh.cli.runtime import JsonOption, Runtime, print_json, respond, runtime

__all__ = ["register"]

exports_app = typer.Typer(help="Exported models: show and download.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.add_typer(exports_app, name="exports")


class ExportFormat(StrEnum):
    onnx = "onnx"
    tensorrt = "tensorrt"


class ExportFile(StrEnum):
    """What `exports download --file` fetches (GetExportDownloadUrlRequest.file)."""

    package = "package"
    onnx = "onnx"
    metadata = "metadata"
    tensorrt = "tensorrt"
    parity_report = "parity_report"


# The ExportResult fields (proto JSON names) that name each downloadable file.
_FILE_FIELDS: dict[str, str] = {
    "package": "tritonRepositoryZip",
    "onnx": "onnx",
    "metadata": "metadataFile",
    "tensorrt": "tensorrt",
    "parity_report": "parityReportFile",
}


def export(
    ctx: typer.Context,
    model_version_id: Annotated[str, typer.Argument(metavar="MODEL_VERSION_ID")],
    formats: Annotated[
        list[ExportFormat] | None,
        typer.Option(
            "--format",
            "-f",
            help="onnx (default) or tensorrt, which implies onnx; repeatable.",
            show_default=False,
        ),
    ] = None,
    opset: Annotated[
        int | None, typer.Option(help="ONNX opset (default: the export service's, 17).")
    ] = None,
    imgsz: Annotated[
        int | None,
        typer.Option(help="Input size, a multiple of 32 (default: the model's).", min=1),
    ] = None,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="A dynamic batch dimension.")
    ] = False,
    max_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Largest batch with --dynamic-batch (default 16), else the fixed batch (1).",
            min=1,
        ),
    ] = None,
    nms: Annotated[
        bool, typer.Option("--nms", help="Non-maximum suppression inside the graph (detectors).")
    ] = False,
    half: Annotated[
        bool, typer.Option("--half", help="FP16 TensorRT engine (needs --format tensorrt).")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job until it ends.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Export a model version: ONNX checked against PyTorch, optionally TensorRT, as a
    Triton model repository."""
    rt = runtime(ctx)
    spec: dict[str, Any] = {}
    if formats:
        spec["formats"] = list(dict.fromkeys(f.value for f in formats))
    for key, value in (("opset", opset), ("imgsz", imgsz), ("maxBatchSize", max_batch_size)):
        if value is not None:
            spec[key] = value
    for key, flag in (("dynamicBatch", dynamic_batch), ("nms", nms), ("half", half)):
        if flag:
            spec[key] = True
    with rt.client() as client:
        response = client.create_export_job({"modelVersionId": model_version_id, "spec": spec})
        job = response.get("job") or {}
        if json_out and not watch:
            print_json(response)
            return
        if not json_out:
            effective = job.get("spec") or {}
            rt.out.print(
                f"Created export job [bold]{job.get('id', '-')}[/] "
                f"({styled_state(job.get('state'), 'JOB_STATE_')}): "
                f"{escape('+'.join(effective.get('formats') or ['onnx']))}, "
                f"opset {effective.get('opset', '?')} at {effective.get('imgsz', '?')}px "
                f"of model version {model_version_id}"
            )
        if not watch:
            rt.out.print(f"Follow it with: visionmesh jobs watch {job.get('id', '')}")
            return
        code = watch_job(rt, client, str(job["id"]), json_out=json_out)
    raise typer.Exit(code)


def _show_export(rt: Runtime, response: dict[str, Any]) -> None:
    export = response.get("export") or {}
    result = export.get("result") or {}
    parity = result.get("parity") or {}
    rows = [
        ("id", str(export.get("id", "-"))),
        ("model version", str(export.get("modelVersionId", "-"))),
        ("job", str(export.get("jobId", "-"))),
        ("formats", escape(", ".join(export.get("formats") or [])) or "-"),
        ("created", timestamp(export.get("createTime"))),
    ]
    if parity:
        verdict = "[green]passed[/]" if parity.get("passed") else "[red]failed[/]"
        images = " ".join(
            part
            for part in (str(parity.get("images", 0)), parity.get("imageSource"), "images")
            if part
        )
        rows.append(
            (
                "parity",
                f"{verdict} on {escape(images)}, "
                f"max |diff| {number(result.get('parityMaxAbsDiff', 0.0))}",
            )
        )
    build = result.get("tensorrtBuild") or {}
    if build:
        rows.append(
            (
                "tensorrt",
                escape(
                    f"TensorRT {build.get('tensorrtVersion', '?')} on {build.get('gpuName', '?')} "
                    f"(sm {build.get('computeCapability', '?')})"
                    + (", fp16" if build.get("fp16") else "")
                ),
            )
        )
    models = result.get("tritonModels") or []
    if models:
        rows.append(
            (
                "triton",
                escape(
                    ", ".join(f"{m.get('name', '?')} ({m.get('platform', '?')})" for m in models)
                ),
            )
        )
    details(rt.out, rows)
    files = table("FILE", "NAME", "SIZE", "SHA256", "ARTIFACT")
    for file, field in _FILE_FIELDS.items():
        ref = result.get(field) or {}
        if ref.get("key"):
            files.add_row(
                file,
                escape(str(ref.get("name", ""))),
                human_bytes(ref.get("sizeBytes")),
                str(ref.get("sha256") or "-")[:12],
                str(ref.get("id") or "-"),
            )
    if files.row_count:
        rt.out.print(files)


@exports_app.command("get")
def get(
    ctx: typer.Context,
    export_id: Annotated[str, typer.Argument(metavar="EXPORT_ID")],
    json_out: JsonOption = False,
) -> None:
    """Show an export: its files, Triton models and parity check."""
    respond(ctx, lambda client: client.get_export(export_id), json_out=json_out, show=_show_export)


@exports_app.command("download")
def download(
    ctx: typer.Context,
    export_id: Annotated[str, typer.Argument(metavar="EXPORT_ID")],
    file: Annotated[
        ExportFile,
        typer.Option(
            "--file", help="package (the Triton model repository zip) or one file of the export."
        ),
    ] = ExportFile.package,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="File, or folder ending in / (default: the file's name, here).",
        ),
    ] = None,
) -> None:
    """Download an export's package or one of its files, verifying its SHA-256."""
    rt = runtime(ctx)
    with rt.client() as client:
        response = client.export_download_url(export_id, file=file.value)
        save_download(rt, client, response, output, default_name=f"{export_id}-{file.value}")
