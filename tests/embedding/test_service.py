"""EmbeddingCore on real parts: collections with counts, upserts, search, matching, tenants.

SQLite with the service's migrations, Qdrant Edge in a temp dir (qdrant-client local mode
in one test), a tiny random-init DINOv2 and a torchvision backbone, a synthetic catalogue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.embedding.v1 import embedding_pb2 as pb
from visionmesh.cli.synth import SynthCatalog, make_catalog_dataset
from visionmesh.common.auth import bind_principal
from visionmesh.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from visionmesh.common.storage import ObjectStore
from visionmesh.common.tenancy import tenant_key
from visionmesh.common.vision.processing import decode_image
from visionmesh.embedding.core.filters import filter_from_json, matches
from visionmesh.embedding.core.proto_filters import filter_from_proto

from tests.embedding.env import (
    BACKBONE_VERSION,
    DINOV2,
    TENANT_A,
    TENANT_B,
    models_dir,
    running_core,
)

pytestmark = pytest.mark.timeout(120)

BACKBONE = f"mv-{BACKBONE_VERSION}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> SynthCatalog:
    return make_catalog_dataset(
        tmp_path_factory.mktemp("catalog"), n_products=8, renders=3, imgsz=64
    )


def _image(data: bytes) -> image_pb2.Image:
    return image_pb2.Image(data=data)


def _bytes(catalog: SynthCatalog, path: str) -> bytes:
    return (catalog.root / path).read_bytes()


def _points(catalog: SynthCatalog) -> list[pb.ImagePoint]:
    points = []
    for product in catalog.products:
        for path in product.images:
            point = pb.ImagePoint(
                id=path, image=_image(_bytes(catalog, path)), product_id=product.id
            )
            point.payload.update(dict(product.metadata))
            points.append(point)
    return points


def _filter(data: dict[str, Any]) -> pb.MetadataFilter:
    return json_format.ParseDict(data, pb.MetadataFilter())


def _field(error: Any) -> str:
    return str(error.value.field_violations[0].field)


async def _create(core: Any, name: str, model: str = DINOV2, **kwargs: Any) -> pb.Collection:
    result: pb.Collection = await core.create_collection(
        pb.CreateCollectionRequest(name=name, model=model, **kwargs)
    )
    return result


async def test_capabilities_and_embed(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    async with running_core(tmp_path, models) as (core, _):
        capabilities = await core.capabilities()
        assert [(m.name, m.dim, m.family) for m in capabilities.models] == [(DINOV2, 32, "dinov2")]
        assert capabilities.default_model == DINOV2
        paths = catalog.products[0].images
        encoded = [_bytes(catalog, p) for p in paths]
        with bind_principal(TENANT_A):
            response = await core.embed(pb.EmbedRequest(images=[_image(d) for d in encoded]))
            assert (response.model, response.dim, len(response.embeddings)) == (DINOV2, 32, 3)
            vectors = np.asarray([e.vector for e in response.embeddings])
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
            embedder = await core._embedders.get(DINOV2, tenant_id="tenant-a")
            direct = embedder.embed([decode_image(d) for d in encoded])
            np.testing.assert_allclose(vectors, direct, atol=1e-5)
            raw = await core.embed(
                pb.EmbedRequest(model=DINOV2, images=[_image(encoded[0])], normalize=False)
            )
            assert abs(np.linalg.norm(raw.embeddings[0].vector) - 1.0) > 1e-3
            # Our backbone, by its model version, for the tenant that registered it.
            backbone = await core.embed(
                pb.EmbedRequest(model=BACKBONE, images=[_image(encoded[0])])
            )
            assert (backbone.model, backbone.dim) == (BACKBONE, 512)

            bad = [_image(encoded[0]), _image(b"not an image")]
            with pytest.raises(InvalidArgument) as error:
                await core.embed(pb.EmbedRequest(images=bad))
            assert _field(error) == "images[1].data"
            with pytest.raises(InvalidArgument) as error:
                await core.embed(pb.EmbedRequest(images=[image_pb2.Image(key="../b/x.jpg")]))
            assert _field(error) == "images[0].key"
            with pytest.raises(InvalidArgument) as error:
                await core.embed(pb.EmbedRequest(model="dinov2_huge", images=bad[:1]))
            assert _field(error) == "model"
        with bind_principal(TENANT_B), pytest.raises(InvalidArgument) as error:
            # Tenant B has no such model version: another tenant's backbone is unknown.
            await core.embed(pb.EmbedRequest(model=BACKBONE, images=[_image(encoded[0])]))
        assert _field(error) == "model"


async def test_collection_crud_with_counts_and_idempotent_upserts(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    points = _points(catalog)
    async with running_core(tmp_path, models) as (core, _), _tenant(TENANT_A):
        created = await _create(core, "products")
        assert (created.model, created.dim, created.distance) == (DINOV2, 32, "cosine")
        assert created.points_count == 0 and created.tenant_id == "tenant-a"
        with pytest.raises(AlreadyExists):
            await _create(core, "products")
        with pytest.raises(InvalidArgument) as error:
            await _create(core, "wrong-dim", dim=64)
        assert _field(error) == "dim"
        with pytest.raises(InvalidArgument) as error:
            await _create(core, "unknown", model="dinov2_giant")
        assert _field(error) == "model"
        with pytest.raises(InvalidArgument) as error:
            await _create(core, "no-dim", model="")
        assert _field(error) == "dim"
        vectors_only = await _create(core, "vectors", model="", dim=8, distance="euclid")
        assert (vectors_only.model, vectors_only.dim) == ("", 8)
        cutouts = await _create(core, "cutouts", model=BACKBONE)
        assert cutouts.dim == 512

        written = await core.upsert_images(
            pb.UpsertImagesRequest(collection="products", points=points)
        )
        assert list(written.ids) == [p.id for p in points] and written.points_count == 24
        # The same ids again replace, never add (a redelivered write).
        again = await core.upsert_images(
            pb.UpsertImagesRequest(collection="products", points=points[:5])
        )
        assert again.points_count == 24
        assert (await core.get_collection("products")).points_count == 24

        # A collection without a model holds given vectors only.
        with pytest.raises(FailedPrecondition):
            await core.upsert_images(
                pb.UpsertImagesRequest(collection="vectors", points=points[:1])
            )
        bad = pb.ImagePoint(id="x", image=_image(b"garbage"))
        with pytest.raises(InvalidArgument) as error:
            await core.upsert_images(
                pb.UpsertImagesRequest(collection="products", points=[points[0], bad])
            )
        assert _field(error) == "points[1].image.data"
        reserved = pb.ImagePoint(id="y", image=points[0].image)
        reserved.payload.update({"_secret": 1})
        with pytest.raises(InvalidArgument) as error:
            await core.upsert_images(
                pb.UpsertImagesRequest(collection="products", points=[reserved])
            )
        assert _field(error) == "points[0].payload"

        page, token = await core.list_collections(page_size=2, page_token="")
        assert [c.name for c in page] == ["cutouts", "products"] and token
        rest, last = await core.list_collections(page_size=2, page_token=token)
        assert [c.name for c in rest] == ["vectors"] and last == ""
        assert [c.points_count for c in page] == [0, 24]
        with pytest.raises(InvalidArgument):
            await core.list_collections(page_size=2, page_token="%%%")

        deleted = await core.delete_collection("products")
        assert deleted.points_count == 24
        with pytest.raises(NotFound):
            await core.get_collection("products")
        with pytest.raises(NotFound):
            await core.delete_collection("products")
        # A new collection of the same name starts empty.
        assert (await _create(core, "products")).points_count == 0
        assert (await core.get_collection("products")).points_count == 0


async def test_delete_points_by_ids_and_filter(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    points = _points(catalog)
    async with running_core(tmp_path, models) as (core, _), _tenant(TENANT_A):
        await _create(core, "products")
        await core.upsert_images(pb.UpsertImagesRequest(collection="products", points=points))
        by_ids = await core.delete_points(
            pb.DeletePointsRequest(collection="products", ids=[points[0].id, "missing"])
        )
        assert (by_ids.deleted, by_ids.points_count) == (1, 23)
        brand = catalog.products[1].metadata["brand"]
        expected = sum(
            1
            for p in points[1:]
            if matches(
                filter_from_json({"match": {"key": "brand", "value": brand}}),
                json_format.MessageToDict(p.payload),
            )
        )
        by_filter = await core.delete_points(
            pb.DeletePointsRequest(
                collection="products",
                filter=_filter({"conditions": [{"key": "brand", "stringValue": brand}]}),
            )
        )
        assert by_filter.deleted == expected > 0
        assert by_filter.points_count == 23 - expected
        with pytest.raises(InvalidArgument) as error:
            await core.delete_points(pb.DeletePointsRequest(collection="products"))
        assert _field(error) == "ids"
        with pytest.raises(InvalidArgument) as error:
            await core.delete_points(
                pb.DeletePointsRequest(collection="products", filter=pb.MetadataFilter())
            )
        assert _field(error) == "filter"


@pytest.mark.parametrize("store", ["edge", "local"])
async def test_search_by_image_vector_and_point_with_filters(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog, store: str
) -> None:
    points = _points(catalog)
    payloads = {p.id: json_format.MessageToDict(p.payload) for p in points}
    async with running_core(tmp_path, models, store=store) as (core, _vectors), _tenant(TENANT_A):
        await _create(core, "products")
        await core.upsert_images(pb.UpsertImagesRequest(collection="products", points=points))
        target = points[4]

        found = await core.search(pb.SearchRequest(collection="products", image=target.image))
        assert len(found.points) == 10
        best = found.points[0]
        assert (best.id, best.product_id) == (target.id, target.product_id)
        assert best.score == pytest.approx(1.0, abs=1e-4)
        assert json_format.MessageToDict(best.payload) == {
            **payloads[target.id],
            "product_id": target.product_id,
        }
        scores = [p.score for p in found.points]
        assert scores == sorted(scores, reverse=True)

        # The filter: brand = X and category in [...]
        metadata = catalog.product(target.product_id).metadata
        message = _filter(
            {
                "conditions": [
                    {"key": "brand", "stringValue": metadata["brand"]},
                    {"key": "category", "inStrings": {"values": [metadata["category"], "hats"]}},
                ]
            }
        )
        oracle = filter_from_proto(message)
        allowed = {pid for pid, payload in payloads.items() if matches(oracle, payload)}
        filtered = await core.search(
            pb.SearchRequest(collection="products", image=target.image, filter=message, top_k=50)
        )
        assert {p.id for p in filtered.points} == allowed and target.id in allowed
        if store == "edge":
            # The fields the filter read are now indexed in the space (keyword for strings).
            (row,) = await core._collections.page(TENANT_A.tenant_id, limit=1)
            schema = _vectors._shard(row.space).info().payload_schema  # type: ignore[attr-defined]
            assert {"brand", "category"} <= set(schema)

        # By vector, with a threshold and top_k.
        vector = (await core.embed(pb.EmbedRequest(images=[target.image]))).embeddings[0].vector
        by_vector = await core.search(
            pb.SearchRequest(
                collection="products", vector=pb.Vector(values=vector), top_k=3, score_threshold=0.0
            )
        )
        assert [p.id for p in by_vector.points] == [p.id for p in found.points[:3]]
        strict = await core.search(
            pb.SearchRequest(
                collection="products",
                vector=pb.Vector(values=vector),
                top_k=50,
                # Below the 4th score by more than float32 rounding of the reported scores.
                score_threshold=scores[3] - 1e-5,
            )
        )
        assert all(p.score >= scores[3] - 1e-5 for p in strict.points)
        assert 4 <= len(strict.points) < 24
        with pytest.raises(InvalidArgument) as error:
            await core.search(
                pb.SearchRequest(collection="products", vector=pb.Vector(values=[1.0] * 5))
            )
        assert _field(error) == "vector.values"

        # By a stored point: its neighbours, itself left out.
        by_point = await core.search(
            pb.SearchRequest(collection="products", point_id=target.id, top_k=5)
        )
        assert [p.id for p in by_point.points] == [p.id for p in found.points[1:6]]
        with pytest.raises(NotFound):
            await core.search(pb.SearchRequest(collection="products", point_id="nope"))


async def test_tenants_never_see_each_others_collections_or_points(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    points = _points(catalog)
    async with running_core(tmp_path, models) as (core, _):
        with bind_principal(TENANT_A):
            await _create(core, "products")
            await core.upsert_images(pb.UpsertImagesRequest(collection="products", points=points))
        with bind_principal(TENANT_B):
            for call in (
                core.get_collection("products"),
                core.delete_collection("products"),
                core.search(pb.SearchRequest(collection="products", image=points[0].image)),
                core.match(pb.MatchRequest(collection="products", images=[points[0].image])),
                core.upsert_images(
                    pb.UpsertImagesRequest(collection="products", points=points[:1])
                ),
                core.delete_points(pb.DeletePointsRequest(collection="products", ids=["x"])),
            ):
                with pytest.raises(NotFound):
                    await call
            assert (await core.list_collections(page_size=0, page_token=""))[0] == []
            # Its own collection of the same name, with the same point ids, is separate.
            await _create(core, "products")
            await core.upsert_images(
                pb.UpsertImagesRequest(collection="products", points=points[:2])
            )
            found = await core.search(
                pb.SearchRequest(collection="products", image=points[5].image, top_k=50)
            )
            assert sorted(p.id for p in found.points) == sorted(p.id for p in points[:2])
        with bind_principal(TENANT_A):
            assert (await core.get_collection("products")).points_count == 24
            await core.delete_collection("products")
        with bind_principal(TENANT_B):
            assert (await core.get_collection("products")).points_count == 2


async def test_match_counts_each_product_once_and_answers_no_match_below_the_threshold(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    points = _points(catalog)
    unlabelled = pb.ImagePoint(id="no-product", image=points[0].image)
    async with running_core(tmp_path, models) as (core, _), _tenant(TENANT_A):
        await _create(core, "products")
        await core.upsert_images(
            pb.UpsertImagesRequest(collection="products", points=[*points, unlabelled])
        )
        queries = [points[0].image, points[10].image]
        response = await core.match(pb.MatchRequest(collection="products", images=queries, top_k=8))
        assert len(response.results) == 2
        for query, result in zip((points[0], points[10]), response.results, strict=True):
            products = [m.product_id for m in result.products]
            assert result.matched and products[0] == query.product_id
            # Three reference images per product, each product once; all 8 products.
            assert sorted(products) == sorted(p.id for p in catalog.products)
            assert result.products[0].score == pytest.approx(1.0, abs=1e-4)
            assert result.products[0].point.id == query.id
            scores = [m.score for m in result.products]
            assert scores == sorted(scores, reverse=True)
            # Each product's score is its best point's: no other point of it scores higher.
            search = await core.search(
                pb.SearchRequest(collection="products", image=query.image, top_k=100)
            )
            for match in result.products:
                best = max(p.score for p in search.points if p.product_id == match.product_id)
                assert match.score == pytest.approx(best, abs=1e-5)
        default_k = await core.match(pb.MatchRequest(collection="products", images=queries[:1]))
        assert len(default_k.results[0].products) == 5

        # A threshold between the best and the second product keeps only the best.
        first = response.results[0].products
        between = (first[0].score + first[1].score) / 2
        strict = await core.match(
            pb.MatchRequest(collection="products", images=queries[:1], threshold=between)
        )
        assert [m.product_id for m in strict.results[0].products] == [first[0].product_id]
        # Above every score: "no match", not the nearest wrong product.
        none = await core.match(
            pb.MatchRequest(collection="products", images=queries, threshold=1.01)
        )
        assert [(r.matched, len(r.products)) for r in none.results] == [(False, 0), (False, 0)]
        # A filter restricts the products considered.
        brand = catalog.products[3].metadata["brand"]
        filtered = await core.match(
            pb.MatchRequest(
                collection="products",
                images=queries[:1],
                top_k=8,
                filter=_filter({"conditions": [{"key": "brand", "stringValue": brand}]}),
            )
        )
        wanted = {p.id for p in catalog.products if p.metadata["brand"] == brand}
        assert {m.product_id for m in filtered.results[0].products} == wanted


async def test_vectors_of_another_model_never_land_in_a_collection(
    tmp_path: Path, models: tuple[Path, Path], catalog: SynthCatalog
) -> None:
    async with running_core(tmp_path, models) as (core, _), _tenant(TENANT_A):
        await _create(core, "products")
        await _create(core, "cutouts", model=BACKBONE)
        await _create(core, "vectors", model="", dim=32)
        dinov2 = await core._embedders.get(DINOV2, tenant_id="tenant-a")
        cutouts = await core.collection(
            "tenant-a", "cutouts", field="spec.routing.default_collection"
        )
        with pytest.raises(InvalidArgument) as error:
            core.check_target(cutouts, dinov2.info, field="points[0].collection")
        assert _field(error) == "points[0].collection"
        products = await core.collection("tenant-a", "products", field="collection")
        core.check_target(products, dinov2.info, field="collection")
        # A vector-only collection of DINOv2's dimension still refuses images.
        with pytest.raises(FailedPrecondition):
            await core.search(pb.SearchRequest(collection="vectors", image=_image(b"x")))
        image = _image(_bytes(catalog, catalog.products[0].images[0]))
        with pytest.raises(FailedPrecondition):
            await core.match(pb.MatchRequest(collection="vectors", images=[image]))


async def test_validate_embedding_spec_checks_every_target(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    def spec(**routing: Any) -> pb.EmbeddingJobSpec:
        return pb.EmbeddingJobSpec(
            images=pb.ImageListSource(
                images=[
                    pb.SourceImage(key="a.jpg"),
                    pb.SourceImage(key="b.jpg", collection="cutouts"),
                ]
            ),
            routing=pb.CollectionRouting(**routing),
        )

    async with running_core(tmp_path, models) as (core, _), _tenant(TENANT_A):
        with pytest.raises(NotFound):
            await core.validate_embedding_spec(spec(default_collection="products"))
        created = await core.validate_embedding_spec(
            spec(default_collection="products", create_missing=True)
        )
        assert (created.model, created.batch_size, created.normalize) == (DINOV2, 32, True)
        assert (created.routing.distance, created.device) == ("cosine", "auto")

        await _create(core, "products")
        with pytest.raises(NotFound) as missing:
            await core.validate_embedding_spec(spec(default_collection="products"))
        assert "spec.images.images[1].collection" in str(missing.value)
        await _create(core, "cutouts", model=BACKBONE)
        # The routed target holds the backbone's vectors: refused, not only the default.
        with pytest.raises(InvalidArgument) as error:
            await core.validate_embedding_spec(spec(default_collection="products"))
        assert _field(error) == "spec.images.images[1].collection"
        routed = spec(default_collection="cutouts", field="kind", routes={"cut": "products"})
        with pytest.raises(InvalidArgument) as error:
            await core.validate_embedding_spec(routed)
        assert _field(error) == "spec.routing.routes['cut']"
        with pytest.raises(InvalidArgument) as error:
            await core.validate_embedding_spec(
                spec(default_collection="cutouts", routes={"x": "Not A Name"})
            )
        assert _field(error) == "spec.routing.routes['x']"
        with pytest.raises(InvalidArgument) as error:
            await core.validate_embedding_spec(
                pb.EmbeddingJobSpec(
                    model="dinov2_unknown",
                    images=pb.ImageListSource(images=[pb.SourceImage(key="a.jpg")]),
                    routing=pb.CollectionRouting(default_collection="products"),
                )
            )
        assert _field(error) == "spec.model"
        backbone_default = pb.EmbeddingJobSpec(
            images=pb.ImageListSource(images=[pb.SourceImage(key="a.jpg")]),
            routing=pb.CollectionRouting(default_collection="cutouts"),
        )
        assert (await core.validate_embedding_spec(backbone_default)).model == BACKBONE
        backbone_default.model = DINOV2
        with pytest.raises(InvalidArgument) as error:
            await core.validate_embedding_spec(backbone_default)
        assert _field(error) == "spec.model"


async def test_images_by_key_in_the_tenant(
    tmp_path: Path,
    models: tuple[Path, Path],
    catalog: SynthCatalog,
    object_store: ObjectStore,
) -> None:
    path = catalog.products[2].images[0]
    await object_store.put_bytes(
        tenant_key("tenant-a", "refs/a.jpg", field="k"), _bytes(catalog, path)
    )
    async with running_core(tmp_path, models, objects=object_store) as (core, _):
        with bind_principal(TENANT_A):
            await _create(core, "products")
            point = pb.ImagePoint(id="a", image=image_pb2.Image(key="refs/a.jpg"), product_id="p")
            await core.upsert_images(pb.UpsertImagesRequest(collection="products", points=[point]))
            found = await core.search(
                pb.SearchRequest(collection="products", image=_image(_bytes(catalog, path)))
            )
            assert [(p.id, p.image_key) for p in found.points] == [("a", "refs/a.jpg")]
            assert json_format.MessageToDict(found.points[0].payload) == {"product_id": "p"}
            with pytest.raises(NotFound):
                await core.embed(pb.EmbedRequest(images=[image_pb2.Image(key="refs/missing.jpg")]))
        with bind_principal(TENANT_B), pytest.raises(NotFound):
            # The same key names tenant B's own (empty) area.
            await core.embed(pb.EmbedRequest(images=[image_pb2.Image(key="refs/a.jpg")]))


class _tenant:
    """`async with _tenant(principal)`: bind the caller for a block of async code."""

    def __init__(self, principal: Any) -> None:
        self._binding = bind_principal(principal)

    async def __aenter__(self) -> None:
        self._binding.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self._binding.__exit__(None, None, None)
