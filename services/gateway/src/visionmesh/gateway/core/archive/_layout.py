"""Layout: the dataset root, the format, data.yaml / data.yml and the split folders.

(A catalogue's products.jsonl and product folders are planned in `_catalog`.)
"""

from __future__ import annotations

import posixpath
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import yaml
from visionmesh.gateway.core.archive._violations import ARCHIVE_FIELD, Reason, Violations, fail
from visionmesh.gateway.core.archive._zipsafety import DRIVE_RE, EntryError, read_entry

DatasetFormatName = Literal["detect", "classify", "catalog"]

IMAGE_SUFFIXES: Final = frozenset(
    {".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
"""Image file suffixes (compared lower-case): Ultralytics' formats that Pillow decodes."""

SPLITS: Final = ("train", "val", "test")
REQUIRED_SPLITS: Final = ("train", "val")
_DATA_YAML_NAMES: Final = ("data.yaml", "data.yml")
PRODUCTS_FILE: Final = "products.jsonl"
"""A catalogue's product list, at its root: one JSON object per line."""
_MAX_YAML_BYTES: Final = 1 << 20
_MAX_CLASSES: Final = 100_000


def is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def detect_layout(files: Mapping[str, zipfile.ZipInfo]) -> tuple[DatasetFormatName, str]:
    """The format and the dataset root: the shallowest folder that holds a dataset."""
    candidates: set[tuple[int, int, DatasetFormatName, str]] = set()
    for name in files:
        parts = name.split("/")
        if parts[-1] in _DATA_YAML_NAMES:
            root = "".join(part + "/" for part in parts[:-1])
            candidates.add((len(parts) - 1, 0, "detect", root))
        elif parts[-1] == PRODUCTS_FILE:
            root = "".join(part + "/" for part in parts[:-1])
            candidates.add((len(parts) - 1, 0, "catalog", root))
        elif is_image(name):
            # <root>/<split>/<class>/.../<image>
            for i in range(len(parts) - 2):
                if parts[i] in SPLITS:
                    candidates.add((i, 1, "classify", "".join(part + "/" for part in parts[:i])))
                    break
    if not candidates:
        hint = ""
        dirs = {part for name in files for part in name.split("/")[:-1]}
        if {"images", "labels"} <= dirs:
            hint = " (found images/ and labels/ folders but no data.yaml)"
        fail(
            ARCHIVE_FIELD,
            "unrecognised dataset layout"
            + hint
            + ": expected YOLO detection (data.yaml, images/<split>/, labels/<split>/), "
            "classification folders (train/<class>/<image>, val/<class>/<image>) or a product "
            "catalogue (products.jsonl, images/<product_id>/<image>), at the top of the zip "
            "or inside one folder",
            Reason.UNRECOGNISED_LAYOUT,
        )
    best = min(candidates)
    tied = sorted({c[3] or "the top level" for c in candidates if c[:2] == best[:2]})
    if len(tied) == 1 and sum(1 for c in candidates if c[:2] == best[:2]) > 1:
        fail(
            ARCHIVE_FIELD,
            f"both a data.yaml and a {PRODUCTS_FILE} in {tied[0]}: a dataset is either a "
            "detection dataset or a product catalogue",
            Reason.UNRECOGNISED_LAYOUT,
        )
    if len(tied) > 1:
        fail(
            ARCHIVE_FIELD,
            f"several datasets in one archive (in {', '.join(tied)}): upload one at a time",
            Reason.UNRECOGNISED_LAYOUT,
        )
    return best[2], best[3]


@dataclass(slots=True)
class Plan:
    """What the scan must check and count, derived from names (and data.yaml) alone."""

    class_names: list[str]
    splits: dict[str, list[str]]
    """Split name -> image paths relative to the root, sorted."""
    labels: dict[str, str] = field(default_factory=dict)
    """Detect: image path -> its label file path (only where that file exists)."""
    image_classes: dict[str, str] = field(default_factory=dict)
    """Classify: image path -> class name."""
    folders: dict[str, list[str]] = field(default_factory=dict)
    """Split name -> the root-relative folders holding its images (the manifest's layout)."""
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Catalog: product id -> its metadata, sorted by id."""
    product_images: dict[str, list[str]] = field(default_factory=dict)
    """Catalog: product id -> its image paths relative to the root, sorted (every product)."""


def plan_detect(
    zf: zipfile.ZipFile,
    root: str,
    members: Mapping[str, zipfile.ZipInfo],
    violations: Violations,
) -> Plan | None:
    yaml_rel = next(n for n in _DATA_YAML_NAMES if n in members)
    yaml_field = root + yaml_rel
    doc = _load_data_yaml(zf, members[yaml_rel], yaml_field, violations)
    if doc is None:
        return None
    class_names = _class_names(doc, yaml_field, violations)
    split_dirs = {split: _split_dirs(doc, split, yaml_field, violations) for split in SPLITS}
    if class_names is None:
        return None

    images = sorted(rel for rel in members if is_image(rel))
    if not images:
        violations.add(
            ARCHIVE_FIELD,
            f"no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)",
            Reason.NO_IMAGES,
        )
    splits: dict[str, list[str]] = {}
    folders: dict[str, list[str]] = {}
    for split, dirs in split_dirs.items():
        if dirs is None:
            continue
        if not dirs:
            if split in REQUIRED_SPLITS:
                violations.add(
                    yaml_field,
                    f"no '{split}' split: add e.g. `{split}: images/{split}`",
                    Reason.MISSING_SPLIT,
                )
            continue
        selected = [rel for rel in images if any(d == "" or rel.startswith(d + "/") for d in dirs)]
        if selected:
            splits[split] = selected
            # Only folders that hold images: an empty one would not exist once extracted.
            folders[split] = [
                d for d in dirs if any(d == "" or rel.startswith(d + "/") for rel in selected)
            ]
        elif images and split in REQUIRED_SPLITS:
            # An optional split (test) declared but absent is skipped, as Ultralytics does.
            where = root + dirs[0] + "/" if dirs[0] else root or ARCHIVE_FIELD
            violations.add(where, f"split '{split}' has no images", Reason.MISSING_SPLIT)
    labels: dict[str, str] = {}
    for rel in sorted({rel for selected in splits.values() for rel in selected}):
        label = _label_path(rel)
        if label in members:
            labels[rel] = label
    return Plan(class_names=class_names, splits=splits, labels=labels, folders=folders)


def _load_data_yaml(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, yaml_field: str, violations: Violations
) -> dict[Any, Any] | None:
    if info.file_size > _MAX_YAML_BYTES:
        violations.add(yaml_field, f"larger than {_MAX_YAML_BYTES} bytes", Reason.BAD_DATA_YAML)
        return None
    try:
        _, raw = read_entry(zf, info, keep=True)
    except EntryError as exc:
        violations.add(yaml_field, str(exc), Reason.CORRUPT_ENTRY)
        return None
    try:
        doc = yaml.safe_load(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        violations.add(yaml_field, "not UTF-8 text", Reason.BAD_DATA_YAML)
        return None
    except (yaml.YAMLError, RecursionError) as exc:
        violations.add(
            yaml_field, f"not valid YAML: {' '.join(str(exc).split())}", Reason.BAD_DATA_YAML
        )
        return None
    if not isinstance(doc, dict):
        violations.add(
            yaml_field,
            "must be a YAML mapping with 'names', 'train' and 'val'",
            Reason.BAD_DATA_YAML,
        )
        return None
    if "download" in doc:
        # Ultralytics executes a data.yaml's `download:` value (a script or URL) when
        # the images are missing: never accept one into the platform.
        violations.add(
            yaml_field, "'download' is not allowed: upload the images instead", Reason.BAD_DATA_YAML
        )
        return None
    return doc


def _class_names(
    doc: Mapping[Any, Any], yaml_field: str, violations: Violations
) -> list[str] | None:
    """`names` as a list or an {id: name} mapping (ids 0..n-1), else `nc` generic names."""
    names = doc.get("names")
    nc = doc.get("nc")
    if names is None:
        # Ultralytics' fallback; names (unlike nc) are bounded by the data.yaml size limit.
        if isinstance(nc, int) and not isinstance(nc, bool) and 0 < nc <= _MAX_CLASSES:
            return [f"class_{i}" for i in range(nc)]
        violations.add(
            yaml_field,
            "no class names: add `names: [...]` or `names: {0: ..., 1: ...}`",
            Reason.BAD_DATA_YAML,
        )
        return None
    values: list[Any]
    if isinstance(names, list):
        values = names
    elif isinstance(names, dict):
        keyed: dict[int, Any] = {}
        for key, value in names.items():
            if isinstance(key, str) and key.strip().isdigit():
                key = int(key)
            if not isinstance(key, int) or isinstance(key, bool):
                violations.add(
                    yaml_field, f"'names' key {key!r} is not a class id", Reason.BAD_DATA_YAML
                )
                return None
            keyed[key] = value
        if sorted(keyed) != list(range(len(keyed))):
            violations.add(
                yaml_field,
                f"'names' keys must be the class ids 0..{len(keyed) - 1} without gaps",
                Reason.BAD_DATA_YAML,
            )
            return None
        values = [keyed[i] for i in range(len(keyed))]
    else:
        violations.add(
            yaml_field,
            "'names' must be a list or a mapping of class id to name",
            Reason.BAD_DATA_YAML,
        )
        return None
    if not values:
        violations.add(yaml_field, "'names' is empty", Reason.BAD_DATA_YAML)
        return None
    result: list[str] = []
    for class_id, value in enumerate(values):
        if value is None or isinstance(value, (list, dict)) or not str(value).strip():
            violations.add(
                yaml_field,
                f"class {class_id}: name must be a non-empty string",
                Reason.BAD_DATA_YAML,
            )
            return None
        result.append(str(value))
    duplicates = sorted(name for name, count in Counter(result).items() if count > 1)
    if duplicates:
        violations.add(
            yaml_field, f"duplicate class names: {', '.join(duplicates)}", Reason.BAD_DATA_YAML
        )
        return None
    if nc is not None and nc != len(result):
        violations.add(
            yaml_field,
            f"'nc: {nc}' does not match the {len(result)} entries of 'names'",
            Reason.BAD_DATA_YAML,
        )
        return None
    return result


def _split_dirs(
    doc: Mapping[Any, Any], split: str, yaml_field: str, violations: Violations
) -> list[str] | None:
    """Root-relative image folders of a split ([] when absent); None after a violation.

    Leading `./` and `../` are dropped: the archive is the dataset, and exporters such as
    Roboflow write `train: ../train/images` relative to a folder above it.
    """
    value = doc.get(split)
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, list) else [value]
    dirs: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            violations.add(
                yaml_field,
                f"'{split}' must be a folder path or a list of folder paths",
                Reason.BAD_DATA_YAML,
            )
            return None
        raw = item.strip()
        if raw.startswith("/") or DRIVE_RE.match(raw) or "://" in raw:
            violations.add(
                yaml_field,
                f"'{split}: {raw}' must be a path relative to the dataset root, "
                f"e.g. images/{split}",
                Reason.BAD_DATA_YAML,
            )
            return None
        if raw.lower().endswith(".txt"):
            violations.add(
                yaml_field,
                f"'{split}: {raw}': image list files are not supported; "
                f"point '{split}' at a folder of images, e.g. images/{split}",
                Reason.BAD_DATA_YAML,
            )
            return None
        parts = raw.split("/")
        while parts and parts[0] in ("", ".", ".."):
            parts.pop(0)
        normalised = posixpath.normpath("/".join(parts)) if parts else "."
        if normalised == ".." or normalised.startswith("../"):
            violations.add(
                yaml_field, f"'{split}: {raw}' points outside the dataset", Reason.BAD_DATA_YAML
            )
            return None
        dirs.append("" if normalised == "." else normalised)
    return dirs


def _label_path(image: str) -> str:
    """Ultralytics' rule: the last `/images/` becomes `/labels/`, the suffix becomes `.txt`."""
    path = "/" + image
    if "/images/" in path:
        head, tail = path.rsplit("/images/", 1)
        path = f"{head}/labels/{tail}"
    return posixpath.splitext(path)[0][1:] + ".txt"


def plan_classify(
    root: str, members: Mapping[str, zipfile.ZipInfo], violations: Violations
) -> Plan:
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    image_classes: dict[str, str] = {}
    for rel in sorted(members):
        parts = rel.split("/")
        if not is_image(rel) or parts[0] not in SPLITS:
            continue
        if len(parts) < 3:
            violations.add(
                root + rel,
                f"image is not inside a class folder (expected {parts[0]}/<class>/{parts[1]})",
                Reason.MISPLACED_IMAGE,
            )
            continue
        splits[parts[0]].append(rel)
        image_classes[rel] = parts[1]
    for split in REQUIRED_SPLITS:
        if not splits[split]:
            violations.add(
                root + split + "/",
                f"missing split '{split}': expected {split}/<class>/<image> files",
                Reason.MISSING_SPLIT,
            )
    train_classes = {image_classes[rel] for rel in splits["train"]}
    if train_classes:
        for split in ("val", "test"):
            for cls in sorted({image_classes[rel] for rel in splits[split]} - train_classes):
                violations.add(
                    f"{root}{split}/{cls}/",
                    f"class '{cls}' is in {split} but not in train",
                    Reason.UNKNOWN_CLASS,
                )
    return Plan(
        class_names=sorted(set(image_classes.values())),
        splits={split: images for split, images in splits.items() if images},
        image_classes=image_classes,
        folders={split: [split] for split, images in splits.items() if images},
    )
