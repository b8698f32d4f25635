"""What an embedding job embeds: each source of its spec as a deterministic list of images.

Every source mode becomes a list of `SourceItem`s in a fixed order (catalogue products by id
and their images by path, dataset images by path, listed images in the spec's order), so
that every attempt of a job cuts the same chunks and derives the same point ids:

- `products`: the images of the listed products of a catalogue snapshot;
- `dataset`: every image of a snapshot: a whole catalogue, or a detect/classify dataset;
- `metadata_filter`: the images of the catalogue products whose metadata matches;
- `images`: object keys of the tenant's area, one by one.

A dataset image's point id is derived from its content (the manifest's sha256, prefixed by
its product when it has one), so re-snapshotting the same data replaces the same points; a
listed image's is the caller's id, or its key.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from google.protobuf import json_format
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.common.datasets import (
    DatasetManifest,
    ManifestFile,
    ManifestProduct,
)
from visionmesh.common.errors import InvalidArgument
from visionmesh.common.tenancy import tenant_key
from visionmesh.embedding.core.filters import Filter, matches

__all__ = [
    "IMAGE_SUFFIXES",
    "SourceItem",
    "catalog_items",
    "dataset_items",
    "image_items",
    "struct_payload",
]

IMAGE_SUFFIXES: Final = frozenset(
    {".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
"""The image suffixes the gateway's archive inspector accepts (compared lower-case)."""


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One image a job embeds."""

    source_id: str
    """The point's id within its collection (its uuid is derived from it)."""
    key: str
    """How results name it: the dataset path, or the tenant-relative object key."""
    location: str
    """Where its bytes are: the path within the materialised snapshot (`in_dataset`), or the
    object store key."""
    in_dataset: bool
    product_id: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Metadata stored with the point (product_id included when there is one)."""
    collection: str = ""
    """The collection the spec names for this image; empty lets the routing decide."""
    field: str = ""
    """The spec field that named this image (`spec.images.images[3]`), for error messages."""


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _catalog_payload(product: ManifestProduct, base: Mapping[str, Any]) -> dict[str, Any]:
    return {**base, **product.metadata, "product_id": product.id}


def _product_images(
    products: Iterable[ManifestProduct], base: Mapping[str, Any]
) -> list[SourceItem]:
    items: list[SourceItem] = []
    for product in products:
        payload = _catalog_payload(product, base)
        for image in product.images:
            items.append(
                SourceItem(
                    source_id=f"{product.id}/{image.sha256}",
                    key=image.path,
                    location=image.path,
                    in_dataset=True,
                    product_id=product.id,
                    payload={**payload, "path": image.path},
                )
            )
    return _unique(items)


def _unique(items: list[SourceItem]) -> list[SourceItem]:
    # The same bytes twice (under one product, or twice in a dataset) are one point: the id
    # is derived from the content, so keeping both would count an image the store never holds.
    seen: set[str] = set()
    kept: list[SourceItem] = []
    for item in items:
        if item.source_id not in seen:
            seen.add(item.source_id)
            kept.append(item)
    return kept


def _require_catalog(manifest: DatasetManifest, field: str) -> None:
    if manifest.format != "catalog":
        raise InvalidArgument.for_field(
            field, f"names a {manifest.format} dataset; this source needs a catalog dataset"
        )


def catalog_items(
    manifest: DatasetManifest,
    *,
    field: str,
    product_ids: Sequence[str] | None = None,
    filter: Filter | None = None,
    base_payload: Mapping[str, Any] | None = None,
) -> list[SourceItem]:
    """The images of a catalogue's products: those listed (`product_ids`, each must exist,
    an unknown one is InvalidArgument naming `<field>.product_ids[i]`), and of those the ones
    whose metadata matches `filter` (None: all). Products by id, images by path."""
    _require_catalog(manifest, field)
    base = dict(base_payload or {})
    if product_ids is None:
        selected = list(manifest.products)
    else:
        by_id = {product.id: product for product in manifest.products}
        missing = [(i, pid) for i, pid in enumerate(product_ids) if pid not in by_id]
        if missing:
            index, product_id = missing[0]
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InvalidArgument.for_field(
                f"{field}.product_ids[{index}]",
                f"product {product_id!r} is not in the catalogue{more}",
            )
        selected = sorted({by_id[pid] for pid in product_ids}, key=lambda p: p.id)
    if filter is not None:
        # The filter sees what a point's payload will hold: the metadata and the product id.
        selected = [p for p in selected if matches(filter, {**p.metadata, "product_id": p.id})]
    return _product_images(selected, base)


def dataset_items(
    manifest: DatasetManifest,
    *,
    field: str,
    splits: Sequence[str] = (),
    class_as_product_id: bool = False,
    base_payload: Mapping[str, Any] | None = None,
) -> list[SourceItem]:
    """Every image of a dataset snapshot, by path.

    A catalogue gives each product's images with the product's metadata. A classify dataset
    gives the images of its split folders with `split` and `class_name` (the class as the
    product id with `class_as_product_id`). A detect or segment dataset gives whole images:
    each image is one point, its labelled boxes are not cropped (cropping them into one point
    per object is a possible extension).
    """
    base = dict(base_payload or {})
    if manifest.format == "catalog":
        if splits:
            raise InvalidArgument.for_field(f"{field}.splits", "a catalog dataset has no splits")
        if class_as_product_id:
            raise InvalidArgument.for_field(
                f"{field}.class_as_product_id", "a catalog has products, not classes"
            )
        return _product_images(manifest.products, base)
    if class_as_product_id and manifest.format != "classify":
        raise InvalidArgument.for_field(
            f"{field}.class_as_product_id",
            f"needs a classify dataset; this one is {manifest.format}",
        )
    wanted = [s for s in manifest.splits if not splits or s.name in splits]
    items: list[SourceItem] = []
    for split in wanted:
        for folder in split.images:
            prefix = f"{folder}/" if folder else ""
            for image in _files_under(manifest.files, prefix):
                items.append(
                    _dataset_image(manifest, split.name, prefix, image, base, class_as_product_id)
                )
    # A folder shared by two splits (Ultralytics allows it) holds its images once.
    return _unique(sorted(items, key=lambda item: (item.key, item.source_id)))


def _files_under(files: Sequence[ManifestFile], prefix: str) -> list[ManifestFile]:
    return [entry for entry in files if entry.path.startswith(prefix) and _is_image(entry.path)]


def _dataset_image(
    manifest: DatasetManifest,
    split: str,
    prefix: str,
    image: ManifestFile,
    base: Mapping[str, Any],
    class_as_product_id: bool,
) -> SourceItem:
    payload: dict[str, Any] = {**base, "split": split, "path": image.path}
    product_id = ""
    if manifest.format == "classify":
        class_name = image.path[len(prefix) :].split("/", 1)[0]
        payload["class_name"] = class_name
        if class_as_product_id:
            product_id = class_name
            payload["product_id"] = class_name
    return SourceItem(
        source_id=f"{product_id}/{image.sha256}" if product_id else image.sha256,
        key=image.path,
        location=image.path,
        in_dataset=True,
        product_id=product_id,
        payload=payload,
    )


def image_items(
    tenant_id: str, source: embedding_pb2.ImageListSource, *, field: str = "spec.images"
) -> list[SourceItem]:
    """The listed images in the spec's order; a key outside the tenant's area is
    InvalidArgument naming `<field>.images[i].key`."""
    items: list[SourceItem] = []
    for index, image in enumerate(source.images):
        where = f"{field}.images[{index}]"
        location = tenant_key(tenant_id, image.key, field=f"{where}.key")
        payload = struct_payload(image.payload)
        reserved = sorted(k for k in payload if k.startswith("_"))
        if reserved:
            raise InvalidArgument.for_field(
                f"{where}.payload", f"keys starting with '_' are reserved: {reserved}"
            )
        payload["image_key"] = image.key
        if image.product_id:
            payload["product_id"] = image.product_id
        items.append(
            SourceItem(
                source_id=image.id or image.key,
                key=image.key,
                location=location,
                in_dataset=False,
                product_id=image.product_id,
                payload=payload,
                collection=image.collection,
                field=where,
            )
        )
    return items


def struct_payload(struct: Any) -> dict[str, Any]:
    """A protobuf Struct as a payload dict; integral numbers become ints.

    Struct numbers are doubles; without this a payload `{"year": 2024}` would be stored as
    2024.0 and an integer filter (`year = 2024`) would never match it.
    """
    return {key: _integral(value) for key, value in json_format.MessageToDict(struct).items()}


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
