"""`models`: the model registry, models and their versions."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from visionmesh.cli.render import details, metrics_text, table, timestamp, to_int
from visionmesh.cli.runtime import JsonOption, LimitOption, Runtime, respond

__all__ = ["register"]

models_app = typer.Typer(help="The model registry.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _show_list(rt: Runtime, models: list[dict[str, Any]]) -> None:
    result = table("ID", "NAME", "TASK", "LATEST", "CREATED")
    for m in models:
        result.add_row(
            str(m.get("id", "")),
            escape(str(m.get("name", ""))),
            escape(str(m.get("task", ""))),
            f"v{to_int(m.get('latestVersion'))}",
            timestamp(m.get("createTime")),
        )
    rt.out.print(result if models else "No models.")


@models_app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 50, json_out: JsonOption = False) -> None:
    """List your registered models, newest first."""
    respond(
        ctx,
        lambda client: list(client.list_models(limit=limit)),
        json_out=json_out,
        show=_show_list,
        as_json=lambda models: {"models": models},
    )


def _show_model(rt: Runtime, response: dict[str, Any]) -> None:
    model = response.get("model") or {}
    details(
        rt.out,
        [
            ("id", str(model.get("id", "-"))),
            ("name", escape(str(model.get("name", "-")))),
            ("task", escape(str(model.get("task", "-")))),
            ("latest", f"v{to_int(model.get('latestVersion'))}"),
            ("created", timestamp(model.get("createTime"))),
        ],
    )
    versions = model.get("versions") or []
    result = table("VERSION", "ID", "ARCHITECTURE", "IMGSZ", "METRICS", "JOB", "CREATED")
    for v in versions:
        result.add_row(
            f"v{to_int(v.get('version'))}",
            str(v.get("id", "")),
            escape(f"{v.get('framework', '')} {v.get('architecture', '')}".strip()) or "-",
            str(to_int(v.get("imgsz")) or "-"),
            metrics_text(v.get("metrics")),
            str(v.get("jobId") or "-"),
            timestamp(v.get("createTime")),
        )
    if versions:
        rt.out.print(result)


@models_app.command("show")
def show(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
) -> None:
    """Show a model and its versions with their metrics."""
    respond(ctx, lambda client: client.get_model(model_id), json_out=json_out, show=_show_model)
