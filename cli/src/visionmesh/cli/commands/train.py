"""`train`: a training job from flags and/or a YAML spec, optionally watched to the end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from visionmesh.cli.commands.jobs import watch_job
from visionmesh.cli.render import styled_state
from visionmesh.cli.runtime import JsonOption, print_json, runtime

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command()(train)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _set_spec(spec: dict[str, Any], key: str, value: Any) -> None:
    """Sets a field by its JSON name, dropping the same field spelled in snake_case."""
    for existing in [k for k in spec if k != key and _camel(k) == key]:
        del spec[existing]
    spec[key] = value


def _load_spec(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--spec") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f"{path} must hold a mapping of TrainingSpec fields", param_hint="--spec"
        )
    return data


def _augment_overrides(items: list[str] | None) -> dict[str, float]:
    result: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            result[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"expected NAME=NUMBER, got {item!r}", param_hint="--augment"
            ) from None
    return result


def train(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id (a snapshot is pinned for the job).")
    ] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="Snapshot id.")] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            exists=True,
            dir_okay=False,
            help="YAML TrainingSpec; flags override its fields, unknown keys go to the server.",
        ),
    ] = None,
    framework: Annotated[
        str | None, typer.Option(help="ultralytics or torchvision.", rich_help_panel="Spec")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="detect, classify or segment.", rich_help_panel="Spec")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Architecture, e.g. yolo11n.yaml or resnet18.", rich_help_panel="Spec"),
    ] = None,
    epochs: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size, a multiple of 32.", rich_help_panel="Spec")
    ] = None,
    batch: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="auto, SGD, Adam or AdamW.", rich_help_panel="Spec")
    ] = None,
    lr0: Annotated[
        float | None, typer.Option(help="Initial learning rate.", rich_help_panel="Spec")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early-stopping patience.", rich_help_panel="Spec")
    ] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel="Spec")
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option("--amp/--no-amp", help="Mixed precision (GPU).", rich_help_panel="Spec"),
    ] = None,
    init_model_version: Annotated[
        str | None,
        typer.Option(help="Fine-tune from this model version id.", rich_help_panel="Spec"),
    ] = None,
    augment: Annotated[
        list[str] | None,
        typer.Option(help="Augmentation override NAME=VALUE (repeatable).", rich_help_panel="Spec"),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Registry name (default: <dataset>-<task>).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job until it ends.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Start a training job on a dataset or snapshot."""
    rt = runtime(ctx)
    if (dataset is None) == (snapshot is None):
        raise typer.BadParameter("give exactly one of --dataset or --snapshot")
    spec = _load_spec(spec_file)
    flags: dict[str, Any] = {
        "framework": framework,
        "task": task,
        "model": model,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "optimizer": optimizer,
        "lr0": lr0,
        "patience": patience,
        "seed": seed,
        "device": device,
        "amp": amp,
        "initModelVersionId": init_model_version,
    }
    for key, value in flags.items():
        if value is not None:
            _set_spec(spec, key, value)
    overrides = _augment_overrides(augment)
    if overrides:
        current = spec.get("augment")
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update(overrides)
        _set_spec(spec, "augment", merged)
    body: dict[str, Any] = {"spec": spec}
    if dataset is not None:
        body["datasetId"] = dataset
    if snapshot is not None:
        body["snapshotId"] = snapshot
    if model_name:
        body["modelName"] = model_name
    with rt.client() as client:
        response = client.create_training_job(body)
        job = response.get("job") or {}
        if json_out and not watch:
            print_json(response)
            return
        if not json_out:
            effective = job.get("spec") or {}
            rt.out.print(
                f"Created training job [bold]{job.get('id', '-')}[/] "
                f"({styled_state(job.get('state'), 'JOB_STATE_')}): "
                f"{escape(str(effective.get('framework', '')))} "
                f"{escape(str(effective.get('model', '')))}, {effective.get('epochs', '?')} epochs "
                f"at {effective.get('imgsz', '?')}px on snapshot {job.get('snapshotId', '-')}"
            )
        if not watch:
            rt.out.print(f"Follow it with: visionmesh jobs watch {job.get('id', '')}")
            return
        code = watch_job(rt, client, str(job["id"]), json_out=json_out)
    raise typer.Exit(code)
