"""Embedding job sources and routing against datasets whose answer is known.

Manifests come from the gateway's own archive inspector over synthetic datasets, so each
source mode is checked against what `make_catalog_dataset` (and the detect/classify makers)
say they wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.cli.synth import (
    CATALOG_BRANDS,
    CATALOG_CATEGORIES,
    SynthCatalog,
    make_catalog_dataset,
    make_classify_dataset,
    make_detect_dataset,
    zip_dataset,
)
from visionmesh.common.datasets import DatasetManifest
from visionmesh.common.errors import InvalidArgument, NotFound
from visionmesh.common.jobs import PermanentJobError
from visionmesh.embedding.core.filters import matches
from visionmesh.embedding.core.proto_filters import filter_from_proto
from visionmesh.embedding.worker.routing import NewCollection, Route, resolve_targets, route
from visionmesh.embedding.worker.sources import catalog_items, dataset_items, image_items
from visionmesh.gateway.core.archive import inspect_archive

N_PRODUCTS = 24
RENDERS = 3


def _manifest(root: Path) -> DatasetManifest:
    archive = zip_dataset(root, root.parent / f"{root.name}.zip")
    return inspect_archive(archive, max_bytes=1 << 30).manifest


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthCatalog, DatasetManifest]:
    root = tmp_path_factory.mktemp("catalog") / "shop"
    answer = make_catalog_dataset(root, n_products=N_PRODUCTS, renders=RENDERS, imgsz=24, seed=3)
    return answer, _manifest(root)


def _sha(root: Path, path: str) -> str:
    return hashlib.sha256((root / path).read_bytes()).hexdigest()


def test_products_are_the_listed_products_images_with_their_metadata(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    answer, manifest = catalog
    base = {"snapshot_id": "s1", "dataset_id": "d1"}

    items = catalog_items(
        manifest, field="spec.products", product_ids=["p0007", "p0002"], base_payload=base
    )

    wanted = [p for p in answer.products if p.id in ("p0002", "p0007")]
    assert [item.key for item in items] == [image for p in wanted for image in p.images]
    assert len(items) == 2 * RENDERS
    for item in items:
        product = next(p for p in wanted if p.id == item.product_id)
        assert item.in_dataset and item.location == item.key and not item.collection
        assert item.payload == {
            **product.metadata,
            "product_id": product.id,
            "path": item.key,
            "snapshot_id": "s1",
            "dataset_id": "d1",
        }
        assert item.source_id == f"{product.id}/{_sha(answer.root, item.key)}"


def test_an_unknown_product_is_named_by_its_position(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    _, manifest = catalog

    with pytest.raises(InvalidArgument) as caught:
        catalog_items(manifest, field="spec.products", product_ids=["p0001", "nope", "zzz"])

    assert caught.value.field_violations[0].field == "spec.products.product_ids[1]"
    assert "'nope'" in caught.value.message and "1 more" in caught.value.message


def test_a_whole_catalogue_is_every_image_of_every_product(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    answer, manifest = catalog

    items = dataset_items(manifest, field="spec.dataset")

    assert len(items) == answer.image_count == N_PRODUCTS * RENDERS
    assert [i.key for i in items] == [image for p in answer.products for image in p.images]
    assert len({i.source_id for i in items}) == len(items)
    assert {i.product_id for i in items} == {p.id for p in answer.products}
    with pytest.raises(InvalidArgument, match=r"spec\.dataset\.splits"):
        dataset_items(manifest, field="spec.dataset", splits=["train"])


def _condition(key: str, **value: Any) -> embedding_pb2.FilterCondition:
    return embedding_pb2.FilterCondition(key=key, **value)


def _selected(manifest: DatasetManifest, message: embedding_pb2.MetadataFilter | None) -> set[str]:
    selector = filter_from_proto(message, field="spec.metadata_filter.filter")
    items = catalog_items(manifest, field="spec.metadata_filter.dataset_id", filter=selector)
    counts: dict[str, int] = {}
    for item in items:
        counts[item.product_id] = counts.get(item.product_id, 0) + 1
    assert set(counts.values()) <= {RENDERS}  # every image of a selected product
    return set(counts)


def test_the_issue_filter_brand_and_category_in_selects_the_known_products(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    answer, manifest = catalog
    acme, (shoes, boots) = CATALOG_BRANDS[0], CATALOG_CATEGORIES[:2]
    message = embedding_pb2.MetadataFilter(
        conditions=[
            _condition("brand", string_value=acme),
            _condition("category", in_strings=embedding_pb2.StringValues(values=[shoes, boots])),
        ]
    )

    # Product i has brand BRANDS[i % 4] and category CATEGORIES[(i // 4) % 5].
    expected = {f"p{i:04d}" for i in range(N_PRODUCTS) if i % 4 == 0 and (i // 4) % 5 in (0, 1)}
    assert expected == {"p0000", "p0004", "p0020"}
    assert _selected(manifest, message) == expected
    assert expected == {
        p.id
        for p in answer.products
        if p.metadata["brand"] == acme and p.metadata["category"] in (shoes, boots)
    }


def test_range_not_or_and_nested_filters_agree_with_the_answer_key(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    answer, manifest = catalog
    message = embedding_pb2.MetadataFilter(
        conditions=[_condition("price", range=embedding_pb2.NumberRange(gte=20.0, lt=80.0))],
        none=[_condition("attributes.shape", string_value=answer.products[0].shape)],
        any_of=[
            embedding_pb2.MetadataFilter(any=[_condition("brand", string_value="globex")]),
            embedding_pb2.MetadataFilter(conditions=[_condition("category", string_value="hats")]),
        ],
    )

    expected = {
        p.id
        for p in answer.products
        if 20.0 <= p.metadata["price"] < 80.0
        and p.metadata["attributes"]["shape"] != answer.products[0].shape
        and (p.metadata["brand"] == "globex" or p.metadata["category"] == "hats")
    }
    assert 0 < len(expected) < N_PRODUCTS
    assert _selected(manifest, message) == expected


def test_an_absent_or_empty_filter_selects_every_product(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    _, manifest = catalog
    everything = {f"p{i:04d}" for i in range(N_PRODUCTS)}

    assert _selected(manifest, None) == everything
    assert _selected(manifest, embedding_pb2.MetadataFilter()) == everything
    assert _selected(manifest, embedding_pb2.MetadataFilter(all_of=[{}])) == everything


def test_a_catalogue_source_refuses_a_detect_dataset(tmp_path: Path) -> None:
    root = tmp_path / "det"
    make_detect_dataset(root, n_train=3, n_val=2, imgsz=32, seed=0)
    manifest = _manifest(root)

    with pytest.raises(InvalidArgument, match=r"spec\.products\.dataset_id: names a detect"):
        catalog_items(manifest, field="spec.products.dataset_id", product_ids=["a"])
    items = dataset_items(manifest, field="spec.dataset", base_payload={"snapshot_id": "s"})
    # Whole images: one point per image, whatever it holds.
    assert [i.key for i in items] == sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*.jpg")
    )
    assert len(items) == 5
    assert {i.payload["split"] for i in items} == {"train", "val"}
    assert all(i.payload["path"] == i.key and not i.product_id for i in items)
    assert len(dataset_items(manifest, field="spec.dataset", splits=["val"])) == 2
    with pytest.raises(InvalidArgument, match=r"spec\.dataset\.class_as_product_id"):
        dataset_items(manifest, field="spec.dataset", class_as_product_id=True)


def test_a_classify_dataset_with_the_class_as_product_id(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    make_classify_dataset(root, n_per_class_train=3, n_per_class_val=2, imgsz=32, seed=0)
    manifest = _manifest(root)

    items = dataset_items(
        manifest, field="spec.dataset", class_as_product_id=True, base_payload={"snapshot_id": "s"}
    )
    plain = dataset_items(manifest, field="spec.dataset", splits=["train"])

    classes = manifest.class_names
    assert len(items) == len(classes) * 5 and len(plain) == len(classes) * 3
    for item in items:
        split, class_name = item.key.split("/")[-3:-1]
        assert item.payload == {
            "snapshot_id": "s",
            "split": split,
            "path": item.key,
            "class_name": class_name,
            "product_id": class_name,
        }
        assert item.product_id == class_name and class_name in classes
        assert item.source_id == f"{class_name}/{_sha(root, item.key)}"
    assert all(i.product_id == "" and "product_id" not in i.payload for i in plain)


def test_listed_images_keep_their_ids_payloads_and_collections() -> None:
    payload = struct_pb2.Struct()
    payload.update({"year": 2024, "ratio": 0.5, "tags": ["a", 3], "kind": "cutout"})
    source = embedding_pb2.ImageListSource(
        images=[
            embedding_pb2.SourceImage(key="shelf/1.jpg", product_id="p1", payload=payload),
            embedding_pb2.SourceImage(key="shelf/2.jpg", id="two", collection="cutouts"),
        ]
    )

    first, second = image_items("t1", source)

    assert (first.source_id, first.location, first.in_dataset) == (
        "shelf/1.jpg",
        "tenants/t1/shelf/1.jpg",
        False,
    )
    # Struct numbers are doubles; integral ones come back as ints so int filters match.
    assert first.payload == {
        "year": 2024,
        "ratio": 0.5,
        "tags": ["a", 3],
        "kind": "cutout",
        "image_key": "shelf/1.jpg",
        "product_id": "p1",
    }
    assert type(first.payload["year"]) is int
    assert (second.source_id, second.collection, second.field) == (
        "two",
        "cutouts",
        "spec.images.images[1]",
    )
    with pytest.raises(InvalidArgument) as caught:
        image_items(
            "t1",
            embedding_pb2.ImageListSource(
                images=[
                    embedding_pb2.SourceImage(key="a.jpg"),
                    embedding_pb2.SourceImage(key="../x"),
                ]
            ),
        )
    assert caught.value.field_violations[0].field == "spec.images.images[1].key"


# --- routing -----------------------------------------------------------------------------------


ROUTING = embedding_pb2.CollectionRouting(
    default_collection="products", field="kind", routes={"cutout": "cutouts", "ref": "products"}
)


@pytest.mark.parametrize(
    ("payload", "collection", "expected"),
    [
        ({"kind": "cutout"}, "", Route("cutouts", 'spec.routing.routes["cutout"]')),
        ({"kind": "ref"}, "", Route("products", 'spec.routing.routes["ref"]')),
        ({"kind": "shelves"}, "", Route("shelves", "spec.routing.field")),
        ({"kind": ""}, "", Route("products", "spec.routing.default_collection")),
        ({"kind": 3}, "", Route("products", "spec.routing.default_collection")),
        ({}, "", Route("products", "spec.routing.default_collection")),
        ({"kind": "cutout"}, "mine", Route("mine", "spec.images.images[0].collection")),
    ],
)
def test_each_image_is_routed_by_its_collection_then_the_field_then_the_default(
    payload: dict[str, Any], collection: str, expected: Route
) -> None:
    got = route(
        ROUTING,
        payload,
        collection=collection,
        collection_field="spec.images.images[0].collection",
    )

    assert got == expected


def test_without_a_field_everything_goes_to_the_default() -> None:
    routing = embedding_pb2.CollectionRouting(default_collection="all")

    assert route(routing, {"kind": "cutout"}).collection == "all"


class Registry:
    """The collections table, as a dict: (tenant, name) -> (space, model, dim)."""

    def __init__(self, rows: dict[tuple[str, str], tuple[str, str, int]]) -> None:
        self.rows = dict(rows)
        self.created: list[tuple[str, NewCollection]] = []

    async def resolve(
        self, tenant_id: str, name: str, *, create_with: NewCollection | None
    ) -> tuple[str, str, int, str]:
        row = self.rows.get((tenant_id, name))
        if row is None:
            if create_with is None:
                raise NotFound(resource_type="collection", resource_id=name)
            row = (f"space-{create_with.model}", create_with.model, create_with.dim)
            self.rows[(tenant_id, name)] = row
            self.created.append((name, create_with))
        return (*row, f"key-{name}")


async def test_every_target_is_checked_and_a_mismatch_names_the_field_that_chose_it() -> None:
    registry = Registry(
        {
            ("t", "products"): ("s", "dino", 32),
            ("t", "cutouts"): ("s2", "other", 32),
            ("u", "cutouts"): ("s", "dino", 32),
        }
    )
    routes = [
        route(ROUTING, {"kind": "ref"}),
        route(ROUTING, {}),
        route(ROUTING, {"kind": "cutout"}),
    ]

    with pytest.raises(InvalidArgument) as caught:
        await resolve_targets(registry, "t", routes, model="dino", dim=32, routing=ROUTING)
    assert caught.value.field_violations[0].field == 'spec.routing.routes["cutout"]'
    assert "'other'" in caught.value.message

    # Another tenant's collection of the same name is its own.
    targets = await resolve_targets(
        registry, "u", routes[2:], model="dino", dim=32, routing=ROUTING
    )
    assert set(targets) == {"cutouts"}
    with pytest.raises(InvalidArgument, match=r"spec\.routing\.default_collection.*16-d"):
        await resolve_targets(registry, "t", routes[1:2], model="dino", dim=16, routing=ROUTING)


async def test_a_missing_target_fails_unless_created_with_the_jobs_model() -> None:
    registry = Registry({("t", "products"): ("s", "dino", 32)})
    routes = [route(ROUTING, {"kind": "shelves"}), route(ROUTING, {})]

    with pytest.raises(PermanentJobError) as caught:
        await resolve_targets(registry, "t", routes, model="dino", dim=32, routing=ROUTING)
    assert caught.value.reason == "COLLECTION_NOT_FOUND"
    assert caught.value.message.startswith("spec.routing.field: collection 'shelves'")
    assert registry.created == []

    creating = embedding_pb2.CollectionRouting()
    creating.CopyFrom(ROUTING)
    creating.create_missing = True
    creating.distance = "dot"
    targets = await resolve_targets(registry, "t", routes, model="dino", dim=32, routing=creating)
    assert sorted(targets) == ["products", "shelves"]
    assert registry.created == [("shelves", NewCollection("dino", 32, "dot"))]


async def test_a_routed_value_that_is_no_collection_name_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        await resolve_targets(
            Registry({}),
            "t",
            [route(ROUTING, {"kind": "Big Shelf"})],
            model="m",
            dim=4,
            routing=ROUTING,
        )
    assert caught.value.field_violations[0].field == "spec.routing.field"


def test_the_filter_oracle_sees_product_ids_too(
    catalog: tuple[SynthCatalog, DatasetManifest],
) -> None:
    _, manifest = catalog
    message = embedding_pb2.MetadataFilter(
        conditions=[
            _condition(
                "product_id", in_strings=embedding_pb2.StringValues(values=["p0001", "p0005"])
            )
        ]
    )

    assert _selected(manifest, message) == {"p0001", "p0005"}
    assert matches(None, {})
