"""`datasets`: upload (zipping a folder on the fly), list, show, snapshot, synth."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from visionmesh.cli import synth
from visionmesh.cli.client import ApiError
from visionmesh.cli.render import (
    details,
    human_bytes,
    short,
    styled_state,
    table,
    timestamp,
    to_int,
)
from visionmesh.cli.runtime import (
    EXIT_FAILED,
    JsonOption,
    LimitOption,
    Runtime,
    headline,
    print_json,
    print_violations,
    respond,
    runtime,
)

__all__ = ["SynthTask", "register", "transfer_progress"]

datasets_app = typer.Typer(help="Upload, inspect and generate datasets.", no_args_is_help=True)

DatasetId = Annotated[str, typer.Argument(metavar="ID")]


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")


def transfer_progress(console: Console) -> Progress:
    """A byte-counting progress bar for uploads and downloads."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@contextmanager
def _archive_for(path: Path, rt: Runtime) -> Iterator[Path]:
    """`path` itself for a file; for a folder, a zip of it in a temp dir (removed after)."""
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="visionmesh-") as tmp:
        with rt.err.status(f"Zipping {escape(str(path))} ..."):
            archive = synth.zip_dataset(path, Path(tmp) / f"{path.name or 'dataset'}.zip")
        yield archive


def _split_table(dataset: Mapping[str, Any]) -> Table | None:
    splits = dataset.get("splits") or []
    if not splits:
        return None
    names = [str(s.get("name", "?")) for s in splits]
    result = table("class", *names)
    classes: list[str] = list(dataset.get("classNames") or [])
    for split in splits:
        for name in split.get("instancesPerClass") or {}:
            if name not in classes:
                classes.append(name)
    for name in classes:
        result.add_row(
            escape(name),
            *(str(to_int((s.get("instancesPerClass") or {}).get(name))) for s in splits),
        )
    result.add_section()
    result.add_row("[bold]images[/]", *(f"[bold]{to_int(s.get('imageCount'))}[/]" for s in splits))
    for column in result.columns[1:]:
        column.justify = "right"
    return result


def show_dataset(rt: Runtime, dataset: Mapping[str, Any]) -> None:
    rows = [
        ("id", str(dataset.get("id", "-"))),
        ("name", escape(str(dataset.get("name", "-")))),
        ("state", styled_state(dataset.get("state"), "DATASET_STATE_")),
        ("format", short(dataset.get("format"), "DATASET_FORMAT_").lower()),
        ("classes", escape(", ".join(dataset.get("classNames") or []) or "-")),
        ("images", str(to_int(dataset.get("imageCount")))),
        ("size", human_bytes(dataset.get("sizeBytes"))),
        ("created", timestamp(dataset.get("createTime"))),
    ]
    if dataset.get("format") == "DATASET_FORMAT_CATALOG":
        products = str(to_int(dataset.get("productCount")))
        if to_int(dataset.get("productsWithoutImages")):
            products += f" ({to_int(dataset.get('productsWithoutImages'))} without images)"
        rows[4] = ("products", products)
    if dataset.get("description"):
        rows.insert(2, ("description", escape(str(dataset["description"]))))
    if dataset.get("manifestSha256"):
        rows.append(("manifest", str(dataset["manifestSha256"])))
    if dataset.get("failureReason"):
        rows.append(("failure", f"[red]{escape(str(dataset['failureReason']))}[/]"))
    details(rt.out, rows)
    splits = _split_table(dataset)
    if splits is not None:
        rt.out.print(splits)


@datasets_app.command("upload")
def upload(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True, readable=True, metavar="PATH", help="A dataset zip, or a folder to zip."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Display name of the dataset.")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Upload a dataset (YOLO detect layout, classification folders or a product catalogue)
    and validate it.

    Exits 1 and lists the offending files when the server rejects the archive.
    """
    rt = runtime(ctx)
    with rt.client() as client, _archive_for(path, rt) as archive:
        created = client.create_dataset(name, description)
        dataset_id = str(created["dataset"]["id"])
        size = archive.stat().st_size
        with transfer_progress(rt.err) as progress:
            task = progress.add_task(f"Uploading {escape(archive.name)}", total=size)
            client.upload(
                str(created["uploadUrl"]),
                archive,
                on_progress=lambda n: progress.advance(task, n),
            )
        try:
            with rt.err.status("Validating on the server ..."):
                finalized = client.finalize_dataset(dataset_id)
        except ApiError as exc:
            if exc.status != "INVALID_ARGUMENT":
                raise
            rt.err.print(
                f"[bold red]error[/]: dataset {dataset_id} was rejected: {escape(headline(exc))}"
            )
            print_violations(rt.err, exc)
            raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        print_json(finalized)
        return
    dataset = finalized.get("dataset") or {}
    rt.out.print(f"[green]Dataset {dataset.get('id', dataset_id)} is ready.[/]")
    show_dataset(rt, dataset)


def _show_list(rt: Runtime, datasets: list[dict[str, Any]]) -> None:
    result = table("ID", "NAME", "STATE", "FORMAT", "IMAGES", "CLASSES", "SIZE", "CREATED")
    for d in datasets:
        result.add_row(
            str(d.get("id", "")),
            escape(str(d.get("name", ""))),
            styled_state(d.get("state"), "DATASET_STATE_"),
            short(d.get("format"), "DATASET_FORMAT_").lower(),
            str(to_int(d.get("imageCount"))),
            str(len(d.get("classNames") or [])),
            human_bytes(d.get("sizeBytes")),
            timestamp(d.get("createTime")),
        )
    rt.out.print(result if datasets else "No datasets.")


@datasets_app.command("list")
def list_(ctx: typer.Context, limit: LimitOption = 50, json_out: JsonOption = False) -> None:
    """List your datasets, newest first."""
    respond(
        ctx,
        lambda client: list(client.list_datasets(limit=limit)),
        json_out=json_out,
        show=_show_list,
        as_json=lambda datasets: {"datasets": datasets},
    )


@datasets_app.command("show")
def show(ctx: typer.Context, dataset_id: DatasetId, json_out: JsonOption = False) -> None:
    """Show a dataset with its per-split, per-class counts."""
    respond(
        ctx,
        lambda client: client.get_dataset(dataset_id),
        json_out=json_out,
        show=lambda rt, response: show_dataset(rt, response.get("dataset") or {}),
    )


@datasets_app.command("snapshot")
def snapshot(
    ctx: typer.Context,
    dataset_id: DatasetId,
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Pin the dataset's current content as an immutable snapshot (for reproducible training)."""

    def show(rt: Runtime, response: dict[str, Any]) -> None:
        pinned = response.get("snapshot") or {}
        rt.out.print(
            f"Snapshot [bold]{pinned.get('id', '-')}[/] of dataset {dataset_id} "
            f"({to_int(pinned.get('imageCount'))} images, "
            f"manifest {pinned.get('manifestSha256', '-')})."
        )

    respond(
        ctx,
        lambda client: client.create_snapshot(dataset_id, description),
        json_out=json_out,
        show=show,
    )


class SynthTask(StrEnum):
    """Layouts `datasets synth` can generate."""

    DETECT = "detect"
    CLASSIFY = "classify"
    CATALOG = "catalog"


def _synth_catalog(
    ctx: typer.Context,
    out: Path,
    *,
    products: int,
    renders: int,
    queries: int,
    imgsz: int,
    seed: int,
    zip_out: bool,
) -> None:
    rt = runtime(ctx)
    archive_only = zip_out and out.suffix.lower() == ".zip"
    queries_dir = out.with_name(f"{out.stem if archive_only else out.name}-queries")
    with tempfile.TemporaryDirectory(prefix="visionmesh-synth-") as tmp:
        root = Path(tmp) / "dataset" if archive_only else out
        try:
            with rt.err.status("Generating a product catalogue ..."):
                catalog = synth.make_catalog_dataset(
                    root, n_products=products, renders=renders, imgsz=imgsz, seed=seed
                )
                if queries:
                    synth.render_catalog_queries(catalog, queries_dir, per_product=queries)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        archive = None
        if zip_out:
            target = out if archive_only else out.with_name(f"{out.name}.zip")
            archive = synth.zip_dataset(root, target)
    summary = f"{products} products x {renders} renders, {imgsz}px"
    if not archive_only:
        rt.out.print(f"Wrote a catalog dataset to {escape(str(out))} ({escape(summary)}).")
    if archive is not None:
        what = f"a catalog dataset ({summary})" if archive_only else "it"
        rt.out.print(f"Packed {escape(what)} into {escape(str(archive))}.")
        rt.out.print(
            f"Upload it with: visionmesh datasets upload {escape(str(archive))} --name NAME"
        )
    if queries:
        rt.out.print(
            f"Wrote {products * queries} held-out query images to {escape(str(queries_dir))}"
            " (one folder per product id)."
        )


@datasets_app.command("synth")
def synth_(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Argument(
            metavar="OUT",
            help="Output folder; with --zip, a path ending in .zip writes only the archive.",
        ),
    ],
    task: Annotated[SynthTask, typer.Option("--task", help="Dataset layout.")] = SynthTask.DETECT,
    n_train: Annotated[
        int,
        typer.Option("--n-train", min=1, help="Training images (classify: per class)."),
    ] = 64,
    n_val: Annotated[
        int, typer.Option("--n-val", min=1, help="Validation images (classify: per class).")
    ] = 16,
    imgsz: Annotated[int, typer.Option("--imgsz", min=16, help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 0,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes", help="Comma-separated class names (default: circle,square,triangle)."
        ),
    ] = None,
    zip_out: Annotated[
        bool, typer.Option("--zip", help="Also pack it as a zip, ready to upload.")
    ] = False,
    products: Annotated[
        int, typer.Option("--products", min=1, help="Catalog: products (distinct shapes).")
    ] = 24,
    renders: Annotated[
        int, typer.Option("--renders", min=1, help="Catalog: reference images per product.")
    ] = 4,
    queries: Annotated[
        int,
        typer.Option(
            "--queries",
            min=0,
            help="Catalog: also render this many held-out query images per product, into "
            "OUT-queries/<product_id>/ (outside the catalogue).",
        ),
    ] = 0,
) -> None:
    """Generate a small synthetic dataset: shapes that models learn in a few epochs, or a
    product catalogue (--task catalog) with several reference renders per product."""
    kind = task.value
    if task is SynthTask.CATALOG:
        _synth_catalog(
            ctx,
            out,
            products=products,
            renders=renders,
            queries=queries,
            imgsz=imgsz,
            seed=seed,
            zip_out=zip_out,
        )
        return
    rt = runtime(ctx)
    names = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None
    class_names = names or synth.DEFAULT_CLASSES
    archive_only = zip_out and out.suffix.lower() == ".zip"
    with tempfile.TemporaryDirectory(prefix="visionmesh-synth-") as tmp:
        root = Path(tmp) / "dataset" if archive_only else out
        try:
            with rt.err.status(f"Generating a {kind} dataset ..."):
                if task is SynthTask.DETECT:
                    synth.make_detect_dataset(
                        root,
                        n_train=n_train,
                        n_val=n_val,
                        imgsz=imgsz,
                        seed=seed,
                        classes=class_names,
                    )
                else:
                    synth.make_classify_dataset(
                        root,
                        n_per_class_train=n_train,
                        n_per_class_val=n_val,
                        imgsz=imgsz,
                        seed=seed,
                        classes=class_names,
                    )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        archive = None
        if zip_out:
            target = out if archive_only else out.with_name(f"{out.name}.zip")
            archive = synth.zip_dataset(root, target)
    per = " per class" if task is SynthTask.CLASSIFY else ""
    summary = (
        f"{n_train} train + {n_val} val images{per}, {imgsz}px, classes {', '.join(class_names)}"
    )
    if not archive_only:
        rt.out.print(f"Wrote a {kind} dataset to {escape(str(out))} ({escape(summary)}).")
    if archive is not None:
        what = f"a {kind} dataset ({summary})" if archive_only else "it"
        rt.out.print(f"Packed {escape(what)} into {escape(str(archive))}.")
        rt.out.print(
            f"Upload it with: visionmesh datasets upload {escape(str(archive))} --name NAME"
        )
