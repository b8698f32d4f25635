"""Product catalogues: products.jsonl (an id plus free metadata per line), images/<id>/*."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from visionmesh.common.datasets import CATALOG_IMAGES_DIR, metadata_problem, product_id_problem
from visionmesh.gateway.core.archive._layout import (
    IMAGE_SUFFIXES,
    PRODUCTS_FILE,
    Plan,
    is_image,
)
from visionmesh.gateway.core.archive._violations import ARCHIVE_FIELD, Reason, Violations
from visionmesh.gateway.core.archive._zipsafety import EntryError, read_entry

_MAX_PRODUCTS_BYTES: Final = 64 << 20
"""products.jsonl is read whole: about 200,000 products with a few hundred bytes each."""


class _NotFinite(ValueError):
    pass


def _refuse_constant(name: str) -> NoReturn:
    # Python's json reads NaN and Infinity, which JSON itself (and the manifest) cannot hold.
    raise _NotFinite(f"{name} is not a JSON number")


def plan_catalog(
    zf: zipfile.ZipFile,
    root: str,
    members: Mapping[str, zipfile.ZipInfo],
    violations: Violations,
) -> Plan | None:
    """The products of products.jsonl and each one's images; None when the file is unusable.

    Rules (each broken one is a violation naming the file, and the line for products.jsonl):
    every non-blank line is a JSON object with a string "id" that can name a folder (no '/',
    not '.' or '..', at most 255 bytes) and is unique; every other key is metadata (any JSON
    value, nested allowed, keys starting with '_' reserved). Every file under `images/` is an
    image inside the folder of a listed product, `images/<id>/...`. A product without images
    is kept (as a detection class without instances is) and counted; an archive without any
    image is refused.
    """
    products_field = root + PRODUCTS_FILE
    text = _read_products(zf, members[PRODUCTS_FILE], products_field, violations)
    if text is None:
        return None
    products, known, all_identified = _parse_products(text, products_field, violations)

    images: dict[str, list[str]] = {product_id: [] for product_id in products}
    unknown: set[str] = set()
    any_image = False
    prefix = CATALOG_IMAGES_DIR + "/"
    for rel in sorted(members):
        if not rel.startswith(prefix):
            continue
        parts = rel.split("/")
        if len(parts) < 3:
            violations.add(
                root + rel,
                f"not inside a product folder (expected {prefix}<product_id>/{parts[-1]})",
                Reason.MISPLACED_IMAGE,
            )
            continue
        if not is_image(rel):
            violations.add(
                root + rel,
                f"not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})",
                Reason.BAD_IMAGE,
            )
            continue
        any_image = True
        product_id = parts[1]
        if product_id in images:
            images[product_id].append(rel)
        elif known and all_identified and product_id not in known | unknown:
            # Reported once per folder, and only when every line of products.jsonl could be
            # read (else the product may be on a line already reported) and lists some.
            unknown.add(product_id)
            violations.add(
                f"{root}{prefix}{product_id}/",
                f"product {product_id!r} is not listed in {PRODUCTS_FILE}",
                Reason.UNKNOWN_PRODUCT,
            )
    if not any_image:
        violations.add(
            ARCHIVE_FIELD,
            f"no images found (expected {prefix}<product_id>/<image> files with a suffix of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})",
            Reason.NO_IMAGES,
        )
    return Plan(
        class_names=[],
        splits={},
        products={product_id: products[product_id] for product_id in sorted(products)},
        product_images={product_id: images[product_id] for product_id in sorted(images)},
    )


def _read_products(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, products_field: str, violations: Violations
) -> str | None:
    if info.file_size > _MAX_PRODUCTS_BYTES:
        violations.add(
            products_field,
            f"{info.file_size} bytes, over the limit of {_MAX_PRODUCTS_BYTES} bytes",
            Reason.BAD_PRODUCTS,
        )
        return None
    try:
        _, raw = read_entry(zf, info, keep=True)
    except EntryError as exc:
        violations.add(products_field, str(exc), Reason.CORRUPT_ENTRY)
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        violations.add(products_field, f"not UTF-8 text (byte {exc.start})", Reason.BAD_PRODUCTS)
        return None


def _parse_products(
    text: str, products_field: str, violations: Violations
) -> tuple[dict[str, dict[str, Any]], set[str], bool]:
    """Valid products by id, every id seen on a line (valid or not), and whether every
    non-blank line had a readable id."""
    products: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    all_identified = True

    def bad(line_number: int, problem: str) -> None:
        violations.add(products_field, f"line {line_number}: {problem}", Reason.BAD_PRODUCTS)

    # JSON Lines separates records by "\n" only: str.splitlines() would also split on
    # U+2028 and friends, which JSON strings may hold unescaped.
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except _NotFinite as exc:
            all_identified = False
            bad(line_number, f"not valid JSON: {exc}")
            continue
        except json.JSONDecodeError as exc:
            all_identified = False
            bad(line_number, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            all_identified = False
            bad(line_number, "not valid JSON: nested too deeply")
            continue
        if not isinstance(record, dict):
            all_identified = False
            bad(line_number, f"expected a JSON object, got {_kind(record)}")
            continue
        if "id" not in record:
            all_identified = False
            bad(line_number, 'no "id"')
            continue
        product_id = record.pop("id")
        if problem := product_id_problem(product_id):
            all_identified = False
            bad(line_number, f'"id" {problem}')
            continue
        if product_id in first_line:
            bad(
                line_number,
                f"duplicate id {product_id!r} (first on line {first_line[product_id]})",
            )
            continue
        first_line[product_id] = line_number
        if problem := metadata_problem(record):
            bad(line_number, problem)
            continue
        products[product_id] = record
    if not first_line and all_identified:
        violations.add(products_field, "lists no products", Reason.BAD_PRODUCTS)
    return products, set(first_line), all_identified


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
