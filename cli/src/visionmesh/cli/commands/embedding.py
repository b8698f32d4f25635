"""`collections`, `embed`, `search`, `match` and `embedding-job`: vectors and products."""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from visionmesh.cli.commands.jobs import watch_job
from visionmesh.cli.render import details, number, styled_state, table, timestamp
from visionmesh.cli.runtime import (
    JsonOption,
    LimitOption,
    Runtime,
    fail,
    print_json,
    respond,
    runtime,
)

__all__ = ["parse_filters", "register"]

collections_app = typer.Typer(
    help="Vector collections: list, show, create, delete.", no_args_is_help=True
)

FilterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        "-f",
        metavar="EXPR",
        help="Payload filter, repeatable and ANDed: key=value, key=a,b (any of), "
        "key>=n, key>n, key<=n, key<n, !key=value (not).",
    ),
]

_CONDITION = re.compile(r"^(?P<neg>!)?(?P<key>[^=<>!]+?)(?P<op>>=|<=|=|>|<)(?P<value>.*)$")
_INT = re.compile(r"^[+-]?\d+$")
_RANGE_BOUNDS = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt"}


def register(app: typer.Typer) -> None:
    app.add_typer(collections_app, name="collections")
    app.command("embed")(embed)
    app.command("search")(search)
    app.command("match")(match)
    app.command("embedding-job")(embedding_job)


# --- filters ------------------------------------------------------------------------------


def _scalar(key: str, raw: str) -> dict[str, Any]:
    """An equality condition: ints and booleans as such, other numbers as a one-point range
    (the contract has no float equality), anything else a string."""
    if _INT.match(raw):
        return {"key": key, "intValue": str(int(raw))}
    if raw in ("true", "false"):
        return {"key": key, "boolValue": raw == "true"}
    try:
        number_value = float(raw)
    except ValueError:
        return {"key": key, "stringValue": raw}
    if not math.isfinite(number_value):
        return {"key": key, "stringValue": raw}
    return {"key": key, "range": {"gte": number_value, "lte": number_value}}


def _condition(expression: str) -> tuple[bool, dict[str, Any]]:
    """(negated, FilterCondition JSON) of one --filter expression."""
    matched = _CONDITION.match(expression.strip())
    if matched is None or not matched["key"].strip():
        raise typer.BadParameter(
            f"{expression!r}: expected key=value, key=a,b, key>=n, key<n or !key=value",
            param_hint="--filter",
        )
    key, op, raw = matched["key"].strip(), matched["op"], matched["value"].strip()
    if op in _RANGE_BOUNDS:
        try:
            bound = float(raw)
        except ValueError:
            raise typer.BadParameter(
                f"{expression!r}: {op} needs a number, not {raw!r}", param_hint="--filter"
            ) from None
        return bool(matched["neg"]), {"key": key, "range": {_RANGE_BOUNDS[op]: bound}}
    if "," in raw:
        values = [part.strip() for part in raw.split(",") if part.strip()]
        if not values:
            raise typer.BadParameter(f"{expression!r}: no values", param_hint="--filter")
        if all(_INT.match(v) for v in values):
            return bool(matched["neg"]), {
                "key": key,
                "inInts": {"values": [str(int(v)) for v in values]},
            }
        return bool(matched["neg"]), {"key": key, "inStrings": {"values": values}}
    return bool(matched["neg"]), _scalar(key, raw)


def parse_filters(expressions: Sequence[str] | None) -> dict[str, Any]:
    """The MetadataFilter (proto JSON) that ANDs every --filter expression; {} for none."""
    conditions: list[dict[str, Any]] = []
    negated: list[dict[str, Any]] = []
    for expression in expressions or ():
        is_negated, condition = _condition(expression)
        (negated if is_negated else conditions).append(condition)
    result: dict[str, Any] = {}
    if conditions:
        result["conditions"] = conditions
    if negated:
        result["none"] = negated
    return result


# --- images -------------------------------------------------------------------------------


def _images(rt: Runtime, paths: Sequence[Path]) -> list[dict[str, str]]:
    """Image messages (inline bytes) of local files."""
    images = []
    for path in paths:
        if not path.is_file():
            fail(rt, f"{escape(str(path))} is not a file")
        images.append({"data": base64.b64encode(path.read_bytes()).decode("ascii")})
    return images


def _score(value: Any) -> str:
    return f"{float(value or 0.0):.4f}"


# --- collections --------------------------------------------------------------------------


def _collection_rows(collection: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("name", escape(str(collection.get("name", "-")))),
        ("model", escape(str(collection.get("model") or "- (vectors only)"))),
        ("dim", str(collection.get("dim", "-"))),
        ("distance", escape(str(collection.get("distance") or "-"))),
        ("points", number(int(collection.get("pointsCount") or 0))),
        ("created", timestamp(collection.get("createTime"))),
    ]


def _show_collection(rt: Runtime, response: Mapping[str, Any]) -> None:
    details(rt.out, _collection_rows(response.get("collection") or {}))


@collections_app.command("list")
def collections_list(
    ctx: typer.Context, limit: LimitOption = 100, json_out: JsonOption = False
) -> None:
    """List your collections by name, with their point counts."""

    def show(rt: Runtime, collections: list[dict[str, Any]]) -> None:
        result = table("NAME", "MODEL", "DIM", "DISTANCE", "POINTS", "CREATED")
        for c in collections:
            result.add_row(
                escape(str(c.get("name", ""))),
                escape(str(c.get("model") or "-")),
                str(c.get("dim", "-")),
                escape(str(c.get("distance") or "-")),
                number(int(c.get("pointsCount") or 0)),
                timestamp(c.get("createTime")),
            )
        rt.out.print(result if collections else "No collections.")

    respond(
        ctx,
        lambda client: list(client.list_collections(limit=limit)),
        json_out=json_out,
        show=show,
        as_json=lambda collections: {"collections": collections},
    )


@collections_app.command("get")
def collections_get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    json_out: JsonOption = False,
) -> None:
    """Show a collection: its model, dimension and point count."""
    respond(
        ctx, lambda client: client.get_collection(name), json_out=json_out, show=_show_collection
    )


@collections_app.command("create")
def collections_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    model: Annotated[
        str | None,
        typer.Option(help="Embedding model (dinov2_vits14, mv-<model_version_id>...)."),
    ] = None,
    dim: Annotated[
        int | None, typer.Option(help="Vector dimension (needed without --model).", min=1)
    ] = None,
    distance: Annotated[str | None, typer.Option(help="cosine (default), dot or euclid.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an empty collection bound to an embedding model."""
    body: dict[str, Any] = {"name": name}
    if model:
        body["model"] = model
    if dim is not None:
        body["dim"] = dim
    if distance:
        body["distance"] = distance
    respond(
        ctx, lambda client: client.create_collection(body), json_out=json_out, show=_show_collection
    )


@collections_app.command("delete")
def collections_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME")],
    json_out: JsonOption = False,
) -> None:
    """Delete a collection and all its points."""

    def show(rt: Runtime, response: Mapping[str, Any]) -> None:
        points = int((response.get("collection") or {}).get("pointsCount") or 0)
        rt.out.print(f"Deleted collection [bold]{escape(name)}[/] ({number(points)} points).")

    respond(ctx, lambda client: client.delete_collection(name), json_out=json_out, show=show)


# --- embed, search, match -----------------------------------------------------------------


def embed(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...")],
    model: Annotated[
        str | None, typer.Option(help="Embedding model (default: the service's).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Embed images: one vector each (the vectors themselves with --json)."""
    rt = runtime(ctx)
    body: dict[str, Any] = {"images": _images(rt, images)}
    if model:
        body["model"] = model

    def show(rt: Runtime, response: Mapping[str, Any]) -> None:
        rt.out.print(
            f"Model [bold]{escape(str(response.get('model', '')))}[/], "
            f"{response.get('dim', 0)} dimensions"
        )
        result = table("IMAGE", "DIM", "NORM", "FIRST VALUES")
        for path, embedding in zip(images, response.get("embeddings") or [], strict=False):
            vector = [float(v) for v in embedding.get("vector") or []]
            norm = math.sqrt(sum(v * v for v in vector))
            head = ", ".join(f"{v:.3f}" for v in vector[:4])
            result.add_row(escape(path.name), str(len(vector)), f"{norm:.3f}", head)
        rt.out.print(result)

    respond(ctx, lambda client: client.embed(body), json_out=json_out, show=show)


def search(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(metavar="IMAGE")],
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to search.")],
    filters: FilterOption = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Results.", min=1)] = None,
    threshold: Annotated[float | None, typer.Option(help="Drop results scoring below it.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Find a collection's points nearest to an image, optionally filtered by payload."""
    rt = runtime(ctx)
    body: dict[str, Any] = {"image": _images(rt, [image])[0]}
    metadata_filter = parse_filters(filters)
    if metadata_filter:
        body["filter"] = metadata_filter
    if top_k is not None:
        body["topK"] = top_k
    if threshold is not None:
        body["scoreThreshold"] = threshold

    def show(rt: Runtime, response: Mapping[str, Any]) -> None:
        points = response.get("points") or []
        result = table("ID", "PRODUCT", "SCORE")
        for point in points:
            result.add_row(
                escape(str(point.get("id", ""))),
                escape(str(point.get("productId") or "-")),
                _score(point.get("score")),
            )
        rt.out.print(result if points else "No results.")

    respond(ctx, lambda client: client.search(collection, body), json_out=json_out, show=show)


def _box(detection: Mapping[str, Any]) -> str:
    box = detection.get("box") or {}
    corners = (box.get(k, 0.0) for k in ("x1", "y1", "x2", "y2"))
    name = detection.get("className") or str(detection.get("classId", 0))
    return escape(f"{name} [{', '.join(f'{float(v):.0f}' for v in corners)}]")


def _match_cells(matched: bool, products: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    if not matched or not products:
        return "[dim]no match[/]", "-"
    best = products[0]
    return escape(str(best.get("productId", ""))), _score(best.get("score"))


def match(
    ctx: typer.Context,
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...")],
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="Collection of product images.")
    ],
    threshold: Annotated[
        float | None, typer.Option(help="Below it an image is 'no match'.")
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", help="Products per image.", min=1)
    ] = None,
    detector: Annotated[
        str | None,
        typer.Option(
            "--detector", metavar="DEPLOYMENT", help="Match every object a detector finds."
        ),
    ] = None,
    filters: FilterOption = None,
    json_out: JsonOption = False,
) -> None:
    """Match images (or, with --detector, each object in them) to a collection's products."""
    rt = runtime(ctx)
    body: dict[str, Any] = {"images": _images(rt, images)}
    if threshold is not None:
        body["threshold"] = threshold
    if top_k is not None:
        body["topK"] = top_k
    if detector:
        body["detectorDeployment"] = detector
    metadata_filter = parse_filters(filters)
    if metadata_filter:
        body["filter"] = metadata_filter

    def show(rt: Runtime, response: Mapping[str, Any]) -> None:
        if detector:
            result = table("IMAGE", "OBJECT", "PRODUCT", "SCORE")
        else:
            result = table("IMAGE", "PRODUCT", "SCORE")
        for path, matches in zip(images, response.get("results") or [], strict=False):
            if not detector:
                result.add_row(
                    escape(path.name),
                    *_match_cells(bool(matches.get("matched")), matches.get("products") or []),
                )
                continue
            objects = matches.get("objects") or []
            if not objects:
                result.add_row(escape(path.name), "[dim]no objects[/]", "-", "-")
            for found in objects:
                result.add_row(
                    escape(path.name),
                    _box(found.get("detection") or {}),
                    *_match_cells(bool(found.get("matched")), found.get("products") or []),
                )
        rt.out.print(result)

    respond(ctx, lambda client: client.match(collection, body), json_out=json_out, show=show)


# --- embedding jobs -----------------------------------------------------------------------


def embedding_spec(
    *,
    collection: str,
    catalog: str | None = None,
    products: str | None = None,
    filters: Sequence[str] | None = None,
    dataset: str | None = None,
    model: str | None = None,
    create_missing: bool = True,
) -> dict[str, Any]:
    """The EmbeddingJobSpec (proto JSON) the embedding-job options describe."""
    if bool(catalog) == bool(dataset):
        raise typer.BadParameter("give exactly one of --catalog and --dataset")
    if dataset and (products or filters):
        raise typer.BadParameter("--products and --filter select products of a --catalog")
    if products and filters:
        raise typer.BadParameter("give --products or --filter, not both")
    spec: dict[str, Any] = {
        "routing": {"defaultCollection": collection, "createMissing": create_missing}
    }
    if dataset:
        spec["dataset"] = {"datasetId": dataset}
    elif products:
        ids = [part.strip() for part in products.split(",") if part.strip()]
        if not ids:
            raise typer.BadParameter("no product ids", param_hint="--products")
        spec["products"] = {"datasetId": catalog, "productIds": ids}
    else:
        source: dict[str, Any] = {"datasetId": catalog}
        metadata_filter = parse_filters(filters)
        if metadata_filter:
            source["filter"] = metadata_filter
        spec["metadataFilter"] = source
    if model:
        spec["model"] = model
    return spec


def _show_result(rt: Runtime, result: Mapping[str, Any]) -> None:
    rt.out.print(
        f"Embedded {number(int(result.get('imagesEmbedded') or 0))} of "
        f"{number(int(result.get('imagesSelected') or 0))} image(s); "
        f"{number(int(result.get('imagesSkipped') or 0))} skipped."
    )
    written = table("COLLECTION", "POINTS")
    for entry in result.get("collections") or []:
        written.add_row(
            escape(str(entry.get("collection", ""))), number(int(entry.get("points") or 0))
        )
    rt.out.print(written)
    skipped = result.get("skipped") or []
    if skipped:
        reasons = table("SKIPPED", "REASON", "WHY")
        for entry in skipped:
            reasons.add_row(
                escape(str(entry.get("key", ""))),
                escape(str(entry.get("reason", ""))),
                escape(str(entry.get("message", ""))),
            )
        rt.out.print(reasons)


def embedding_job(
    ctx: typer.Context,
    collection: Annotated[
        str, typer.Option("--collection", "-c", help="Collection the vectors go to.")
    ],
    catalog: Annotated[
        str | None,
        typer.Option(metavar="DATASET_ID", help="A catalog dataset: its products' images."),
    ] = None,
    products: Annotated[
        str | None, typer.Option(metavar="ID,...", help="With --catalog: only these products.")
    ] = None,
    filters: FilterOption = None,
    dataset: Annotated[
        str | None,
        typer.Option(metavar="DATASET_ID", help="Every image of a dataset (any format)."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Embedding model (default: the collection's)."),
    ] = None,
    create_missing: Annotated[
        bool,
        typer.Option(help="Create the collection when it does not exist yet."),
    ] = True,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job and show its result.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Embed a catalogue's products (all, listed or filtered) or a dataset into a collection."""
    rt = runtime(ctx)
    spec = embedding_spec(
        collection=collection,
        catalog=catalog,
        products=products,
        filters=filters,
        dataset=dataset,
        model=model,
        create_missing=create_missing,
    )
    with rt.client() as client:
        response = client.create_embedding_job(spec)
        job = response.get("job") or {}
        job_id = str(job.get("id", ""))
        if json_out and not watch:
            print_json(response)
            return
        if not json_out:
            rt.out.print(
                f"Created embedding job [bold]{job_id}[/] "
                f"({styled_state(job.get('state'), 'JOB_STATE_')})"
            )
        if not watch:
            rt.out.print(f"Follow it with: visionmesh jobs watch {job_id}")
            return
        code = watch_job(rt, client, job_id, json_out=json_out)
        result = (client.get_job(job_id).get("job") or {}).get("result")
    if result and not json_out:
        _show_result(rt, result)
    elif result:
        typer.echo(json.dumps({"result": result}, separators=(",", ":")))
    raise typer.Exit(code)
