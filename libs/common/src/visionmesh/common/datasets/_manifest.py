"""The dataset manifest: written once by the gateway at finalize, read by every worker.

It records the layout the gateway resolved from the archive (root folder, split folders,
format, class names; for a product catalogue its products with their metadata and images)
and every file's size and sha256, plus the archive's own. Workers build their training
configuration (or embedding work) from it and never re-read the dataset's data.yaml or
products.jsonl, so both sides always agree on where the images are.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn, cast, get_args

from visionmesh.common.errors import FailedPrecondition

__all__ = [
    "CATALOG_IMAGES_DIR",
    "MANIFEST_VERSION",
    "MAX_METADATA_BYTES",
    "MAX_PRODUCT_ID_BYTES",
    "SPLIT_NAMES",
    "SUPPORTED_MANIFEST_VERSIONS",
    "DataError",
    "DatasetFormatName",
    "DatasetManifest",
    "ManifestError",
    "ManifestFile",
    "ManifestProduct",
    "ManifestSplit",
    "is_sha256",
    "label_dir",
    "metadata_problem",
    "product_id_problem",
]

MANIFEST_VERSION: Final = 3
"""The newest version. Version 1 held only the file list; version 2 adds the resolved
layout and the archive; version 3 adds product catalogues (format `catalog`, `products`).

A manifest is written in the oldest version that expresses it: detect, classify and
segment manifests stay version 2, byte for byte, so their hashes (the workers' cache keys)
and older workers are unaffected, and an older worker refuses a catalogue by its version.
"""
SUPPORTED_MANIFEST_VERSIONS: Final = (2, 3)

DatasetFormatName = Literal["detect", "classify", "segment", "catalog"]
CATALOG_IMAGES_DIR: Final = "images"
"""A catalogue's images live under `images/<product_id>/`."""
MAX_PRODUCT_ID_BYTES: Final = 255
"""A product id names its image folder: at most one path component's length (UTF-8)."""
MAX_METADATA_BYTES: Final = 16 << 10
"""A product's metadata, as compact JSON, is at most this long."""
SPLIT_NAMES: Final = ("train", "val", "test")
_REQUIRED_SPLITS: Final = ("train", "val")

_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")


class DataError(FailedPrecondition):
    """A stored dataset does not match its manifest, or the manifest is unusable.

    Retrying cannot help: the same bytes fail the same way.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="DATASET_DATA_ERROR")


class ManifestError(DataError):
    """A manifest document is malformed (`DatasetManifest.from_json`)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"invalid dataset manifest: {message}")


def is_sha256(value: object) -> bool:
    """Exactly 64 lower-case hex digits: the only hash form ever used in a path or key."""
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


def _path_problem(path: str) -> str | None:
    """Why `path` is not a safe relative '/'-separated path, or None."""
    if not path:
        return "empty path"
    if "\\" in path or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        return "backslash or control character"
    if path.startswith("/") or _DRIVE_RE.match(path):
        return "absolute path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "empty, '.' or '..' component"
    return None


def product_id_problem(product_id: object) -> str | None:
    """Why `product_id` cannot be a catalogue product id (it names a folder), or None."""
    if not isinstance(product_id, str):
        return f"must be a string, got {_json_type(product_id)}"
    if not product_id.strip():
        return "must not be empty"
    if product_id != product_id.strip():
        return "must not start or end with whitespace"
    if "/" in product_id or "\\" in product_id:
        return "must not contain '/' or '\\' (it names the folder images/<id>/)"
    if product_id in (".", ".."):
        return f"{product_id!r} cannot name a folder"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in product_id):
        return "must not contain control characters"
    size = len(product_id.encode())
    if size > MAX_PRODUCT_ID_BYTES:
        return f"is {size} bytes long, over the limit of {MAX_PRODUCT_ID_BYTES} (UTF-8)"
    return None


def metadata_problem(metadata: Mapping[str, Any]) -> str | None:
    """Why a product's metadata is not acceptable, or None.

    Any JSON value is allowed (nested objects and lists too) except non-finite numbers,
    which JSON cannot express; keys starting with "_" are reserved for the platform, and
    "id" is the product's own id, not metadata.
    """
    for key in metadata:
        if key.startswith("_"):
            return f"key {key!r}: keys starting with '_' are reserved"
        if key == "id":
            return "'id' is the product id, not metadata"
    try:
        size = len(_compact_json(dict(metadata)))
    except (TypeError, ValueError, RecursionError) as exc:
        return f"not JSON: {exc}"
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES}"
    return None


def _compact_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def label_dir(images_dir: str) -> str:
    """Where Ultralytics looks for the labels of the images under `images_dir`.

    Its rule, applied to each image path: the last `/images/` becomes `/labels/`. A folder
    without an `images` component keeps its labels next to the images.
    """
    probe = f"/{images_dir}/x" if images_dir else "/x"
    if "/images/" in probe:
        head, tail = probe.rsplit("/images/", 1)
        probe = f"{head}/labels/{tail}"
    return posixpath.dirname(probe)[1:]


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One regular file: `path` is relative to the dataset root, '/'-separated."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ManifestSplit:
    """Where one split's data lives, as folders relative to the dataset root ("" = the root).

    Detect/segment: `images` are the image folders the data.yaml names (Roboflow's
    `../train/images` resolved to `train/images`) and `labels` the matching label folders.
    Classify: `images` is the split folder holding `<class>/<image>`, `labels` is empty.
    """

    name: str
    images: tuple[str, ...]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ManifestProduct:
    """One catalogue product: its id, its free metadata and its reference images.

    `images` are the manifest's own file entries under `images/<id>/` (path, size, sha256),
    sorted by path; a product listed without images has none.
    """

    id: str
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    images: tuple[ManifestFile, ...] = ()


@dataclass(frozen=True, slots=True)
class DatasetManifest:
    """A validated dataset: its layout, classes, files and the archive they came from.

    All paths are relative to the dataset root; inside the archive the root is the folder
    `root_prefix` ("" or e.g. "shapes/"), so a file's zip member is `root_prefix + path`.

    A catalogue (`format == "catalog"`) has no classes and no splits; its `products` (sorted
    by id) say which images belong to which product. Other formats have no products.
    """

    format: DatasetFormatName
    root_prefix: str
    class_names: tuple[str, ...]
    splits: tuple[ManifestSplit, ...]
    """train, val, then test when present."""
    files: tuple[ManifestFile, ...]
    """Every regular file under the root, sorted by path."""
    archive_sha256: str
    archive_size: int
    products: tuple[ManifestProduct, ...] = ()
    """Catalog only: every product of products.jsonl, sorted by id."""

    def __post_init__(self) -> None:
        _check(self)

    @property
    def version(self) -> int:
        """The oldest version that expresses this manifest (see `MANIFEST_VERSION`)."""
        return _version_of(self.format)

    # -- serialisation --------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The canonical JSON: keys sorted, no whitespace, ASCII only, files sorted by path.

        Equal manifests give equal bytes, so the sha256 of these bytes identifies one.
        """
        document: dict[str, Any] = {
            "version": self.version,
            "format": self.format,
            "root_prefix": self.root_prefix,
            "class_names": list(self.class_names),
            "splits": [
                {"name": s.name, "images": list(s.images), "labels": list(s.labels)}
                for s in self.splits
            ],
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
            "archive": {"sha256": self.archive_sha256, "size": self.archive_size},
        }
        if self.format == "catalog":
            # Images by path only: their size and sha256 are in `files` already.
            document["products"] = [
                {
                    "id": p.id,
                    "metadata": dict(p.metadata),
                    "images": [image.path for image in p.images],
                }
                for p in self.products
            ]
        return _compact_json(document)

    def sha256(self) -> str:
        """The manifest's identity: sha256 of `to_json()` (the workers' cache key)."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, data: bytes | str) -> DatasetManifest:
        """Parses and validates a manifest; raises `ManifestError` saying what is wrong."""
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            _bad(f"not JSON: {exc}")
        if not isinstance(document, dict):
            _bad("not a JSON object")
        version = document.get("version")
        if version not in SUPPORTED_MANIFEST_VERSIONS or isinstance(version, bool):
            supported = " or ".join(map(str, SUPPORTED_MANIFEST_VERSIONS))
            _bad(
                f"version {version!r} is not supported (expected {supported}); "
                "finalize the dataset again"
            )
        fmt = _get(document, "format", str)
        if fmt in get_args(DatasetFormatName) and version != _version_of(fmt):
            _bad(f"a {fmt} manifest is version {_version_of(fmt)}, not {version}")
        archive = _get(document, "archive", dict)
        files = tuple(_file(item) for item in _get(document, "files", list))
        products: tuple[ManifestProduct, ...] = ()
        if fmt == "catalog":
            by_path = {entry.path: entry for entry in files}
            products = tuple(_product(item, by_path) for item in _get(document, "products", list))
        elif "products" in document:
            _bad(f"a {fmt} manifest has no products")
        return cls(
            format=cast(DatasetFormatName, fmt),
            root_prefix=_get(document, "root_prefix", str),
            class_names=tuple(_str_list(document, "class_names")),
            splits=tuple(_split(item) for item in _get(document, "splits", list)),
            files=files,
            archive_sha256=_get(archive, "sha256", str, where="archive."),
            archive_size=_get(archive, "size", int, where="archive."),
            products=products,
        )

    # -- use ------------------------------------------------------------------------------

    def split(self, name: str) -> ManifestSplit | None:
        return next((s for s in self.splits if s.name == name), None)

    def product(self, product_id: str) -> ManifestProduct | None:
        """A catalogue's product by id (None when there is none)."""
        return next((p for p in self.products if p.id == product_id), None)

    @property
    def product_image_count(self) -> int:
        """Catalog: reference images across all products."""
        return sum(len(p.images) for p in self.products)

    def members(self) -> Iterator[tuple[str, ManifestFile]]:
        """Each file with its member name in the archive, for extracting by manifest."""
        for entry in self.files:
            yield self.root_prefix + entry.path, entry

    @property
    def total_size(self) -> int:
        """Bytes the files take once extracted."""
        return sum(entry.size for entry in self.files)

    def ultralytics_data(self, root: Path) -> dict[str, Any]:
        """Ultralytics' dataset dict for the dataset extracted at `root`.

        `{"path": root, "train": ..., "val": ..., "test": ... (when present), "names":
        {0: ..., ...}}` with absolute folders (a list when a split has several). Detect and
        segment pass it as `data`; for classify the split entries are the split folders
        (Ultralytics itself takes the root, `path`).
        """
        if self.format == "catalog":
            raise DataError(
                "a catalog dataset has no training splits or classes: it is a source for "
                "embedding jobs, not a training dataset"
            )
        data: dict[str, Any] = {"path": str(root)}
        for split in self.splits:
            folders = [str(root / folder) if folder else str(root) for folder in split.images]
            data[split.name] = folders[0] if len(folders) == 1 else folders
        data["names"] = dict(enumerate(self.class_names))
        return data


# --- validation ---------------------------------------------------------------------------


def _bad(message: str) -> NoReturn:
    raise ManifestError(message)


def _get(document: Mapping[str, Any], key: str, kind: type[Any], *, where: str = "") -> Any:
    value = document.get(key)
    # bool is an int subclass; a size of `true` is not a size.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _bad(f"'{where}{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _str_list(document: Mapping[str, Any], key: str, *, where: str = "") -> list[str]:
    values = _get(document, key, list, where=where)
    if not all(isinstance(value, str) for value in values):
        _bad(f"'{where}{key}' must be a list of strings")
    return cast(list[str], values)


def _split(item: Any) -> ManifestSplit:
    if not isinstance(item, dict):
        _bad("each split must be an object")
    name = _get(item, "name", str, where="splits[].")
    where = f"splits.{name}."
    return ManifestSplit(
        name=name,
        images=tuple(_str_list(item, "images", where=where)),
        labels=tuple(_str_list(item, "labels", where=where)),
    )


def _product(item: Any, files: Mapping[str, ManifestFile]) -> ManifestProduct:
    if not isinstance(item, dict):
        _bad("each product must be an object")
    product_id = _get(item, "id", str, where="products[].")
    where = f"products.{product_id}."
    images: list[ManifestFile] = []
    for path in _str_list(item, "images", where=where):
        entry = files.get(path)
        if entry is None:
            _bad(f"product {product_id!r}: image {path!r} is not in files")
        images.append(entry)
    return ManifestProduct(
        id=product_id, metadata=_get(item, "metadata", dict, where=where), images=tuple(images)
    )


def _file(item: Any) -> ManifestFile:
    if not isinstance(item, dict):
        _bad("each file must be an object")
    return ManifestFile(
        path=_get(item, "path", str, where="files[]."),
        size=_get(item, "size", int, where="files[]."),
        sha256=_get(item, "sha256", str, where="files[]."),
    )


def _check(manifest: DatasetManifest) -> None:
    """Every invariant a reader relies on, so no manifest object is ever inconsistent."""
    if manifest.format not in get_args(DatasetFormatName):
        _bad(f"format {manifest.format!r} is not one of {', '.join(get_args(DatasetFormatName))}")
    prefix = manifest.root_prefix
    if prefix and (not prefix.endswith("/") or _path_problem(prefix[:-1])):
        _bad(f"root_prefix {prefix!r} must be '' or a safe relative folder ending in '/'")
    _check_files(manifest.files)
    if manifest.format == "catalog":
        if manifest.class_names or manifest.splits:
            _bad("a catalog has products, not class_names or splits")
        _check_products(manifest.products, manifest.files)
    else:
        if manifest.products:
            _bad(f"a {manifest.format} manifest has no products")
        _check_classes(manifest.class_names)
        _check_splits(manifest.format, manifest.splits)
    if not is_sha256(manifest.archive_sha256):
        _bad("archive.sha256 must be 64 lower-case hex digits")
    if manifest.archive_size < 0:
        _bad("archive.size must not be negative")


def _version_of(fmt: str) -> int:
    return 3 if fmt == "catalog" else 2


def _check_products(products: Sequence[ManifestProduct], files: Sequence[ManifestFile]) -> None:
    if not products:
        _bad("a catalog needs at least one product")
    by_path = {entry.path: entry for entry in files}
    previous = ""
    for index, product in enumerate(products):
        if problem := product_id_problem(product.id):
            _bad(f"product id {product.id!r}: {problem}")
        if index and product.id <= previous:
            _bad(f"products must be sorted by id without duplicates (at {product.id!r})")
        previous = product.id
        if problem := metadata_problem(product.metadata):
            _bad(f"product {product.id!r}: {problem}")
        folder = f"{CATALOG_IMAGES_DIR}/{product.id}/"
        last = ""
        for image in product.images:
            if not image.path.startswith(folder):
                _bad(f"product {product.id!r}: image {image.path!r} is not under {folder}")
            if by_path.get(image.path) != image:
                _bad(f"product {product.id!r}: image {image.path!r} does not match files")
            if image.path <= last:
                _bad(f"product {product.id!r}: images must be sorted by path without duplicates")
            last = image.path


def _check_classes(names: Sequence[str]) -> None:
    if not names:
        _bad("class_names is empty")
    if any(not name.strip() for name in names):
        _bad("class names must be non-empty")
    if len(set(names)) != len(names):
        _bad("class names must be unique")


def _check_splits(fmt: DatasetFormatName, splits: Sequence[ManifestSplit]) -> None:
    names = [split.name for split in splits]
    expected = [name for name in SPLIT_NAMES if name in names]
    if names != expected:
        _bad(f"splits must be train, val and optionally test, in that order; got {names}")
    for required in _REQUIRED_SPLITS:
        if required not in names:
            _bad(f"split '{required}' is missing")
    for split in splits:
        if not split.images:
            _bad(f"split '{split.name}' has no image folders")
        for folder in (*split.images, *split.labels):
            if folder and (problem := _path_problem(folder)):
                _bad(f"split '{split.name}' folder {folder!r}: {problem}")
        if fmt == "classify" and split.labels:
            _bad(f"classify split '{split.name}' must not have label folders")
        if fmt != "classify" and len(split.labels) != len(split.images):
            _bad(f"split '{split.name}' needs one label folder per image folder")


def _check_files(files: Sequence[ManifestFile]) -> None:
    previous = ""
    for index, entry in enumerate(files):
        if problem := _path_problem(entry.path):
            _bad(f"file {entry.path!r}: {problem}")
        if index and entry.path <= previous:
            _bad(f"files must be sorted by path without duplicates (at {entry.path!r})")
        previous = entry.path
        if entry.size < 0:
            _bad(f"file {entry.path!r}: size must not be negative")
        if not is_sha256(entry.sha256):
            _bad(f"file {entry.path!r}: sha256 must be 64 lower-case hex digits")
