"""Product catalogues (format `catalog`): validation, manifest, finalize, snapshot, cache, REST.

A catalogue is `products.jsonl` (one JSON object per line: an "id" plus free metadata) and
`images/<product_id>/*`. The archive tests run the inspector alone; the rest finalize real
uploads against S3 and SQL (SQLite and PostgreSQL) and materialise the snapshot as a worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import datasets_pb2
from visionmesh.cli.synth import SynthCatalog, make_catalog_dataset, zip_dataset
from visionmesh.common.auth import Principal, bind_principal
from visionmesh.common.datasets import DataError, DatasetCache, DatasetManifest, ManifestProduct
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.errors import InvalidArgument, NotFound
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.gateway.app import MIGRATIONS
from visionmesh.gateway.core.archive import ARCHIVE_FIELD, Reason, inspect_archive
from visionmesh.gateway.core.datasets import DatasetsCore
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import upload_dataset
from tests.gateway.test_archive import (
    Entry,
    detect_entries,
    inspect,
    jpeg,
    only_violation,
    png,
    rejection,
    replace,
    write_zip,
)

MAX_BYTES = 50 << 20


def products_jsonl(*records: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


SHOE = {"id": "shoe-1", "name": "Runner", "brand": "nike", "category": "shoes", "price": 99.5}
BOOT = {
    "id": "boot-2",
    "name": "Hiker",
    "brand": "acme",
    "category": "boots",
    "specs": {"sizes": [40, 41, 42], "waterproof": True, "sole": None},
}
HAT = {"id": "hat 3", "name": "Cap", "brand": "acme"}


def catalog_entries(prefix: str = "") -> list[Entry]:
    return [
        (f"{prefix}products.jsonl", products_jsonl(SHOE, BOOT, HAT)),
        (f"{prefix}images/shoe-1/front.jpg", jpeg(1)),
        (f"{prefix}images/shoe-1/side.png", png(2)),
        (f"{prefix}images/boot-2/a.jpg", jpeg(3)),
        (f"{prefix}images/hat 3/views/top.jpg", jpeg(4)),  # deeper folders belong to the id
        (f"{prefix}README.md", b"our catalogue"),
    ]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- good archives ------------------------------------------------------------------------


def test_catalog_is_counted_and_manifested(tmp_path: Path) -> None:
    entries = catalog_entries()
    data = dict(entries)

    report = inspect(tmp_path, entries)

    assert report.format == "catalog"
    assert (report.class_names, report.splits, report.root_prefix) == ([], [], "")
    assert (report.image_count, report.product_count, report.products_without_images) == (4, 3, 0)
    manifest = report.manifest
    assert manifest.version == 3
    assert [p.id for p in manifest.products] == ["boot-2", "hat 3", "shoe-1"]
    boot, hat, shoe = manifest.products
    assert boot.metadata == {k: v for k, v in BOOT.items() if k != "id"}
    assert shoe.metadata == {"name": "Runner", "brand": "nike", "category": "shoes", "price": 99.5}
    assert [(i.path, i.size, i.sha256) for i in shoe.images] == [
        (name, len(data[name]), sha(data[name]))
        for name in ("images/shoe-1/front.jpg", "images/shoe-1/side.png")
    ]
    assert [i.path for i in hat.images] == ["images/hat 3/views/top.jpg"]
    # Every file is in the manifest, products.jsonl and the README included.
    assert {f.path for f in manifest.files} == set(data)
    document = json.loads(manifest.to_json())
    assert document["version"] == 3 and document["format"] == "catalog"
    assert document["products"][0] == {
        "id": "boot-2",
        "metadata": {k: v for k, v in BOOT.items() if k != "id"},
        "images": ["images/boot-2/a.jpg"],
    }
    assert DatasetManifest.from_json(manifest.to_json()) == manifest
    assert report.manifest_sha256 == sha(manifest.to_json())


def test_catalog_in_a_wrapping_folder_and_in_any_zip_order(tmp_path: Path) -> None:
    top = inspect(tmp_path, catalog_entries())
    wrapped = inspect(tmp_path, list(reversed(catalog_entries("shop-2024/"))))

    assert wrapped.format == "catalog"
    assert wrapped.root_prefix == "shop-2024/"
    assert wrapped.manifest.products == top.manifest.products
    members = dict(wrapped.manifest.members())
    assert members["shop-2024/images/boot-2/a.jpg"].path == "images/boot-2/a.jpg"


def test_products_without_images_are_kept_and_counted(tmp_path: Path) -> None:
    # As a detection class without instances is: the product is known, it just has no
    # reference image yet.
    entries = replace(
        catalog_entries(),
        "products.jsonl",
        products_jsonl(SHOE, BOOT, HAT, {"id": "sock-4", "brand": "nike"}),
    )

    report = inspect(tmp_path, entries)

    assert (report.product_count, report.products_without_images, report.image_count) == (4, 1, 4)
    sock = report.manifest.product("sock-4")
    assert sock == ManifestProduct("sock-4", {"brand": "nike"}, ())


def test_blank_lines_crlf_and_a_bom_are_accepted(tmp_path: Path) -> None:
    raw = b"\xef\xbb\xbf" + products_jsonl(SHOE).replace(b"\n", b"\r\n") + b"\n  \n"
    raw += products_jsonl(BOOT)
    entries = replace(catalog_entries(), "products.jsonl", raw)
    entries = [(n, d) for n, d in entries if "hat 3" not in str(n)]

    report = inspect(tmp_path, entries)

    assert [p.id for p in report.manifest.products] == ["boot-2", "shoe-1"]


def test_synthetic_catalog_zip_is_accepted_with_its_answer_key(tmp_path: Path) -> None:
    catalog = make_catalog_dataset(tmp_path / "cat", n_products=6, renders=2, imgsz=48, seed=3)
    archive = zip_dataset(catalog.root, tmp_path / "cat.zip")

    report = inspect_archive(archive, max_bytes=MAX_BYTES)

    assert report.format == "catalog"
    assert (report.product_count, report.image_count) == (6, 12)
    by_id = {p.id: p for p in report.manifest.products}
    for product in catalog.products:
        assert by_id[product.id].metadata == product.metadata
        assert tuple(i.path for i in by_id[product.id].images) == product.images


# --- rejections ---------------------------------------------------------------------------


def _with_products(raw: bytes, prefix: str = "") -> list[Entry]:
    return replace(catalog_entries(prefix), f"{prefix}products.jsonl", raw)


@pytest.mark.parametrize(
    ("raw", "description"),
    [
        (b'{"id": "shoe-1"\n', "line 1: not valid JSON: Expecting ',' delimiter"),
        (b"[1, 2]\n", "line 1: expected a JSON object, got a list"),
        (b'"shoe-1"\n', "line 1: expected a JSON object, got a string"),
        (b'{"name": "x"}\n', 'line 1: no "id"'),
        (b'{"id": ""}\n', 'line 1: "id" must not be empty'),
        (b'{"id": "  "}\n', 'line 1: "id" must not be empty'),
        (b'{"id": 7}\n', 'line 1: "id" must be a string, got a number'),
        (b'{"id": null}\n', 'line 1: "id" must be a string, got null'),
        (b'{"id": "a/b"}\n', "line 1: \"id\" must not contain '/'"),
        (b'{"id": "a\\\\b"}\n', "line 1: \"id\" must not contain '/' or '\\'"),
        (b'{"id": ".."}\n', "line 1: \"id\" '..' cannot name a folder"),
        (b'{"id": " x"}\n', "must not start or end with whitespace"),
        (b'{"id": "a\\u0001"}\n', "control characters"),
        (('{"id": "' + "x" * 256 + '"}\n').encode(), "256 bytes long, over the limit of 255"),
        (b'{"id": "shoe-1", "_rank": 1}\n', "line 1: key '_rank': keys starting with '_'"),
        (b'{"id": "shoe-1", "price": NaN}\n', "line 1: not valid JSON: NaN is not a JSON number"),
        (b'{"id": "shoe-1", "w": -Infinity}\n', "-Infinity is not a JSON number"),
        (b'{"id": "shoe-1", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "not valid JSON"),
        (
            b'{"id": "shoe-1", "blob": "' + b"x" * (17 << 10) + b'"}\n',
            "over the limit of 16384",
        ),
        (b"\n\n", "lists no products"),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_bad_products_lines_are_rejected_naming_file_and_line(
    tmp_path: Path, raw: bytes, description: str
) -> None:
    entries = [(n, d) for n, d in _with_products(raw, "shop/") if "images/" not in str(n)]
    # Not reported as an unlisted product's folder: its line is the one reported.
    entries.append(("shop/images/shoe-1/a.jpg", jpeg(1)))

    error = rejection(tmp_path, entries)

    problems = [(v.field, v.reason) for v in error.field_violations]
    assert problems == [("shop/products.jsonl", Reason.BAD_PRODUCTS)], error.field_violations
    assert description in error.field_violations[0].description
    assert error.message.startswith("invalid dataset archive: shop/products.jsonl: ")


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    raw = products_jsonl(SHOE, BOOT, HAT, {"id": "boot-2", "name": "again"})

    field, description, reason = only_violation(rejection(tmp_path, _with_products(raw)))

    assert (field, reason) == ("products.jsonl", Reason.BAD_PRODUCTS)
    assert description == "line 4: duplicate id 'boot-2' (first on line 2)"


def test_every_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    raw = products_jsonl(SHOE, {"id": ""}, BOOT, {"id": "x", "_y": 1}, HAT) + b"oops\n"

    error = rejection(tmp_path, _with_products(raw))

    assert [v.description.split(":")[0] for v in error.field_violations] == [
        "line 2",
        "line 4",
        "line 6",
    ]


def test_image_folder_of_an_unlisted_product_is_rejected(tmp_path: Path) -> None:
    entries = [
        *catalog_entries("shop/"),
        ("shop/images/ghost/1.jpg", jpeg(7)),
        ("shop/images/ghost/2.jpg", jpeg(8)),
    ]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("shop/images/ghost/", Reason.UNKNOWN_PRODUCT)
    assert description == "product 'ghost' is not listed in products.jsonl"


def test_image_outside_a_product_folder_is_rejected(tmp_path: Path) -> None:
    entries = [*catalog_entries(), ("images/loose.jpg", jpeg(7))]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("images/loose.jpg", Reason.MISPLACED_IMAGE)
    assert "images/<product_id>/loose.jpg" in description


def test_non_image_file_in_a_product_folder_is_rejected(tmp_path: Path) -> None:
    entries = [*catalog_entries(), ("images/shoe-1/notes.txt", b"front view")]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("images/shoe-1/notes.txt", Reason.BAD_IMAGE)
    assert description.startswith("not an image file (expected .bmp, .jpeg, .jpg")


def test_corrupt_product_image_is_rejected_by_the_image_checks(tmp_path: Path) -> None:
    entries = replace(catalog_entries("shop/"), "shop/images/boot-2/a.jpg", jpeg(3)[:200])

    field, _, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("shop/images/boot-2/a.jpg", Reason.BAD_IMAGE)


def test_catalog_without_any_image_is_rejected(tmp_path: Path) -> None:
    entries: list[Entry] = [("products.jsonl", products_jsonl(SHOE, BOOT))]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == (ARCHIVE_FIELD, Reason.NO_IMAGES)
    assert "images/<product_id>/<image>" in description


def test_data_yaml_next_to_products_jsonl_is_rejected(tmp_path: Path) -> None:
    entries = [*detect_entries(), *catalog_entries()]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == (ARCHIVE_FIELD, Reason.UNRECOGNISED_LAYOUT)
    assert "both a data.yaml and a products.jsonl in the top level" in description


def test_two_catalogs_in_one_archive_are_rejected(tmp_path: Path) -> None:
    entries = [*catalog_entries("a/"), *catalog_entries("b/")]

    _, description, reason = only_violation(rejection(tmp_path, entries))

    assert reason == Reason.UNRECOGNISED_LAYOUT and "a/, b/" in description


def test_catalog_limits_are_the_archive_limits(tmp_path: Path) -> None:
    entries = catalog_entries()

    too_many = rejection(tmp_path, entries, max_files=len(entries) - 1)
    too_large = rejection(tmp_path, entries, max_bytes=1000)

    assert only_violation(too_many)[2] == Reason.TOO_MANY_FILES
    assert only_violation(too_large)[2] == Reason.ARCHIVE_TOO_LARGE


# --- finalize, snapshot and the worker's cache (SQLite and PostgreSQL, real S3) -----------


@pytest_asyncio.fixture
async def core_env(
    database_url: str, object_store_config: ObjectStoreConfig, tmp_path: Path
) -> AsyncIterator[tuple[DatasetsCore, ObjectStore, Principal, Database]]:
    await run_migrations(database_url=database_url, script_location=MIGRATIONS)
    database = Database(database_url)
    store = ObjectStore(object_store_config)
    await store.ensure_bucket()
    tenant = db.Tenant(id=db.new_id(), name="tenant")
    async with database.session() as session:
        session.add(tenant)
    principal = Principal(subject="user", tenant_id=tenant.id, role="member", kind="user")
    core = DatasetsCore(db=database, store=store, max_bytes=MAX_BYTES, work_dir=tmp_path)
    try:
        yield core, store, principal, database
    finally:
        await database.dispose()
        with contextlib.suppress(NotFound):
            await store.remove_bucket()
        store.close()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthCatalog, Path]:
    tmp = tmp_path_factory.mktemp("catalog")
    catalog = make_catalog_dataset(tmp / "src", n_products=8, renders=3, imgsz=48, seed=0)
    return catalog, zip_dataset(catalog.root, tmp / "catalog.zip")


async def _upload(core: DatasetsCore, store: ObjectStore, archive: Path) -> str:
    dataset, _, _ = await core.create(name="catalog", description="")
    await store.put_file(f"datasets/{dataset.id}/upload.zip", archive)
    return dataset.id


async def test_finalize_snapshot_and_materialise_a_catalog(
    core_env: tuple[DatasetsCore, ObjectStore, Principal, Database],
    synthetic: tuple[SynthCatalog, Path],
    tmp_path: Path,
) -> None:
    core, store, principal, _ = core_env
    catalog, archive = synthetic
    with bind_principal(principal):
        dataset_id = await _upload(core, store, archive)
        dataset = await core.finalize(dataset_id)
        snapshot = await core.create_snapshot(dataset_id, description="v1")
        pinned = await core.snapshot_for_job(snapshot_id=snapshot.id)
        listed, _ = await core.list_datasets(size=10, token="")

    assert dataset.state == datasets_pb2.DATASET_STATE_READY
    assert dataset.format == datasets_pb2.DATASET_FORMAT_CATALOG
    assert (dataset.product_count, dataset.image_count, dataset.products_without_images) == (
        8,
        24,
        0,
    )
    assert (list(dataset.class_names), list(dataset.splits)) == ([], [])
    assert listed[0].product_count == 8
    assert snapshot.format == datasets_pb2.DATASET_FORMAT_CATALOG
    assert (snapshot.product_count, snapshot.image_count) == (8, 24)
    assert snapshot.manifest_sha256 == dataset.manifest_sha256

    # The worker's view: the pinned manifest, materialised and verified.
    cache = DatasetCache(root=tmp_path / "cache", store=store)
    local = await cache.materialise(
        events_pb2.SnapshotRef(
            snapshot_id=pinned.id,
            manifest_key=pinned.manifest_key,
            manifest_sha256=pinned.manifest_sha256,
            archive_key=pinned.archive_key,
        )
    )
    assert not local.cached
    assert local.manifest.format == "catalog"
    assert [p.id for p in local.manifest.products] == [p.id for p in catalog.products]
    for product in catalog.products:
        entry = local.manifest.product(product.id)
        assert entry is not None and entry.metadata == product.metadata
        for image in entry.images:
            data = (local.root / image.path).read_bytes()
            assert data == (catalog.root / image.path).read_bytes()
            assert (len(data), sha(data)) == (image.size, image.sha256)
    assert (local.root / "products.jsonl").is_file()
    with pytest.raises(DataError, match="no training splits"):
        local.ultralytics_data()
    again = await cache.materialise(
        events_pb2.SnapshotRef(
            snapshot_id=pinned.id,
            manifest_key=pinned.manifest_key,
            manifest_sha256=pinned.manifest_sha256,
            archive_key=pinned.archive_key,
        )
    )
    assert again.cached and again.manifest == local.manifest


async def test_a_bad_catalog_fails_the_dataset_naming_file_and_line(
    core_env: tuple[DatasetsCore, ObjectStore, Principal, Database], tmp_path: Path
) -> None:
    core, store, principal, database = core_env
    archive = write_zip(
        tmp_path / "bad.zip",
        _with_products(products_jsonl(SHOE, {"id": "a/b"}, BOOT, HAT), "shop/"),
    )
    with bind_principal(principal):
        dataset_id = await _upload(core, store, archive)
        with pytest.raises(InvalidArgument) as info:
            await core.finalize(dataset_id)
        dataset = await core.get(dataset_id)

    assert [v.field for v in info.value.field_violations] == ["shop/products.jsonl"]
    assert dataset.state == datasets_pb2.DATASET_STATE_FAILED
    assert dataset.failure_reason.startswith('shop/products.jsonl: line 2: "id" must not')
    async with database.session() as session:
        row = await session.get(db.Dataset, dataset_id)
    assert row is not None and row.product_count == 0


# --- through the gateway's REST API ---------------------------------------------------------


async def test_rest_upload_and_finalize_of_a_synthetic_catalog(
    harness: GatewayHarness, synthetic: tuple[SynthCatalog, Path]
) -> None:
    catalog, archive = synthetic
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        result = await upload_dataset(client, archive, name="products")
        assert result["http_status"] == 200, result
        dataset = result["dataset"]
        snapshot = (await client.post(f"/v1/datasets/{dataset['id']}/snapshots", json={})).json()
        shown = (await client.get(f"/v1/datasets/{dataset['id']}")).json()["dataset"]
        # A catalogue is a source for embedding jobs: training on it is refused up front.
        training = await client.post(
            "/v1/training/jobs",
            json={
                "datasetId": dataset["id"],
                "spec": {
                    "framework": "ultralytics",
                    "task": "detect",
                    "model": "yolo11n.yaml",
                    "epochs": 1,
                    "imgsz": 64,
                },
            },
        )

    assert dataset["state"] == "DATASET_STATE_READY"
    assert dataset["format"] == "DATASET_FORMAT_CATALOG"
    assert (int(dataset["productCount"]), int(dataset["imageCount"])) == (8, 24)
    assert int(dataset.get("productsWithoutImages", 0)) == 0
    assert dataset.get("classNames", []) == [] and dataset.get("splits", []) == []
    assert shown["productCount"] == dataset["productCount"]
    assert snapshot["snapshot"]["format"] == "DATASET_FORMAT_CATALOG"
    assert int(snapshot["snapshot"]["productCount"]) == 8
    assert training.status_code == 400, training.text
    assert training.json()["status"] == "FAILED_PRECONDITION"
    assert "product catalog" in training.json()["message"]
    document = json.loads(await harness.gateway.store.get_bytes(dataset["manifestKey"]))
    assert document["version"] == 3
    acme_shoes = {
        p["id"]
        for p in document["products"]
        if p["metadata"]["brand"] == "acme" and p["metadata"]["category"] in ("shoes", "boots")
    }
    assert acme_shoes == {
        p.id
        for p in catalog.products
        if p.metadata["brand"] == "acme" and p.metadata["category"] in ("shoes", "boots")
    }
    assert acme_shoes == {"p0000", "p0004"}
