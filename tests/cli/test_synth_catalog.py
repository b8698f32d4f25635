"""Synthetic product catalogues: deterministic, distinct products, known metadata subsets."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner
from visionmesh.cli.app import app
from visionmesh.cli.synth import (
    CATALOG_BRANDS,
    CATALOG_CATEGORIES,
    MAX_CATALOG_PRODUCTS,
    make_catalog_dataset,
    render_catalog_queries,
)

from tests.cli.test_app import FakeGateway


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_arguments_same_files_and_more_products_keep_the_first(tmp_path: Path) -> None:
    first = make_catalog_dataset(tmp_path / "a", n_products=5, renders=3, imgsz=40, seed=7)
    second = make_catalog_dataset(tmp_path / "b", n_products=5, renders=3, imgsz=40, seed=7)
    larger = make_catalog_dataset(tmp_path / "c", n_products=9, renders=3, imgsz=40, seed=7)
    other = make_catalog_dataset(tmp_path / "d", n_products=5, renders=3, imgsz=40, seed=8)

    assert files(first.root) == files(second.root)
    assert first.products == second.products
    assert larger.products[:5] == first.products
    big = files(larger.root)
    assert all(big[name] == data for name, data in files(first.root).items() if "images/" in name)
    assert files(other.root)["images/p0000/00.jpg"] != files(first.root)["images/p0000/00.jpg"]


def test_products_jsonl_lists_what_was_returned(tmp_path: Path) -> None:
    catalog = make_catalog_dataset(tmp_path, n_products=4, renders=2, imgsz=32, seed=0)

    lines = (tmp_path / "products.jsonl").read_text().splitlines()

    assert [json.loads(line) for line in lines] == [
        {"id": p.id, **p.metadata} for p in catalog.products
    ]
    assert catalog.image_count == 8
    for product in catalog.products:
        assert product.images == (f"images/{product.id}/00.jpg", f"images/{product.id}/01.jpg")
        assert all((tmp_path / image).is_file() for image in product.images)
        renders = {(tmp_path / image).read_bytes() for image in product.images}
        assert len(renders) == 2  # different scale/rotation/background/position


def test_every_product_is_a_distinct_look_and_filters_select_known_subsets(
    tmp_path: Path,
) -> None:
    catalog = make_catalog_dataset(tmp_path, n_products=40, renders=1, imgsz=24, seed=1)

    looks = {(p.shape, p.colour, p.texture) for p in catalog.products}
    assert len(looks) == 40
    for index, product in enumerate(catalog.products):
        assert product.metadata["brand"] == CATALOG_BRANDS[index % 4]
        assert product.metadata["category"] == CATALOG_CATEGORIES[(index // 4) % 5]
        assert product.metadata["attributes"] == {
            "shape": product.shape,
            "colour": product.colour,
            "texture": product.texture,
        }
        assert isinstance(product.metadata["price"], float)
    acme_footwear = [
        p.id
        for p in catalog.products
        if p.metadata["brand"] == "acme" and p.metadata["category"] in ("shoes", "boots")
    ]
    assert acme_footwear == ["p0000", "p0004", "p0020", "p0024"]
    assert len({p.metadata["brand"] for p in catalog.products}) == len(CATALOG_BRANDS)


def test_held_out_queries_are_new_renders_of_known_products(tmp_path: Path) -> None:
    catalog = make_catalog_dataset(tmp_path / "cat", n_products=3, renders=2, imgsz=48, seed=0)

    queries = render_catalog_queries(catalog, tmp_path / "q", per_product=3, seed=5)
    again = render_catalog_queries(catalog, tmp_path / "q2", per_product=3, seed=5)

    assert [(q.path.parent.name, q.product_id) for q in queries] == [
        (p.id, p.id) for p in catalog.products for _ in range(3)
    ]
    references = set(files(catalog.root / "images").values())
    assert not references & {q.path.read_bytes() for q in queries}
    assert [q.path.read_bytes() for q in queries] == [q.path.read_bytes() for q in again]


def test_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_CATALOG_PRODUCTS} products"):
        make_catalog_dataset(tmp_path, n_products=MAX_CATALOG_PRODUCTS + 1, renders=1)
    with pytest.raises(ValueError, match="renders must be at least 1"):
        make_catalog_dataset(tmp_path, n_products=1, renders=0)


def test_cli_synth_catalog_writes_a_folder_a_zip_and_queries(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "catalog"
    result = runner.invoke(
        app,
        ["datasets", "synth", str(out), "--task", "catalog", "--products", "5",
         "--renders", "2", "--imgsz", "32", "--zip", "--queries", "1"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert len((out / "products.jsonl").read_text().splitlines()) == 5
    assert len(list((out / "images" / "p0004").iterdir())) == 2
    with zipfile.ZipFile(tmp_path / "catalog.zip") as archive:
        names = archive.namelist()
    assert "products.jsonl" in names and "images/p0000/01.jpg" in names
    assert not any("queries" in name for name in names)
    assert sorted(p.name for p in (tmp_path / "catalog-queries").iterdir()) == [
        f"p{i:04d}" for i in range(5)
    ]
    assert "5 held-out query images" in result.stdout

    only_zip = tmp_path / "out" / "shop.zip"
    result = runner.invoke(
        app,
        ["datasets", "synth", str(only_zip), "--task", "catalog", "--products", "2",
         "--renders", "1", "--imgsz", "32", "--zip"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in only_zip.parent.iterdir()) == ["shop.zip"]


def test_show_a_catalog_dataset_gives_its_products(runner: CliRunner) -> None:
    gw = FakeGateway()
    gw.on(
        "GET /v1/datasets/ds-1",
        {
            "dataset": {
                "id": "ds-1",
                "name": "shop",
                "state": "DATASET_STATE_READY",
                "format": "DATASET_FORMAT_CATALOG",
                "classNames": [],
                "splits": [],
                "imageCount": "96",
                "productCount": "24",
                "productsWithoutImages": "2",
                "sizeBytes": "1000",
            }
        },
    )

    result = gw.invoke(runner, "datasets", "show", "ds-1")

    assert result.exit_code == 0, result.output
    assert "catalog" in result.stdout
    assert "24 (2 without images)" in result.stdout
    assert "96" in result.stdout
