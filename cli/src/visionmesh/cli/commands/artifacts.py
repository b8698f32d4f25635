"""`artifacts`: list a job's files and download one, verifying its SHA-256."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from visionmesh.cli.client import GatewayClient, IntegrityError
from visionmesh.cli.commands.datasets import transfer_progress
from visionmesh.cli.render import human_bytes, table, timestamp, to_int
from visionmesh.cli.runtime import JsonOption, Runtime, fail, respond, runtime

__all__ = ["register", "save_download"]

artifacts_app = typer.Typer(help="Files produced by jobs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(artifacts_app, name="artifacts")


@artifacts_app.command("list")
def list_(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    json_out: JsonOption = False,
) -> None:
    """List the files a job uploaded."""

    def show(rt: Runtime, response: dict[str, Any]) -> None:
        artifacts = response.get("artifacts") or []
        result = table("ID", "NAME", "KIND", "SIZE", "SHA256", "CREATED")
        for a in artifacts:
            result.add_row(
                str(a.get("id", "")),
                escape(str(a.get("name", ""))),
                escape(str(a.get("kind", ""))),
                human_bytes(a.get("sizeBytes")),
                str(a.get("sha256") or "-")[:12],
                timestamp(a.get("createTime")),
            )
        rt.out.print(result if artifacts else f"Job {job_id} has no artifacts.")

    respond(ctx, lambda client: client.job_artifacts(job_id), json_out=json_out, show=show)


def _destination(output: str | None, name: str) -> Path:
    """`-o` as given: a folder (existing, or ending in a separator) gets the artifact's name."""
    # The server's name is only a default file name: never let it choose a directory.
    safe = Path(name).name or "artifact"
    if not output:
        return Path.cwd() / safe
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / safe
    return path


@artifacts_app.command("download")
def download(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ARTIFACT_ID")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="File, or folder ending in / (default: the artifact's name, here).",
        ),
    ] = None,
) -> None:
    """Download an artifact, verifying its SHA-256 when the server recorded one."""
    rt = runtime(ctx)
    with rt.client() as client:
        response = client.artifact_download_url(artifact_id)
        save_download(rt, client, response, output, default_name=artifact_id)


def save_download(
    rt: Runtime,
    client: GatewayClient,
    response: Mapping[str, Any],
    output: str | None,
    *,
    default_name: str,
) -> Path:
    """Fetches a `{url, artifact}` download answer into `output` (see `_destination`) with
    a progress bar, verifying the artifact's SHA-256 when the server recorded one."""
    artifact = response.get("artifact") or {}
    dest = _destination(output, str(artifact.get("name") or default_name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = str(artifact.get("sha256") or "")
    size = to_int(artifact.get("sizeBytes")) or None
    with transfer_progress(rt.err) as progress:
        task = progress.add_task(f"Downloading {escape(dest.name)}", total=size)

        def started(length: int | None) -> None:
            if length is not None:
                progress.update(task, total=length)

        try:
            digest = client.download(
                str(response["url"]),
                dest,
                expected_sha256=expected,
                on_start=started,
                on_progress=lambda n: progress.advance(task, n),
            )
        except IntegrityError as exc:
            progress.stop()
            fail(rt, escape(exc.message))
    check = "verified" if expected else "not recorded by the server; computed"
    rt.out.print(
        f"Saved {escape(str(dest))} ({human_bytes(dest.stat().st_size)}); sha256 {check}: {digest}"
    )
    return dest
