"""`jobs`: list, show, cancel, metrics, and watch (a live view of the job's event stream)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from visionmesh.cli.client import GatewayClient
from visionmesh.cli.render import (
    details,
    duration,
    error_text,
    human_bytes,
    metrics_text,
    number,
    short,
    styled_state,
    table,
    timestamp,
    to_int,
)
from visionmesh.cli.runtime import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    JsonOption,
    LimitOption,
    Runtime,
    fail,
    respond,
    runtime,
)

__all__ = ["register", "watch_job"]

jobs_app = typer.Typer(help="List, inspect, watch and cancel jobs.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(metavar="ID")]

_TERMINAL_EXIT: Final = {
    "JOB_STATE_SUCCEEDED": EXIT_OK,
    "JOB_STATE_FAILED": EXIT_FAILED,
    "JOB_STATE_CANCELLED": EXIT_CANCELLED,
}


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")


def _enum_filter(value: str | None, prefix: str) -> str:
    if not value:
        return ""
    upper = value.strip().upper().replace("-", "_")
    return upper if upper.startswith(prefix) else prefix + upper


def _progress_text(job: Mapping[str, Any]) -> str:
    progress = job.get("progress") or {}
    epoch, total = to_int(progress.get("epoch")), to_int(progress.get("totalEpochs"))
    fraction = float(progress.get("fraction") or 0.0)
    if total:
        return f"{epoch}/{total}"
    return f"{fraction:.0%}" if fraction else "-"


def _show_list(rt: Runtime, jobs: list[dict[str, Any]]) -> None:
    result = table("ID", "KIND", "STATE", "PROGRESS", "METRICS", "CREATED")
    for job in jobs:
        result.add_row(
            str(job.get("id", "")),
            short(job.get("kind"), "JOB_KIND_").lower(),
            styled_state(job.get("state"), "JOB_STATE_"),
            _progress_text(job),
            metrics_text(job.get("metrics")),
            timestamp(job.get("createTime")),
        )
    rt.out.print(result if jobs else "No jobs.")


@jobs_app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only this state, e.g. running, succeeded, failed.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. training, export.")] = None,
    limit: LimitOption = 50,
    json_out: JsonOption = False,
) -> None:
    """List your jobs, newest first."""

    def call(client: GatewayClient) -> list[dict[str, Any]]:
        return list(
            client.list_jobs(
                kind=_enum_filter(kind, "JOB_KIND_"),
                state=_enum_filter(state, "JOB_STATE_"),
                limit=limit,
            )
        )

    respond(ctx, call, json_out=json_out, show=_show_list, as_json=lambda jobs: {"jobs": jobs})


# Spec fields `jobs show` prints: a training spec's and an export spec's main ones.
_SPEC_SUMMARY: Final = (
    "framework",
    "task",
    "model",
    "epochs",
    "formats",
    "opset",
    "imgsz",
    "batch",
    "device",
)


def _show_job(rt: Runtime, job: Mapping[str, Any]) -> None:
    spec = job.get("spec") or {}
    spec_text = ", ".join(
        f"{key}={'+'.join(map(str, spec[key])) if isinstance(spec[key], list) else spec[key]}"
        for key in _SPEC_SUMMARY
        if spec.get(key) not in (None, "", [])
    )
    rows = [
        ("id", str(job.get("id", "-"))),
        ("kind", short(job.get("kind"), "JOB_KIND_").lower()),
        ("state", styled_state(job.get("state"), "JOB_STATE_")),
        ("progress", _progress_text(job)),
    ]
    if spec_text:
        rows.append(("spec", escape(spec_text)))
    if job.get("datasetId"):
        rows.append(("dataset", str(job["datasetId"])))
    if job.get("snapshotId"):
        rows.append(("snapshot", str(job["snapshotId"])))
    rows.append(("metrics", metrics_text(job.get("metrics"))))
    error = error_text(job.get("error"))
    if error:
        rows.append(("error", f"[red]{error}[/]"))
    if job.get("modelVersionId"):
        rows.append(("model version", str(job["modelVersionId"])))
    rows += [
        ("attempts", str(to_int(job.get("attempts")))),
        ("created", timestamp(job.get("createTime"))),
        ("started", timestamp(job.get("startTime"))),
        ("ended", timestamp(job.get("endTime"))),
    ]
    details(rt.out, rows)


@jobs_app.command("show")
def show(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Show a job: state, progress, final metrics, error, registered model version."""
    respond(
        ctx,
        lambda client: client.get_job(job_id),
        json_out=json_out,
        show=lambda rt, response: _show_job(rt, response.get("job") or {}),
    )


@jobs_app.command("cancel")
def cancel(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Cancel a job (a running one stops at its next batch boundary)."""

    def show(rt: Runtime, response: dict[str, Any]) -> None:
        job = response.get("job") or {}
        rt.out.print(f"Job {job.get('id', job_id)}: {styled_state(job.get('state'), 'JOB_STATE_')}")

    respond(ctx, lambda client: client.cancel_job(job_id), json_out=json_out, show=show)


def _show_metrics(rt: Runtime, response: dict[str, Any]) -> None:
    points = response.get("points") or []
    if not points:
        rt.out.print("No metrics reported yet.")
        return
    names: list[str] = []
    rows: dict[int, dict[str, Any]] = {}
    for point in points:
        metric = str(point.get("name", ""))
        if metric not in names:
            names.append(metric)
        key = to_int(point.get("epoch")) or to_int(point.get("step"))
        rows.setdefault(key, {})[metric] = point.get("value")
    result = table("EPOCH", *names)
    for key in sorted(rows):
        result.add_row(str(key), *(number(rows[key][n]) if n in rows[key] else "" for n in names))
    rt.out.print(result)


@jobs_app.command("metrics")
def metrics(
    ctx: typer.Context,
    job_id: JobId,
    name: Annotated[str, typer.Option(help="Only this metric.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Show the metric history of a job, one row per epoch."""
    respond(
        ctx,
        lambda client: client.job_metrics(job_id, name=name),
        json_out=json_out,
        show=_show_metrics,
    )


# --- watch -------------------------------------------------------------------------------------


class _WatchView:
    """Renders WatchJob events: a live bar for progress, a printed line per epoch and state."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("[dim]ETA[/] {task.fields[eta]}"),
            console=console,
        )
        self.task: TaskID = self.progress.add_task("waiting", total=1.0, detail="", eta="-")
        self.total_epochs = 0

    def __enter__(self) -> _WatchView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _line(self, event: Mapping[str, Any], text: str) -> None:
        stamp = "--:--:--"
        if event.get("time"):
            stamp = timestamp(event["time"])[-8:]
        self.progress.console.print(f"[dim]{stamp}[/]  {text}")

    def handle(self, event: Mapping[str, Any]) -> None:
        job = event.get("job") or {}
        if "stateChange" in event:
            change = event["stateChange"] or {}
            state = short(change.get("state"), "JOB_STATE_")
            text = f"state {styled_state(change.get('state'), 'JOB_STATE_')}"
            error = error_text(change.get("error"))
            if error:
                text += f"  [red]{error}[/]"
            self._line(event, text)
            if not self.total_epochs:
                self.progress.update(self.task, description=state.lower())
        elif "progress" in event:
            self._progress(event["progress"] or {})
        elif "metrics" in event:
            self._metrics(event, (event["metrics"] or {}).get("points") or [])
        elif "artifact" in event:
            artifact = event["artifact"] or {}
            self._line(
                event,
                f"artifact [bold]{escape(str(artifact.get('name', '?')))}[/] "
                f"({escape(str(artifact.get('kind', '')))}, "
                f"{human_bytes(artifact.get('sizeBytes'))}) id {artifact.get('id', '-')}",
            )
        elif "modelVersionId" in event:
            self._line(event, f"registered model version [bold]{event['modelVersionId']}[/]")
        elif "exportId" in event:
            self._line(event, f"recorded export [bold]{event['exportId']}[/]")
        elif job.get("progress"):
            self._progress(job["progress"])

    def _progress(self, progress: Mapping[str, Any]) -> None:
        epoch, total = to_int(progress.get("epoch")), to_int(progress.get("totalEpochs"))
        step, steps = to_int(progress.get("step")), to_int(progress.get("totalSteps"))
        self.total_epochs = total or self.total_epochs
        description = f"epoch {epoch}/{total}" if total else str(progress.get("phase") or "running")
        if steps:
            description += f" step {step}/{steps}"
        phase = str(progress.get("phase") or "")
        if total and phase:
            description += f" [dim]{escape(phase)}[/]"
        parts = [
            f"{name} {number(value)}" for name, value in (progress.get("losses") or {}).items()
        ]
        lr = float(progress.get("learningRate") or 0.0)
        if lr:
            parts.append(f"lr {lr:.3g}")
        eta = float(progress.get("etaSeconds") or 0.0)
        self.progress.update(
            self.task,
            description=description,
            completed=min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0),
            detail="  ".join(parts),
            eta=duration(eta) if eta > 0 else "-",
        )

    def _metrics(self, event: Mapping[str, Any], points: list[Mapping[str, Any]]) -> None:
        by_epoch: dict[int, list[str]] = {}
        for point in points:
            by_epoch.setdefault(to_int(point.get("epoch")), []).append(
                f"{escape(str(point.get('name', '?')))} {number(point.get('value'))}"
            )
        for epoch, values in by_epoch.items():
            label = f"epoch {epoch}/{self.total_epochs}" if self.total_epochs else f"epoch {epoch}"
            label = label if epoch else "metrics"
            self._line(event, f"[bold]{label}[/]  " + "  ".join(values))

    def finish(self, state: str) -> None:
        if state == "JOB_STATE_SUCCEEDED":
            self.progress.update(self.task, completed=1.0, eta="-")


def watch_job(rt: Runtime, client: GatewayClient, job_id: str, *, json_out: bool) -> int:
    """Follows the job's event stream; returns the exit status for its final state."""

    def reconnecting(attempt: int, why: str) -> None:
        rt.err.print(
            f"[yellow]stream interrupted ({escape(why)}); reconnecting (attempt {attempt})[/]"
        )

    last_job: Mapping[str, Any] = {}
    export_id = ""
    try:
        if json_out:
            for event in client.watch_job(job_id, on_reconnect=reconnecting):
                typer.echo(json.dumps(event, separators=(",", ":")))
                last_job = event.get("job") or last_job
        else:
            rt.out.print(f"Watching job [bold]{job_id}[/] (Ctrl-C stops watching, not the job)")
            with _WatchView(rt.out) as view:
                for event in client.watch_job(job_id, on_reconnect=reconnecting):
                    view.handle(event)
                    last_job = event.get("job") or last_job
                    export_id = str(event.get("exportId") or export_id)
                final = client.get_job(job_id).get("job") or last_job
                view.finish(str(final.get("state", "")))
            last_job = final
    except KeyboardInterrupt:
        rt.err.print(
            f"Stopped watching; job {job_id} continues "
            f"(cancel it with `visionmesh jobs cancel {job_id}`)."
        )
        return EXIT_INTERRUPTED
    if json_out:
        last_job = client.get_job(job_id).get("job") or last_job
    state = str(last_job.get("state", ""))
    code = _TERMINAL_EXIT.get(state)
    if code is None:
        if json_out:
            return EXIT_FAILED
        fail(rt, f"the event stream ended but job {job_id} is {short(state, 'JOB_STATE_')}")
    if not json_out:
        _summary(rt, last_job, export_id=export_id)
    return code


def _summary(rt: Runtime, job: Mapping[str, Any], *, export_id: str = "") -> None:
    state = str(job.get("state", ""))
    elapsed = ""
    try:
        start = datetime.fromisoformat(str(job["startTime"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(job["endTime"]).replace("Z", "+00:00"))
        elapsed = f" in {duration((end - start).total_seconds())}"
    except (KeyError, ValueError):
        pass
    line = f"Job {job.get('id', '')} {styled_state(state, 'JOB_STATE_')}{elapsed}"
    if state == "JOB_STATE_SUCCEEDED":
        if job.get("metrics"):
            line += f"  {metrics_text(job.get('metrics'))}"
        if export_id:
            line += (
                f"\nExport: {export_id} (download it with "
                f"`visionmesh exports download {export_id} -o PATH`)"
            )
        elif job.get("modelVersionId"):
            line += f"\nModel version: {job['modelVersionId']}"
        rt.out.print(line)
    elif state == "JOB_STATE_FAILED":
        rt.out.print(line)
        reason = error_text(job.get("error")) or "no reason given"
        rt.err.print(f"[bold red]failed[/]: {reason}")
    else:
        rt.out.print(line)


@jobs_app.command("watch")
def watch(
    ctx: typer.Context,
    job_id: JobId,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each event as a line of JSON.")
    ] = False,
) -> None:
    """Follow a job live until it ends.

    Exits 0 when it SUCCEEDED, 1 when it FAILED, 2 when it was CANCELLED.
    """
    rt = runtime(ctx)
    with rt.client() as client:
        code = watch_job(rt, client, job_id, json_out=json_out)
    raise typer.Exit(code)
