"""Dataset archive validation: layout detection, per-file checks, counts and a manifest."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import stat
import struct
import zipfile
import zlib
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, NoReturn

import yaml
from PIL import Image
from visionmesh.common.errors import FieldViolation, InvalidArgument

__all__ = [
    "ARCHIVE_FIELD",
    "IMAGE_SUFFIXES",
    "MANIFEST_VERSION",
    "MAX_VIOLATIONS",
    "ArchiveReport",
    "DatasetFormatName",
    "ManifestEntry",
    "Reason",
    "SplitReport",
    "inspect_archive",
    "iter_manifest",
    "manifest_json",
]

DatasetFormatName = Literal["detect", "classify"]

ARCHIVE_FIELD: Final = "archive"
"""Field of violations about the archive as a whole (size, corruption, layout)."""

MAX_VIOLATIONS: Final = 20
"""Violations reported at most; scanning stops once this many are found."""

MANIFEST_VERSION: Final = 1

IMAGE_SUFFIXES: Final = frozenset(
    {".bmp", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
"""Image file suffixes (compared lower-case): Ultralytics' formats that Pillow decodes."""

# Only real raster formats: without this list Pillow would also "open" text formats
# such as XBM, so a text file renamed .jpg could pass. JPEG also opens MPO files.
_PIL_FORMATS: Final = ("BMP", "JPEG", "PNG", "TIFF", "WEBP")

_SPLITS: Final = ("train", "val", "test")
_REQUIRED_SPLITS: Final = ("train", "val")
_DATA_YAML_NAMES: Final = ("data.yaml", "data.yml")
_JUNK_NAMES: Final = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_MAX_YAML_BYTES: Final = 1 << 20
_MAX_CLASSES: Final = 100_000
_CHUNK: Final = 1 << 20
# Decoded images waiting in the thread pool, bounded so memory stays flat on big archives.
_MAX_PENDING_BYTES: Final = 64 << 20
_MESSAGE_VIOLATIONS: Final = 3

_DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")
# float() also takes "nan", "inf" and "1_0"; label values must be plain decimal numbers.
_NUMBER_RE: Final = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")

_ZIP_OPEN_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
)
_ZIP_READ_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


class Reason:
    """Machine-readable `FieldViolation.reason` values of archive violations."""

    CORRUPT_ARCHIVE: Final = "CORRUPT_ARCHIVE"
    ARCHIVE_TOO_LARGE: Final = "ARCHIVE_TOO_LARGE"
    TOO_MANY_FILES: Final = "TOO_MANY_FILES"
    UNSAFE_PATH: Final = "UNSAFE_PATH"
    SYMLINK: Final = "SYMLINK"
    SPECIAL_FILE: Final = "SPECIAL_FILE"
    UNSUPPORTED_ENTRY: Final = "UNSUPPORTED_ENTRY"
    DUPLICATE_ENTRY: Final = "DUPLICATE_ENTRY"
    CORRUPT_ENTRY: Final = "CORRUPT_ENTRY"
    UNRECOGNISED_LAYOUT: Final = "UNRECOGNISED_LAYOUT"
    BAD_DATA_YAML: Final = "BAD_DATA_YAML"
    MISSING_SPLIT: Final = "MISSING_SPLIT"
    NO_IMAGES: Final = "NO_IMAGES"
    MISPLACED_IMAGE: Final = "MISPLACED_IMAGE"
    UNKNOWN_CLASS: Final = "UNKNOWN_CLASS"
    BAD_IMAGE: Final = "BAD_IMAGE"
    BAD_LABEL: Final = "BAD_LABEL"


class ManifestEntry(NamedTuple):
    """One regular file of the dataset: `path` is relative to the dataset root, '/'-separated."""

    path: str
    size: int
    sha256: str


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
    """Class names in id order."""
    splits: list[SplitReport]
    """train, val, then test when present."""
    image_count: int
    """Distinct images across the splits."""
    size_bytes: int
    """Size of the zip file itself."""
    root_prefix: str
    """Folder inside the zip that holds the dataset: "" or e.g. "coco8/" (ends with '/')."""
    manifest: list[ManifestEntry]
    """Every regular file under the root, sorted by path; zip member = root_prefix + path."""
    manifest_sha256: str


def manifest_json(report: ArchiveReport) -> bytes:
    """The canonical manifest: same files and bytes give the same JSON, whatever the zip order.

    `{"files":[{"path":...,"sha256":...,"size":...},...],"version":1}`: files sorted by
    path, keys sorted, no whitespace, ASCII only (other characters as \\u escapes).
    """
    return _manifest_bytes(report.manifest)


def iter_manifest(report: ArchiveReport) -> Iterator[tuple[str, ManifestEntry]]:
    """Each manifest entry with its member name in the zip, for extracting by manifest."""
    for entry in report.manifest:
        yield report.root_prefix + entry.path, entry


def inspect_archive(
    zip_path: Path,
    *,
    max_bytes: int,
    max_files: int = 200_000,
    workers: int = 4,
) -> ArchiveReport:
    """Validate a dataset zip in place (nothing is extracted) and describe it.

    Two layouts are recognised, at the top of the zip or inside one wrapping folder (the
    shallowest folder holding a dataset becomes `root_prefix`):

    - YOLO detection (Ultralytics): `data.yaml` with `names` (list, or `{id: name}` with
      ids 0..n-1) and `train`/`val` (optionally `test`) image folders relative to the
      root (a leading `../`, as Roboflow writes, is dropped). The label of
      `.../images/<rest>/<stem>.<ext>` is `.../labels/<rest>/<stem>.txt`: one
      `cls cx cy w h` box or `cls x1 y1 x2 y2 x3 y3 ...` polygon per line, normalised
      to [0, 1]. Images with no label file, or an empty one, are background images.
    - Classification folders: `train/<class>/<image>`, `val/<class>/<image>` (optionally
      `test/`); class names are the sorted folder names; every val/test class must be
      in train.

    Every file under the root goes into the manifest, and every one with an image suffix
    must decode (Pillow; JPEG at 1/8 scale, on `workers` threads). Files that desktop zip
    tools add (`__MACOSX/`, `._*`, `.DS_Store`, `Thumbs.db`, `desktop.ini`) pass the
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
        _fail(
            ARCHIVE_FIELD,
            f"archive is {size_bytes} bytes, over the limit of {max_bytes} bytes",
            Reason.ARCHIVE_TOO_LARGE,
        )
    with zip_path.open("rb") as fp:
        # The central directory is parsed whole on open; refuse a huge one before that.
        declared = _declared_entry_count(fp)
        if declared is not None and declared > max_files:
            _too_many_files(declared, max_files)
        try:
            zf = zipfile.ZipFile(fp)
        except _ZIP_OPEN_ERRORS as exc:
            _fail(ARCHIVE_FIELD, f"not a readable zip archive: {exc}", Reason.CORRUPT_ARCHIVE)
        with zf:
            return _inspect(
                zf, size_bytes=size_bytes, max_bytes=max_bytes, max_files=max_files, workers=workers
            )


# --- violations -------------------------------------------------------------------------


class _Violations:
    """Collects up to `MAX_VIOLATIONS` problems in discovery order and raises them as one."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_VIOLATIONS

    def add(self, path: str, description: str, reason: str) -> None:
        if not self.full:
            self.items.append(FieldViolation(field=path, description=description, reason=reason))

    def raise_if_any(self) -> None:
        if self.items:
            raise self.error()

    def error(self) -> InvalidArgument:
        shown = "; ".join(_describe(v) for v in self.items[:_MESSAGE_VIOLATIONS])
        message = f"invalid dataset archive: {shown}"
        rest = len(self.items) - _MESSAGE_VIOLATIONS
        if self.full:
            # Scanning stopped at the cap, so there may be more than we counted.
            message += f" (and at least {rest} more problems)"
        elif rest > 0:
            message += f" (and {rest} more problem{'s' if rest > 1 else ''})"
        return InvalidArgument(message, field_violations=self.items)


def _describe(violation: FieldViolation) -> str:
    if violation.field == ARCHIVE_FIELD:
        return violation.description
    return f"{violation.field}: {violation.description}"


def _fail(path: str, description: str, reason: str) -> NoReturn:
    violations = _Violations()
    violations.add(path, description, reason)
    raise violations.error()


def _too_many_files(count: int, max_files: int) -> NoReturn:
    _fail(
        ARCHIVE_FIELD,
        f"archive has {count} entries, over the limit of {max_files}",
        Reason.TOO_MANY_FILES,
    )


# --- the archive as a whole -------------------------------------------------------------


def _declared_entry_count(fp: IO[bytes]) -> int | None:
    """Entry count from the end-of-central-directory record; None when it cannot be found."""
    fp.seek(0, io.SEEK_END)
    size = fp.tell()
    tail_len = min(size, 22 + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        return None
    (total,) = struct.unpack_from("<H", tail, pos + 10)
    if total != 0xFFFF:
        return int(total)
    # Zip64: the locator sits right before the classic record and points at the zip64 one.
    loc = pos - 20
    if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
        return int(total)
    (offset,) = struct.unpack_from("<Q", tail, loc + 8)
    if offset + 56 > size:
        return None
    fp.seek(offset)
    record = fp.read(56)
    if record[:4] != b"PK\x06\x06":
        return None
    (total64,) = struct.unpack_from("<Q", record, 32)
    return int(total64)


def _inspect(
    zf: zipfile.ZipFile, *, size_bytes: int, max_bytes: int, max_files: int, workers: int
) -> ArchiveReport:
    infos = zf.infolist()
    if len(infos) > max_files:
        _too_many_files(len(infos), max_files)
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        _fail(
            ARCHIVE_FIELD,
            f"uncompressed size {total} bytes is over the limit of {max_bytes} bytes",
            Reason.ARCHIVE_TOO_LARGE,
        )
    files = _index_entries(infos)
    fmt, root = _detect_layout(files)
    members = {name[len(root) :]: info for name, info in files.items() if name.startswith(root)}

    violations = _Violations()
    if fmt == "detect":
        plan = _plan_detect(zf, root, members, violations)
    else:
        plan = _plan_classify(root, members, violations)
    if plan is None:
        # The plan is missing only after a violation (e.g. an unreadable data.yaml).
        raise violations.error()

    manifest, label_counts = _scan(zf, root, members, plan, violations, workers=workers)
    violations.raise_if_any()

    splits = _split_reports(fmt, plan, label_counts)
    return ArchiveReport(
        format=fmt,
        class_names=list(plan.class_names),
        splits=splits,
        image_count=len({rel for images in plan.splits.values() for rel in images}),
        size_bytes=size_bytes,
        root_prefix=root,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(_manifest_bytes(manifest)).hexdigest(),
    )


def _manifest_bytes(entries: Sequence[ManifestEntry]) -> bytes:
    document = {
        "files": [
            {"path": e.path, "sha256": e.sha256, "size": e.size}
            for e in sorted(entries, key=lambda e: e.path)
        ],
        "version": MANIFEST_VERSION,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --- entries: safety before anything is read --------------------------------------------


def _unsafe_name(name: str) -> str | None:
    if not name:
        return "empty path"
    if "\\" in name:
        return "backslash in path: zip paths must use '/' separators"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "control character in path"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE_RE.match(name):
        return "absolute path with a drive letter"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "path escapes the archive ('..')"
    if any(part in ("", ".") for part in parts):
        return "path has an empty or '.' component"
    if any(len(part.encode()) > 255 for part in parts):
        return "path component longer than 255 bytes"
    return None


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1]
    return "__MACOSX" in parts or base in _JUNK_NAMES or base.startswith("._")


def _index_entries(infos: Sequence[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Regular, non-junk files by name; raises when any entry is unsafe or unreadable."""
    violations = _Violations()
    files: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        problem = _unsafe_name(name)
        if problem:
            violations.add(name, problem, Reason.UNSAFE_PATH)
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            violations.add(name, "symbolic links are not allowed", Reason.SYMLINK)
            continue
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            violations.add(name, "not a regular file or folder", Reason.SPECIAL_FILE)
            continue
        if info.flag_bits & 0x1:
            violations.add(name, "encrypted entries are not supported", Reason.UNSUPPORTED_ENTRY)
            continue
        # bzip2/lzma decompress without an output bound in zipfile; deflate is what tools write.
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            violations.add(
                name,
                f"unsupported compression method {info.compress_type}: "
                "re-create the zip with deflate or no compression",
                Reason.UNSUPPORTED_ENTRY,
            )
            continue
        key = name.removesuffix("/")
        if key in seen:
            violations.add(name, "duplicate entry", Reason.DUPLICATE_ENTRY)
            continue
        seen.add(key)
        if name.endswith("/") or kind == stat.S_IFDIR or _is_junk(name):
            continue
        files[name] = info
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                violations.add(parent, "is both a file and a folder", Reason.DUPLICATE_ENTRY)
    violations.raise_if_any()
    return files


# --- layout -----------------------------------------------------------------------------


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_SUFFIXES


def _detect_layout(files: Mapping[str, zipfile.ZipInfo]) -> tuple[DatasetFormatName, str]:
    """The format and the dataset root: the shallowest folder that holds a dataset."""
    candidates: set[tuple[int, int, DatasetFormatName, str]] = set()
    for name in files:
        parts = name.split("/")
        if parts[-1] in _DATA_YAML_NAMES:
            root = "".join(part + "/" for part in parts[:-1])
            candidates.add((len(parts) - 1, 0, "detect", root))
        elif _is_image(name):
            # <root>/<split>/<class>/.../<image>
            for i in range(len(parts) - 2):
                if parts[i] in _SPLITS:
                    candidates.add((i, 1, "classify", "".join(part + "/" for part in parts[:i])))
                    break
    if not candidates:
        hint = ""
        dirs = {part for name in files for part in name.split("/")[:-1]}
        if {"images", "labels"} <= dirs:
            hint = " (found images/ and labels/ folders but no data.yaml)"
        _fail(
            ARCHIVE_FIELD,
            "unrecognised dataset layout"
            + hint
            + ": expected YOLO detection (data.yaml, images/<split>/, labels/<split>/) or "
            "classification folders (train/<class>/<image>, val/<class>/<image>), at the top "
            "of the zip or inside one folder",
            Reason.UNRECOGNISED_LAYOUT,
        )
    best = min(candidates)
    tied = sorted(c[3] or "the top level" for c in candidates if c[:2] == best[:2])
    if len(tied) > 1:
        _fail(
            ARCHIVE_FIELD,
            f"several datasets in one archive (in {', '.join(tied)}): upload one at a time",
            Reason.UNRECOGNISED_LAYOUT,
        )
    return best[2], best[3]


@dataclass(slots=True)
class _Plan:
    """What the scan must check and count, derived from names (and data.yaml) alone."""

    class_names: list[str]
    splits: dict[str, list[str]]
    """Split name -> image paths relative to the root, sorted."""
    labels: dict[str, str] = field(default_factory=dict)
    """Detect: image path -> its label file path (only where that file exists)."""
    image_classes: dict[str, str] = field(default_factory=dict)
    """Classify: image path -> class name."""


def _plan_detect(
    zf: zipfile.ZipFile,
    root: str,
    members: Mapping[str, zipfile.ZipInfo],
    violations: _Violations,
) -> _Plan | None:
    yaml_rel = next(n for n in _DATA_YAML_NAMES if n in members)
    yaml_field = root + yaml_rel
    doc = _load_data_yaml(zf, members[yaml_rel], yaml_field, violations)
    if doc is None:
        return None
    class_names = _class_names(doc, yaml_field, violations)
    split_dirs = {split: _split_dirs(doc, split, yaml_field, violations) for split in _SPLITS}
    if class_names is None:
        return None

    images = sorted(rel for rel in members if _is_image(rel))
    if not images:
        violations.add(
            ARCHIVE_FIELD,
            f"no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)",
            Reason.NO_IMAGES,
        )
    splits: dict[str, list[str]] = {}
    for split, dirs in split_dirs.items():
        if dirs is None:
            continue
        if not dirs:
            if split in _REQUIRED_SPLITS:
                violations.add(
                    yaml_field,
                    f"no '{split}' split: add e.g. `{split}: images/{split}`",
                    Reason.MISSING_SPLIT,
                )
            continue
        selected = [rel for rel in images if any(d == "" or rel.startswith(d + "/") for d in dirs)]
        if selected:
            splits[split] = selected
        elif images and split in _REQUIRED_SPLITS:
            # An optional split (test) declared but absent is skipped, as Ultralytics does.
            where = root + dirs[0] + "/" if dirs[0] else root or ARCHIVE_FIELD
            violations.add(where, f"split '{split}' has no images", Reason.MISSING_SPLIT)
    labels: dict[str, str] = {}
    for rel in sorted({rel for selected in splits.values() for rel in selected}):
        label = _label_path(rel)
        if label in members:
            labels[rel] = label
    return _Plan(class_names=class_names, splits=splits, labels=labels)


def _load_data_yaml(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, yaml_field: str, violations: _Violations
) -> dict[Any, Any] | None:
    if info.file_size > _MAX_YAML_BYTES:
        violations.add(yaml_field, f"larger than {_MAX_YAML_BYTES} bytes", Reason.BAD_DATA_YAML)
        return None
    try:
        _, raw = _read_entry(zf, info, keep=True)
    except _EntryError as exc:
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
    doc: Mapping[Any, Any], yaml_field: str, violations: _Violations
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
    doc: Mapping[Any, Any], split: str, yaml_field: str, violations: _Violations
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
        if raw.startswith("/") or _DRIVE_RE.match(raw) or "://" in raw:
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


def _plan_classify(
    root: str, members: Mapping[str, zipfile.ZipInfo], violations: _Violations
) -> _Plan:
    splits: dict[str, list[str]] = {split: [] for split in _SPLITS}
    image_classes: dict[str, str] = {}
    for rel in sorted(members):
        parts = rel.split("/")
        if not _is_image(rel) or parts[0] not in _SPLITS:
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
    for split in _REQUIRED_SPLITS:
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
    return _Plan(
        class_names=sorted(set(image_classes.values())),
        splits={split: images for split, images in splits.items() if images},
        image_classes=image_classes,
    )


# --- content ----------------------------------------------------------------------------


class _EntryError(Exception):
    """An entry's bytes cannot be read (bad CRC, truncated or corrupt compressed data)."""


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, *, keep: bool) -> tuple[str, bytes]:
    """The entry's sha256 and, when `keep`, its bytes.

    Reads in bounded chunks: zipfile stops at the declared size and checks the CRC, and a
    bounded read also bounds how much a lying deflate stream can inflate at once.
    """
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                if keep:
                    chunks.append(chunk)
    except _ZIP_READ_ERRORS as exc:
        raise _EntryError(f"corrupt entry: {exc}") from exc
    return digest.hexdigest(), b"".join(chunks)


def _check_image(data: bytes) -> str | None:
    """Why `data` is not a usable image, or None."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            im.verify()
        # verify() leaves the image unusable and does not decode pixels; a full load
        # catches truncation. draft() lets libjpeg decode at 1/8 scale, grey only.
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Image.DecompressionBombError as exc:
        return f"image too large to decode safely: {exc}"
    except Image.UnidentifiedImageError:
        return "not a decodable image (expected JPEG, PNG, BMP, TIFF or WebP data)"
    except Exception as exc:
        # Hostile or damaged files make Pillow raise almost anything (OSError,
        # SyntaxError, ValueError, struct.error...); each one means "bad image".
        return f"not a decodable image: {exc or type(exc).__name__}"
    return None


class _ImageChecker:
    """Decodes images on a thread pool, collecting results first-in-first-out.

    Each image carries its position in the scan; `frontier` is the first position whose
    result may still be unknown, so everything before it is final whatever the timing.
    """

    def __init__(self, workers: int, found: list[tuple[int, FieldViolation]]) -> None:
        self._found = found
        self._pool = ThreadPoolExecutor(workers, "archive-decode") if workers > 1 else None
        self._max_pending = 4 * workers
        self._pending: deque[tuple[int, str, int, Future[str | None]]] = deque()
        self._pending_bytes = 0

    def __enter__(self) -> _ImageChecker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._collect_one()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def frontier(self, position: int) -> int:
        """The first position not known yet, given that the scan is at `position`."""
        return self._pending[0][0] if self._pending else position

    def submit(self, position: int, path: str, data: bytes) -> None:
        if self._pool is None:
            self._record(position, path, _check_image(data))
            return
        future = self._pool.submit(_check_image, data)
        self._pending.append((position, path, len(data), future))
        self._pending_bytes += len(data)
        while len(self._pending) > self._max_pending or self._pending_bytes > _MAX_PENDING_BYTES:
            self._collect_one()

    def _collect_one(self) -> None:
        position, path, size, future = self._pending.popleft()
        self._pending_bytes -= size
        self._record(position, path, future.result())

    def _record(self, position: int, path: str, problem: str | None) -> None:
        if problem is not None:
            self._found.append((position, FieldViolation(path, problem, Reason.BAD_IMAGE)))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def _check_label_line(values: Sequence[str], class_count: int) -> str | None:
    count = len(values)
    if count != 5 and (count < 7 or count % 2 == 0):
        return (
            "expected 5 values (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...), "
            f"got {count}"
        )
    numbers: list[float] = []
    for value in values:
        if not _NUMBER_RE.fullmatch(value):
            return f"{value!r} is not a number"
        numbers.append(float(value))
    class_id = numbers[0]
    if not class_id.is_integer():
        return f"class id {values[0]} is not an integer"
    if not 0 <= class_id < class_count:
        return f"class id {int(class_id)} out of range ({_plural(class_count, 'class')})"
    for column, number in enumerate(numbers[1:], start=2):
        if not 0.0 <= number <= 1.0:
            return (
                f"value {values[column - 1]} (column {column}) is outside [0, 1]; "
                "coordinates must be normalised by the image size"
            )
    if count == 5 and (numbers[3] <= 0 or numbers[4] <= 0):
        return f"box width and height must be > 0, got w={values[3]} h={values[4]}"
    return None


def _parse_label(data: bytes, class_count: int) -> Counter[int] | str:
    """Instances per class id of one label file, or what is wrong with it."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    counts: Counter[int] = Counter()
    first_problem: str | None = None
    bad_lines = 0
    for line_number, line in enumerate(text.splitlines(), start=1):
        values = line.split()
        if not values:
            continue
        problem = _check_label_line(values, class_count)
        if problem is not None:
            bad_lines += 1
            first_problem = first_problem or f"line {line_number}: {problem}"
            continue
        counts[int(float(values[0]))] += 1
    if first_problem is None:
        return counts
    if bad_lines > 1:
        first_problem += f" (and {bad_lines - 1} more bad line{'s' if bad_lines > 2 else ''})"
    return first_problem


def _scan(
    zf: zipfile.ZipFile,
    root: str,
    members: Mapping[str, zipfile.ZipInfo],
    plan: _Plan,
    violations: _Violations,
    *,
    workers: int,
) -> tuple[list[ManifestEntry], dict[str, Counter[int]]]:
    """One pass in path order: hash every file, decode images, parse the labels in use.

    Violations are added in path order, and when there are too many, the ones reported
    are the first in path order, for any number of workers.
    """
    manifest: list[ManifestEntry] = []
    label_counts: dict[str, Counter[int]] = {}
    label_paths = set(plan.labels.values())
    budget = MAX_VIOLATIONS - len(violations.items)
    found: list[tuple[int, FieldViolation]] = []
    with _ImageChecker(workers, found) as images:
        for position, rel in enumerate(sorted(members)):
            frontier = images.frontier(position)
            if sum(1 for p, _ in found if p < frontier) >= budget:
                break
            info = members[rel]
            path = root + rel
            is_image = _is_image(rel)
            is_label = rel in label_paths
            try:
                digest, data = _read_entry(zf, info, keep=is_image or is_label)
            except _EntryError as exc:
                found.append((position, FieldViolation(path, str(exc), Reason.CORRUPT_ENTRY)))
                continue
            manifest.append(ManifestEntry(path=rel, size=info.file_size, sha256=digest))
            if is_image:
                images.submit(position, path, data)
            elif is_label:
                counts = _parse_label(data, len(plan.class_names))
                if isinstance(counts, str):
                    found.append((position, FieldViolation(path, counts, Reason.BAD_LABEL)))
                else:
                    label_counts[rel] = counts
    for _, violation in sorted(found, key=lambda item: item[0]):
        violations.add(violation.field, violation.description, violation.reason)
    return manifest, label_counts


def _split_reports(
    fmt: DatasetFormatName, plan: _Plan, label_counts: Mapping[str, Counter[int]]
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
