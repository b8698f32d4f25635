"""inspect_archive: validates a dataset zip in place and describes it with a manifest."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from visionmesh.common.datasets import (
    DatasetManifest,
    ManifestFile,
    ManifestProduct,
    ManifestSplit,
    label_dir,
)
from visionmesh.common.errors import FieldViolation
from visionmesh.gateway.core.archive._catalog import plan_catalog
from visionmesh.gateway.core.archive._images import ImageChecker
from visionmesh.gateway.core.archive._labels import parse_label
from visionmesh.gateway.core.archive._layout import (
    DatasetFormatName,
    Plan,
    detect_layout,
    is_image,
    plan_classify,
    plan_detect,
)
from visionmesh.gateway.core.archive._violations import (
    ARCHIVE_FIELD,
    MAX_VIOLATIONS,
    Reason,
    Violations,
    fail,
    too_many_files,
)
from visionmesh.gateway.core.archive._zipsafety import (
    ZIP_OPEN_ERRORS,
    EntryError,
    declared_entry_count,
    index_entries,
    read_entry,
)

ManifestEntry = ManifestFile
"""One regular file of the dataset (the shared manifest's file entry)."""


@dataclass(frozen=True, slots=True)
class SplitReport:
    """Counts for one split (`train`, `val` or `test`)."""

    name: str
    image_count: int
    instances_per_class: dict[str, int]
    """Every class name, in id order: detect counts boxes/polygons, classify counts images."""
    background_count: int = 0
    """Detect only: images with no objects (no label file, or an empty one)."""


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    """What a valid dataset archive holds; `manifest_sha256` hashes `manifest_json(report)`."""

    format: DatasetFormatName
    class_names: list[str]
    """Class names in id order (none for a catalog)."""
    splits: list[SplitReport]
    """train, val, then test when present (none for a catalog)."""
    image_count: int
    """Distinct images across the splits (catalog: the products' images)."""
    size_bytes: int
    """Size of the zip file itself."""
    root_prefix: str
    """Folder inside the zip that holds the dataset: "" or e.g. "coco8/" (ends with '/')."""
    manifest: DatasetManifest
    """The resolved layout, every regular file under the root and the archive's hash."""
    manifest_sha256: str
    product_count: int = 0
    """Catalog: products listed in products.jsonl."""
    products_without_images: int = 0
    """Catalog: listed products with no image under images/<product_id>/."""


def manifest_json(report: ArchiveReport) -> bytes:
    """The canonical manifest JSON (`DatasetManifest.to_json`): one archive, one byte string."""
    return report.manifest.to_json()


def iter_manifest(report: ArchiveReport) -> Iterator[tuple[str, ManifestEntry]]:
    """Each manifest entry with its member name in the zip, for extracting by manifest."""
    return report.manifest.members()


def inspect_archive(
    zip_path: Path,
    *,
    max_bytes: int,
    max_files: int = 200_000,
    workers: int = 4,
) -> ArchiveReport:
    """Validate a dataset zip in place (nothing is extracted) and describe it.

    Three layouts are recognised, at the top of the zip or inside one wrapping folder (the
    shallowest folder holding a dataset becomes `root_prefix`):

    - YOLO detection (Ultralytics): `data.yaml` (or `data.yml`) with `names` (list, or
      `{id: name}` with ids 0..n-1) and `train`/`val` (optionally `test`) image folders
      relative to the root (a leading `../`, as Roboflow writes, is dropped). The label of
      `.../images/<rest>/<stem>.<ext>` is `.../labels/<rest>/<stem>.txt`: one
      `cls cx cy w h` box or `cls x1 y1 x2 y2 x3 y3 ...` polygon per line, normalised
      to [0, 1]. Images with no label file, or an empty one, are background images.
    - Classification folders: `train/<class>/<image>`, `val/<class>/<image>` (optionally
      `test/`); class names are the sorted folder names; every val/test class must be
      in train.
    - Product catalogue: `products.jsonl` (one JSON object per line, an `id` plus free
      metadata) and `images/<product_id>/<image>` reference images; see `plan_catalog`
      for its rules. The manifest lists the products with their metadata and images.

    The manifest records the layout as resolved here (root, split and label folders,
    class names), so workers never interpret the data.yaml again. Every file under the
    root goes into it, and every one with an image suffix must decode (Pillow; JPEG at
    1/8 scale, on `workers` threads). Files that desktop zip tools add (`__MACOSX/`,
    `._*`, `.DS_Store`, `Thumbs.db`, `desktop.ini`) pass the
    safety checks but are otherwise ignored, as are files outside the root.

    The zip's size and the total uncompressed size its entries declare must each be at
    most `max_bytes`, and it may hold at most `max_files` entries: these are checked
    before anything is decompressed, and reads never go past the declared sizes.

    Raises:
        InvalidArgument: the archive is unusable. Each field violation names a path inside
            the archive (root prefix included), or `"archive"` for the archive as a whole,
            and carries a `Reason`: at most `MAX_VIOLATIONS`, layout problems first, then
            files in path order.
    """
    if max_bytes <= 0 or max_files <= 0 or workers <= 0:
        raise ValueError("max_bytes, max_files and workers must be positive")
    zip_path = Path(zip_path)
    size_bytes = zip_path.stat().st_size
    if size_bytes > max_bytes:
        fail(
            ARCHIVE_FIELD,
            f"archive is {size_bytes} bytes, over the limit of {max_bytes} bytes",
            Reason.ARCHIVE_TOO_LARGE,
        )
    with zip_path.open("rb") as fp:
        # The central directory is parsed whole on open; refuse a huge one before that.
        declared = declared_entry_count(fp)
        if declared is not None and declared > max_files:
            too_many_files(declared, max_files)
        try:
            zf = zipfile.ZipFile(fp)
        except ZIP_OPEN_ERRORS as exc:
            fail(ARCHIVE_FIELD, f"not a readable zip archive: {exc}", Reason.CORRUPT_ARCHIVE)
        with zf:
            layout, files = _inspect(zf, max_bytes=max_bytes, max_files=max_files, workers=workers)
        # Hashed from the same open file that was validated.
        fp.seek(0)
        archive_sha256 = hashlib.file_digest(fp, "sha256").hexdigest()
    manifest = DatasetManifest(
        format=layout.format,
        root_prefix=layout.root,
        class_names=tuple(layout.plan.class_names),
        splits=tuple(
            ManifestSplit(
                name=split,
                images=tuple(folders),
                labels=() if layout.format == "classify" else tuple(map(label_dir, folders)),
            )
            for split, folders in layout.plan.folders.items()
        ),
        files=tuple(files),
        archive_sha256=archive_sha256,
        archive_size=size_bytes,
        products=_products(layout.plan, files),
    )
    plan = layout.plan
    if layout.format == "catalog":
        image_count = sum(len(images) for images in plan.product_images.values())
    else:
        image_count = len({rel for images in plan.splits.values() for rel in images})
    return ArchiveReport(
        format=layout.format,
        class_names=list(plan.class_names),
        splits=layout.splits,
        image_count=image_count,
        size_bytes=size_bytes,
        root_prefix=layout.root,
        manifest=manifest,
        manifest_sha256=manifest.sha256(),
        product_count=len(plan.products),
        products_without_images=sum(1 for images in plan.product_images.values() if not images),
    )


def _products(plan: Plan, files: list[ManifestFile]) -> tuple[ManifestProduct, ...]:
    by_path = {entry.path: entry for entry in files}
    return tuple(
        ManifestProduct(
            id=product_id,
            metadata=metadata,
            images=tuple(by_path[rel] for rel in plan.product_images[product_id]),
        )
        for product_id, metadata in plan.products.items()
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    format: DatasetFormatName
    root: str
    plan: Plan
    splits: list[SplitReport]


def _inspect(
    zf: zipfile.ZipFile, *, max_bytes: int, max_files: int, workers: int
) -> tuple[_Layout, list[ManifestFile]]:
    infos = zf.infolist()
    if len(infos) > max_files:
        too_many_files(len(infos), max_files)
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        fail(
            ARCHIVE_FIELD,
            f"uncompressed size {total} bytes is over the limit of {max_bytes} bytes",
            Reason.ARCHIVE_TOO_LARGE,
        )
    files = index_entries(infos)
    fmt, root = detect_layout(files)
    members = {name[len(root) :]: info for name, info in files.items() if name.startswith(root)}

    violations = Violations()
    plan: Plan | None
    if fmt == "detect":
        plan = plan_detect(zf, root, members, violations)
    elif fmt == "catalog":
        plan = plan_catalog(zf, root, members, violations)
    else:
        plan = plan_classify(root, members, violations)
    if plan is None:
        # The plan is missing only after a violation (e.g. an unreadable data.yaml).
        raise violations.error()

    manifest, label_counts = _scan(zf, root, members, plan, violations, workers=workers)
    violations.raise_if_any()
    layout = _Layout(
        format=fmt, root=root, plan=plan, splits=_split_reports(fmt, plan, label_counts)
    )
    return layout, manifest


def _scan(
    zf: zipfile.ZipFile,
    root: str,
    members: Mapping[str, zipfile.ZipInfo],
    plan: Plan,
    violations: Violations,
    *,
    workers: int,
) -> tuple[list[ManifestFile], dict[str, Counter[int]]]:
    """One pass in path order: hash every file, decode images, parse the labels in use.

    Violations are added in path order, and when there are too many, the ones reported
    are the first in path order, for any number of workers.
    """
    manifest: list[ManifestFile] = []
    label_counts: dict[str, Counter[int]] = {}
    label_paths = set(plan.labels.values())
    budget = MAX_VIOLATIONS - len(violations.items)
    found: list[tuple[int, FieldViolation]] = []
    with ImageChecker(workers, found) as images:
        for position, rel in enumerate(sorted(members)):
            frontier = images.frontier(position)
            if sum(1 for p, _ in found if p < frontier) >= budget:
                break
            info = members[rel]
            path = root + rel
            image = is_image(rel)
            is_label = rel in label_paths
            try:
                digest, data = read_entry(zf, info, keep=image or is_label)
            except EntryError as exc:
                found.append((position, FieldViolation(path, str(exc), Reason.CORRUPT_ENTRY)))
                continue
            manifest.append(ManifestFile(path=rel, size=info.file_size, sha256=digest))
            if image:
                images.submit(position, path, data)
            elif is_label:
                counts = parse_label(data, len(plan.class_names))
                if isinstance(counts, str):
                    found.append((position, FieldViolation(path, counts, Reason.BAD_LABEL)))
                else:
                    label_counts[rel] = counts
    for _, violation in sorted(found, key=lambda item: item[0]):
        violations.add(violation.field, violation.description, violation.reason)
    return manifest, label_counts


def _split_reports(
    fmt: DatasetFormatName, plan: Plan, label_counts: Mapping[str, Counter[int]]
) -> list[SplitReport]:
    reports: list[SplitReport] = []
    for split, images in plan.splits.items():
        background = 0
        if fmt == "detect":
            per_id: Counter[int] = Counter()
            for rel in images:
                label = plan.labels.get(rel)
                counts = label_counts.get(label) if label is not None else None
                if not counts:
                    background += 1
                else:
                    per_id.update(counts)
            instances = {name: per_id[i] for i, name in enumerate(plan.class_names)}
        else:
            per_name = Counter(plan.image_classes[rel] for rel in images)
            instances = {name: per_name[name] for name in plan.class_names}
        reports.append(
            SplitReport(
                name=split,
                image_count=len(images),
                instances_per_class=instances,
                background_count=background,
            )
        )
    return reports
