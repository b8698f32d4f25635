"""Catalogue manifests (version 3): products with metadata and images, strict parsing, cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.datasets import (
    MANIFEST_VERSION,
    SUPPORTED_MANIFEST_VERSIONS,
    DataError,
    DatasetCache,
    DatasetManifest,
    ManifestError,
    ManifestFile,
    ManifestProduct,
    metadata_problem,
    product_id_problem,
)
from visionmesh.common.errors import NotFound
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig

from tests.common.test_dataset_manifest import detect_manifest

SHA = hashlib.sha256(b"x").hexdigest()
FILES = {
    "products.jsonl": b'{"id": "a", "brand": "nike"}\n{"id": "b"}\n{"id": "c"}\n',
    "images/a/1.jpg": b"a-one",
    "images/a/2.jpg": b"a-two",
    "images/b/x/1.png": b"b-one",
}


def entry(path: str) -> ManifestFile:
    data = FILES[path]
    return ManifestFile(path, len(data), hashlib.sha256(data).hexdigest())


def catalog_manifest(**overrides: Any) -> DatasetManifest:
    fields: dict[str, Any] = {
        "format": "catalog",
        "root_prefix": "shop/",
        "class_names": (),
        "splits": (),
        "files": tuple(entry(path) for path in sorted(FILES)),
        "archive_sha256": SHA,
        "archive_size": 99,
        "products": (
            ManifestProduct(
                "a",
                {"brand": "nike", "tags": ["x", {"deep": [1, 2.5, None, True]}]},
                (entry("images/a/1.jpg"), entry("images/a/2.jpg")),
            ),
            ManifestProduct("b", {}, (entry("images/b/x/1.png"),)),
            ManifestProduct("c"),
        ),
    }
    fields.update(overrides)
    return DatasetManifest(**fields)


def test_catalog_round_trip_is_canonical_version_3() -> None:
    manifest = catalog_manifest()

    raw = manifest.to_json()

    assert DatasetManifest.from_json(raw) == manifest
    assert DatasetManifest.from_json(raw).to_json() == raw
    document = json.loads(raw)
    assert document["version"] == manifest.version == MANIFEST_VERSION == 3
    assert SUPPORTED_MANIFEST_VERSIONS == (2, 3)
    assert document["class_names"] == [] and document["splits"] == []
    assert document["products"] == [
        {
            "id": "a",
            "metadata": {"brand": "nike", "tags": ["x", {"deep": [1, 2.5, None, True]}]},
            "images": ["images/a/1.jpg", "images/a/2.jpg"],
        },
        {"id": "b", "metadata": {}, "images": ["images/b/x/1.png"]},
        {"id": "c", "metadata": {}, "images": []},
    ]
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def test_products_are_looked_up_and_counted() -> None:
    manifest = catalog_manifest()

    product = manifest.product("a")

    assert product is not None
    assert [image.sha256 for image in product.images] == [
        hashlib.sha256(b"a-one").hexdigest(),
        hashlib.sha256(b"a-two").hexdigest(),
    ]
    assert manifest.product("zzz") is None
    assert manifest.product_image_count == 3


def test_detect_manifests_are_unchanged_version_2_without_products() -> None:
    raw = detect_manifest().to_json()

    document = json.loads(raw)

    assert document["version"] == 2 and "products" not in document
    assert DatasetManifest.from_json(raw).products == ()


def test_a_catalog_has_no_training_data_dict(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no training splits"):
        catalog_manifest().ultralytics_data(tmp_path)


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(catalog_manifest().to_json())
    document.update(changes)
    return document


def _products(*products: dict[str, Any]) -> dict[str, Any]:
    return _document(products=list(products))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_document(version=2), "a catalog manifest is version 3, not 2"),
        (_document(version=4), "version 4 is not supported (expected 2 or 3)"),
        ({**json.loads(detect_manifest().to_json()), "version": 3}, "detect manifest is version 2"),
        ({**json.loads(detect_manifest().to_json()), "products": []}, "detect manifest has no"),
        (_document(products=[]), "at least one product"),
        (_document(class_names=["a"]), "not class_names or splits"),
        (_products({"id": "a", "metadata": {}, "images": ["images/a/9.jpg"]}), "not in files"),
        (_products({"id": "b", "metadata": {}, "images": ["images/a/1.jpg"]}), "not under"),
        (
            _products(
                {"id": "b", "metadata": {}, "images": []}, {"id": "a", "metadata": {}, "images": []}
            ),
            "sorted by id",
        ),
        (_products({"id": "a/b", "metadata": {}, "images": []}), "must not contain '/'"),
        (_products({"id": "a", "metadata": {"_x": 1}, "images": []}), "reserved"),
        (_products({"id": "a", "metadata": [], "images": []}), "'products.a.metadata' must be"),
        (_products({"id": "a", "images": []}), "'products.a.metadata' must be"),
        (_document(products=[["a"]]), "each product must be an object"),
    ],
)
def test_from_json_refuses_bad_catalog_documents(document: Any, message: str) -> None:
    with pytest.raises(ManifestError, match="invalid dataset manifest") as info:
        DatasetManifest.from_json(json.dumps(document))

    assert message in str(info.value)


def test_an_image_must_match_its_file_entry() -> None:
    wrong = ManifestFile("images/a/1.jpg", 999, SHA)

    with pytest.raises(ManifestError, match="does not match files"):
        catalog_manifest(products=(ManifestProduct("a", {}, (wrong,)),))


@pytest.mark.parametrize(
    ("product_id", "problem"),
    [
        ("sku-123_A.b", None),
        ("Æble ☕", None),
        ("x" * 255, None),
        ("", "must not be empty"),
        (" a", "whitespace"),
        (".", "cannot name a folder"),
        ("..", "cannot name a folder"),
        ("a\\b", "must not contain"),
        ("a\nb", "control characters"),
        ("é" * 128, "256 bytes long"),
        (12, "must be a string, got a number"),
        (True, "got a boolean"),
    ],
)
def test_product_id_rules(product_id: object, problem: str | None) -> None:
    got = product_id_problem(product_id)

    assert got is None if problem is None else (got is not None and problem in got)


def test_metadata_rules() -> None:
    assert metadata_problem({"a": {"b": [1, {"c": None}]}, "price": 1.5}) is None
    assert "reserved" in str(metadata_problem({"_internal": 1}))
    assert "product id" in str(metadata_problem({"id": "x"}))
    assert "not JSON" in str(metadata_problem({"price": float("nan")}))
    assert "over the limit" in str(metadata_problem({"blob": "x" * 20_000}))


# --- the worker's cache materialises a catalogue like any snapshot ---------------------------


@pytest_asyncio.fixture
async def store(object_store_config: ObjectStoreConfig) -> AsyncIterator[ObjectStore]:
    object_store = ObjectStore(object_store_config)
    await object_store.ensure_bucket()
    try:
        yield object_store
    finally:
        with contextlib.suppress(NotFound):
            await object_store.remove_bucket()
        object_store.close()


async def test_dataset_cache_materialises_a_catalog_snapshot(
    store: ObjectStore, tmp_path: Path
) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in FILES.items():
            zf.writestr("shop/" + name, data)
    raw_archive = archive.read_bytes()
    manifest = catalog_manifest(
        archive_sha256=hashlib.sha256(raw_archive).hexdigest(), archive_size=len(raw_archive)
    )
    raw = manifest.to_json()
    await store.put_bytes("c/manifest.json", raw)
    await store.put_file("c/archive.zip", archive)
    ref = events_pb2.SnapshotRef(
        snapshot_id="c",
        manifest_key="c/manifest.json",
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        archive_key="c/archive.zip",
    )
    cache = DatasetCache(root=tmp_path / "cache", store=store)

    local = await cache.materialise(ref)
    again = await cache.materialise(ref)

    assert local.manifest == manifest and not local.cached
    assert again.cached and again.manifest == manifest
    for product in local.manifest.products:
        for image in product.images:
            assert (local.root / image.path).read_bytes() == FILES[image.path]
    assert (local.root / "products.jsonl").read_bytes() == FILES["products.jsonl"]


async def test_dataset_cache_refuses_a_tampered_catalog_image(
    store: ObjectStore, tmp_path: Path
) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in FILES.items():
            zf.writestr("shop/" + name, b"swapped" if name == "images/a/2.jpg" else data)
    raw_archive = archive.read_bytes()
    manifest = catalog_manifest(
        archive_sha256=hashlib.sha256(raw_archive).hexdigest(), archive_size=len(raw_archive)
    )
    raw = manifest.to_json()
    await store.put_bytes("t/manifest.json", raw)
    await store.put_file("t/archive.zip", archive)
    ref = events_pb2.SnapshotRef(
        snapshot_id="t",
        manifest_key="t/manifest.json",
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        archive_key="t/archive.zip",
    )

    with pytest.raises(DataError, match=r"images/a/2\.jpg does not match"):
        await DatasetCache(root=tmp_path / "cache", store=store).materialise(ref)
