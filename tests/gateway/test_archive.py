"""Dataset archive validation: layouts, counts, manifest determinism and every rejection."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from visionmesh.common.datasets import DatasetManifest, ManifestSplit
from visionmesh.common.errors import InvalidArgument
from visionmesh.gateway.core.archive import (
    ARCHIVE_FIELD,
    MANIFEST_VERSION,
    MAX_VIOLATIONS,
    ArchiveReport,
    ManifestEntry,
    Reason,
    SplitReport,
    inspect_archive,
    iter_manifest,
    manifest_json,
)

MAX_BYTES = 50 << 20
Entry = tuple["str | zipfile.ZipInfo", bytes]


def _image(fmt: str, size: tuple[int, int], seed: int) -> bytes:
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg(seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    return _image("JPEG", size, seed)


def png(seed: int = 0, size: tuple[int, int] = (24, 32)) -> bytes:
    return _image("PNG", size, seed)


def noisy_jpeg() -> bytes:
    """A JPEG whose entropy-coded data is long enough to cut in the middle."""
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 64).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_zip(
    path: Path,
    entries: Iterable[Entry],
    *,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate-name tests
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


DETECT_YAML = "names: [cat, dog, bird]\ntrain: images/train\nval: images/val\n"
DETECT_YAML_DICT = (
    "path: ../datasets/pets\ntrain: images/train\nval: images/val\n"
    "names:\n  0: cat\n  1: dog\n  2: bird\n"
)


def detect_entries(prefix: str = "", data_yaml: str = DETECT_YAML) -> list[Entry]:
    return [
        (f"{prefix}data.yaml", data_yaml.encode()),
        (f"{prefix}images/train/img_001.jpg", jpeg(1)),
        (f"{prefix}images/train/img_002.png", png(2)),
        (f"{prefix}images/train/img_003.jpg", jpeg(3)),
        (f"{prefix}images/train/img_004.jpg", jpeg(4)),  # background: no label file
        (f"{prefix}images/val/img_101.jpg", jpeg(5)),
        (f"{prefix}images/val/img_102.jpg", jpeg(6)),
        (f"{prefix}labels/train/img_001.txt", b"0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"),
        # A polygon (segment) line: class + three xy pairs.
        (f"{prefix}labels/train/img_002.txt", b"2 0.1 0.2 0.3 0.1 0.2 0.25\n"),
        (f"{prefix}labels/train/img_003.txt", b"1 0.5 0.5 0.5 0.5\r\n\r\n1 0.2 0.2 0.1 0.1"),
        (f"{prefix}labels/val/img_101.txt", b"0 0.5 0.5 1 1\n"),
        (f"{prefix}labels/val/img_102.txt", b""),  # background: empty label file
    ]


def classify_entries(prefix: str = "") -> list[Entry]:
    return [
        (f"{prefix}train/cat/a.jpg", jpeg(1)),
        (f"{prefix}train/cat/b.png", png(2)),
        (f"{prefix}train/dog/c.jpg", jpeg(3)),
        (f"{prefix}val/cat/d.jpg", jpeg(4)),
        (f"{prefix}val/dog/e.JPG", jpeg(5)),
        (f"{prefix}val/dog/f.jpeg", jpeg(6)),
    ]


def replace(entries: Sequence[Entry], name: str, data: bytes) -> list[Entry]:
    assert any(n == name for n, _ in entries), name
    return [(n, data if n == name else d) for n, d in entries]


def without(entries: Sequence[Entry], *names: str) -> list[Entry]:
    return [(n, d) for n, d in entries if n not in names]


def inspect(tmp_path: Path, entries: Iterable[Entry], **kwargs: Any) -> ArchiveReport:
    kwargs.setdefault("max_bytes", MAX_BYTES)
    return inspect_archive(write_zip(tmp_path / "dataset.zip", entries), **kwargs)


def rejection(tmp_path: Path, entries: Iterable[Entry], **kwargs: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        inspect(tmp_path, entries, **kwargs)
    return info.value


def only_violation(error: InvalidArgument) -> tuple[str, str, str]:
    assert len(error.field_violations) == 1, error.field_violations
    (violation,) = error.field_violations
    return violation.field, violation.description, violation.reason


# --- good archives ----------------------------------------------------------------------


def test_detect_archive_is_counted_and_manifested(tmp_path: Path) -> None:
    entries = detect_entries()
    zip_path = write_zip(tmp_path / "dataset.zip", entries)

    report = inspect_archive(zip_path, max_bytes=MAX_BYTES)

    assert report.format == "detect"
    assert report.class_names == ["cat", "dog", "bird"]
    assert report.root_prefix == ""
    assert report.splits == [
        SplitReport("train", 4, {"cat": 1, "dog": 3, "bird": 1}, background_count=1),
        SplitReport("val", 2, {"cat": 1, "dog": 0, "bird": 0}, background_count=1),
    ]
    assert report.image_count == 6
    assert report.size_bytes == zip_path.stat().st_size
    assert list(report.manifest.files) == sorted(
        (
            ManifestEntry(str(name), len(data), hashlib.sha256(data).hexdigest())
            for name, data in entries
        ),
        key=lambda entry: entry.path,
    )
    assert report.manifest.archive_size == report.size_bytes
    assert report.manifest.archive_sha256 == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert report.manifest_sha256 == hashlib.sha256(manifest_json(report)).hexdigest()
    assert report.manifest.splits == (
        ManifestSplit("train", ("images/train",), ("labels/train",)),
        ManifestSplit("val", ("images/val",), ("labels/val",)),
    )


def test_manifest_json_is_canonical(tmp_path: Path) -> None:
    report = inspect(tmp_path, detect_entries())

    raw = manifest_json(report)

    document = json.loads(raw)
    assert document["version"] == 2 < MANIFEST_VERSION  # detect stays version 2, byte for byte
    assert document["format"] == "detect"
    assert document["root_prefix"] == ""
    assert document["class_names"] == ["cat", "dog", "bird"]
    assert document["files"][0] == {
        "path": "data.yaml",
        "sha256": hashlib.sha256(DETECT_YAML.encode()).hexdigest(),
        "size": len(DETECT_YAML),
    }
    assert [f["path"] for f in document["files"]] == [e.path for e in report.manifest.files]
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")
    assert DatasetManifest.from_json(raw) == report.manifest


def test_detect_archive_in_a_top_folder_with_names_dict(tmp_path: Path) -> None:
    report = inspect(tmp_path, detect_entries("pets-v2/", DETECT_YAML_DICT))

    assert report.format == "detect"
    assert report.root_prefix == "pets-v2/"
    assert report.class_names == ["cat", "dog", "bird"]
    assert [s.image_count for s in report.splits] == [4, 2]
    assert report.splits[0].instances_per_class == {"cat": 1, "dog": 3, "bird": 1}
    assert all(not e.path.startswith("pets-v2") for e in report.manifest.files)
    assert report.manifest.root_prefix == "pets-v2/"
    members = dict(iter_manifest(report))
    assert members["pets-v2/data.yaml"].path == "data.yaml"
    assert len(members) == len(report.manifest.files)


def test_wrapping_folder_changes_only_the_root_prefix(tmp_path: Path) -> None:
    flat = inspect_archive(write_zip(tmp_path / "flat.zip", detect_entries()), max_bytes=MAX_BYTES)
    wrapped = inspect_archive(
        write_zip(tmp_path / "wrapped.zip", detect_entries("export/")), max_bytes=MAX_BYTES
    )

    assert wrapped.root_prefix == wrapped.manifest.root_prefix == "export/"
    assert wrapped.manifest.files == flat.manifest.files
    assert wrapped.manifest.splits == flat.manifest.splits


def test_data_yml_is_read_and_its_layout_recorded(tmp_path: Path) -> None:
    entries = [
        (str(name).replace("data.yaml", "data.yml"), data)
        for name, data in detect_entries("shapes/")
    ]

    report = inspect(tmp_path, entries)

    assert report.format == "detect"
    assert report.class_names == ["cat", "dog", "bird"]
    assert report.manifest.root_prefix == "shapes/"
    assert report.manifest.splits == (
        ManifestSplit("train", ("images/train",), ("labels/train",)),
        ManifestSplit("val", ("images/val",), ("labels/val",)),
    )
    assert "data.yml" in {entry.path for entry in report.manifest.files}


def test_split_folders_without_images_are_left_out_of_the_manifest(tmp_path: Path) -> None:
    data_yaml = "names: [cat, dog, bird]\ntrain: [images/train, images/extra]\nval: images/val\n"

    report = inspect(tmp_path, detect_entries(data_yaml=data_yaml))

    assert report.manifest.splits[0] == ManifestSplit("train", ("images/train",), ("labels/train",))


def test_roboflow_style_detect_layout(tmp_path: Path) -> None:
    data_yaml = b"train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['car', 'bus']\n"
    entries: list[Entry] = [
        ("data.yaml", data_yaml),
        ("train/images/a.jpg", jpeg(1)),
        ("train/images/b.jpg", jpeg(2)),
        ("train/labels/a.txt", b"1 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.1 0.1\n"),
        ("valid/images/c.jpg", jpeg(3)),
        ("valid/labels/c.txt", b"0 0.5 0.5 0.1 0.1\n"),
    ]

    report = inspect(tmp_path, entries)

    assert report.format == "detect"
    assert report.splits == [
        SplitReport("train", 2, {"car": 0, "bus": 2}, background_count=1),
        SplitReport("val", 1, {"car": 1, "bus": 0}, background_count=0),
    ]
    # The manifest holds the resolved folders, not the YAML's `../train/images`.
    assert report.manifest.splits == (
        ManifestSplit("train", ("train/images",), ("train/labels",)),
        ManifestSplit("val", ("valid/images",), ("valid/labels",)),
    )


def test_classification_folders(tmp_path: Path) -> None:
    report = inspect(tmp_path, classify_entries())

    assert report.format == "classify"
    assert report.class_names == ["cat", "dog"]
    assert report.root_prefix == ""
    assert report.splits == [
        SplitReport("train", 3, {"cat": 2, "dog": 1}),
        SplitReport("val", 3, {"cat": 1, "dog": 2}),
    ]
    assert report.image_count == 6
    assert [e.path for e in report.manifest.files] == sorted(
        str(name) for name, _ in classify_entries()
    )
    assert report.manifest.format == "classify"
    assert report.manifest.splits == (
        ManifestSplit("train", ("train",)),
        ManifestSplit("val", ("val",)),
    )


def test_classification_in_a_top_folder_with_test_split(tmp_path: Path) -> None:
    entries = [*classify_entries("flowers/"), ("flowers/test/cat/g.jpg", jpeg(7))]

    report = inspect(tmp_path, entries)

    assert report.format == "classify"
    assert report.root_prefix == "flowers/"
    assert [s.name for s in report.splits] == ["train", "val", "test"]
    assert report.splits[2] == SplitReport("test", 1, {"cat": 1, "dog": 0})
    assert report.image_count == 7


def test_manifest_ignores_zip_order_and_compression(tmp_path: Path) -> None:
    entries = detect_entries()
    first = inspect_archive(write_zip(tmp_path / "a.zip", entries), max_bytes=MAX_BYTES)
    second = inspect_archive(
        write_zip(tmp_path / "b.zip", reversed(entries), compression=zipfile.ZIP_STORED),
        max_bytes=MAX_BYTES,
    )
    changed = inspect_archive(
        write_zip(tmp_path / "c.zip", replace(entries, "images/val/img_101.jpg", jpeg(99))),
        max_bytes=MAX_BYTES,
    )

    assert first.size_bytes != second.size_bytes
    # The files and layout are the same; the manifest also pins the archive itself.
    assert first.manifest.files == second.manifest.files
    assert first.manifest.splits == second.manifest.splits
    assert first.manifest.archive_sha256 != second.manifest.archive_sha256
    assert first.manifest_sha256 != second.manifest_sha256
    assert changed.manifest.files != first.manifest.files


def test_desktop_zip_tool_junk_is_ignored(tmp_path: Path) -> None:
    entries = [
        *detect_entries(),
        ("__MACOSX/images/train/._img_001.jpg", b"\x00\x05\x16\x07junk"),
        ("images/train/._img_002.png", b"\x00\x05\x16\x07junk"),
        ("images/.DS_Store", b"junk"),
        ("labels/Thumbs.db", b"junk"),
    ]

    report = inspect(tmp_path, entries)

    assert report.manifest.files == inspect(tmp_path, detect_entries()).manifest.files


def test_decoding_on_one_or_many_threads_agrees(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "dataset.zip", detect_entries())

    assert inspect_archive(zip_path, max_bytes=MAX_BYTES, workers=1) == inspect_archive(
        zip_path, max_bytes=MAX_BYTES, workers=8
    )


# --- unsafe entries -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "images/../../evil.txt",
        "/etc/passwd",
        "C:/Windows/evil.txt",
        "c:evil.txt",
        "images\\..\\..\\evil.txt",
        "images/./train/x.txt",
    ],
)
def test_unsafe_paths_are_rejected(tmp_path: Path, name: str) -> None:
    error = rejection(tmp_path, [*detect_entries(), (zipfile.ZipInfo(name), b"x")])

    field, _, reason = only_violation(error)
    assert (field, reason) == (name, Reason.UNSAFE_PATH)
    assert name in error.message


def test_symlink_entries_are_rejected(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("images/train/img_009.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16

    error = rejection(tmp_path, [*detect_entries(), (link, b"/etc/passwd")])

    assert only_violation(error) == (
        "images/train/img_009.jpg",
        "symbolic links are not allowed",
        Reason.SYMLINK,
    )


def test_duplicate_entries_are_rejected(tmp_path: Path) -> None:
    error = rejection(tmp_path, [*detect_entries(), ("labels/val/img_101.txt", b"")])

    assert only_violation(error)[::2] == ("labels/val/img_101.txt", Reason.DUPLICATE_ENTRY)


# --- images -----------------------------------------------------------------------------


def test_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    whole = noisy_jpeg()
    entries = replace(detect_entries(), "images/train/img_003.jpg", whole[: len(whole) // 2])

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("images/train/img_003.jpg", Reason.BAD_IMAGE)
    assert "truncated" in description


def test_text_file_renamed_jpg_is_rejected(tmp_path: Path) -> None:
    entries = replace(classify_entries(), "val/dog/f.jpeg", b"#define x_width 8\nnot an image\n")

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("val/dog/f.jpeg", Reason.BAD_IMAGE)
    assert "not a decodable image" in description


def test_image_outside_a_class_folder_is_rejected(tmp_path: Path) -> None:
    error = rejection(tmp_path, [*classify_entries(), ("train/stray.jpg", jpeg(8))])

    assert only_violation(error)[::2] == ("train/stray.jpg", Reason.MISPLACED_IMAGE)


# --- labels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "description"),
    [
        (b"0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n", "line 2: class id 7 out of range (3 classes)"),
        (b"-1 0.5 0.5 0.2 0.2\n", "line 1: class id -1 out of range (3 classes)"),
        (b"1.5 0.5 0.5 0.2 0.2\n", "line 1: class id 1.5 is not an integer"),
        (b"0 1.5 0.5 0.2 0.2\n", "line 1: value 1.5 (column 2) is outside [0, 1]"),
        (b"0 0.5 0.5 0.2\n", "line 1: expected 5 values"),
        (b"0 0.1 0.1 0.2 0.2 0.3\n", "line 1: expected 5 values"),
        (b"0 0.5 abc 0.2 0.2\n", "line 1: 'abc' is not a number"),
        (b"0 nan 0.5 0.2 0.2\n", "line 1: 'nan' is not a number"),
        (b"0 0.5 0.5 0 0.2\n", "line 1: box width and height must be > 0"),
        (b"2 0.1 0.1 0.2 1.2 0.3 0.3\n", "line 1: value 1.2 (column 5) is outside [0, 1]"),
        (b"\xff\xfe0 0.5", "not UTF-8 text"),
    ],
)
def test_bad_label_lines_are_rejected(tmp_path: Path, label: bytes, description: str) -> None:
    entries = replace(detect_entries(), "labels/train/img_003.txt", label)

    field, got, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("labels/train/img_003.txt", Reason.BAD_LABEL)
    assert got.startswith(description)


def test_label_errors_name_the_file_inside_a_top_folder(tmp_path: Path) -> None:
    entries = replace(detect_entries("ds/"), "ds/labels/val/img_101.txt", b"3 0.5 0.5 0.1 0.1")

    error = rejection(tmp_path, entries)

    assert only_violation(error)[:2] == (
        "ds/labels/val/img_101.txt",
        "line 1: class id 3 out of range (3 classes)",
    )
    assert "ds/labels/val/img_101.txt: line 1: class id 3 out of range" in error.message


def test_many_bad_lines_in_one_file_are_one_violation(tmp_path: Path) -> None:
    label = b"0 0.5 0.5 0.2 0.2\n" + b"9 0.5 0.5 0.2 0.2\n" * 4
    entries = replace(detect_entries(), "labels/train/img_001.txt", label)

    _, description, _ = only_violation(rejection(tmp_path, entries))

    assert description == "line 2: class id 9 out of range (3 classes) (and 3 more bad lines)"


def test_at_most_twenty_violations_are_reported(tmp_path: Path) -> None:
    entries = [*detect_entries()]
    for i in range(30):
        entries.append((f"images/train/bad_{i:02d}.jpg", jpeg(i)))
        entries.append((f"labels/train/bad_{i:02d}.txt", b"5 0.5 0.5 0.2 0.2\n"))

    error = rejection(tmp_path, entries)

    assert len(error.field_violations) == MAX_VIOLATIONS
    assert [v.field for v in error.field_violations] == [
        f"labels/train/bad_{i:02d}.txt" for i in range(MAX_VIOLATIONS)
    ]
    assert "labels/train/bad_00.txt: line 1: class id 5 out of range" in error.message
    assert "and at least 17 more problems" in error.message


def test_several_kinds_of_problem_are_reported_together(tmp_path: Path) -> None:
    entries = replace(detect_entries(), "images/val/img_102.jpg", b"not an image")
    entries = replace(entries, "labels/train/img_001.txt", b"0 2 0.5 0.2 0.2\n")

    error = rejection(tmp_path, entries)

    assert [(v.field, v.reason) for v in error.field_violations] == [
        ("images/val/img_102.jpg", Reason.BAD_IMAGE),
        ("labels/train/img_001.txt", Reason.BAD_LABEL),
    ]
    assert "(and" not in error.message


# --- layout and data.yaml -----------------------------------------------------------------


def test_detect_without_val_split_is_rejected(tmp_path: Path) -> None:
    yaml_text = "names: [cat, dog, bird]\ntrain: images/train\n"

    error = rejection(tmp_path, detect_entries(data_yaml=yaml_text))

    field, description, reason = only_violation(error)
    assert (field, reason) == ("data.yaml", Reason.MISSING_SPLIT)
    assert "'val'" in description


def test_detect_split_folder_without_images_is_rejected(tmp_path: Path) -> None:
    entries = without(detect_entries(), "images/val/img_101.jpg", "images/val/img_102.jpg")

    error = rejection(tmp_path, entries)

    assert only_violation(error) == (
        "images/val/",
        "split 'val' has no images",
        Reason.MISSING_SPLIT,
    )


def test_classification_without_val_is_rejected(tmp_path: Path) -> None:
    entries = [(n, d) for n, d in classify_entries() if not str(n).startswith("val/")]

    assert only_violation(rejection(tmp_path, entries))[::2] == ("val/", Reason.MISSING_SPLIT)


def test_classification_without_train_is_rejected(tmp_path: Path) -> None:
    entries = [(n, d) for n, d in classify_entries() if not str(n).startswith("train/")]

    assert only_violation(rejection(tmp_path, entries))[::2] == ("train/", Reason.MISSING_SPLIT)


def test_classification_val_class_missing_from_train_is_rejected(tmp_path: Path) -> None:
    entries = [*classify_entries(), ("val/fish/x.jpg", jpeg(9))]

    assert only_violation(rejection(tmp_path, entries)) == (
        "val/fish/",
        "class 'fish' is in val but not in train",
        Reason.UNKNOWN_CLASS,
    )


def test_archive_without_images_is_rejected(tmp_path: Path) -> None:
    entries = [(n, d) for n, d in detect_entries() if not str(n).startswith("images/")]

    error = rejection(tmp_path, entries)

    assert only_violation(error)[::2] == (ARCHIVE_FIELD, Reason.NO_IMAGES)


@pytest.mark.parametrize(
    ("data_yaml", "description"),
    [
        (b"names: [cat, dog\ntrain: images/train\n", "not valid YAML"),
        (b"- just\n- a list\n", "must be a YAML mapping"),
        (b"train: images/train\nval: images/val\n", "no class names"),
        (b"names: {0: cat, 2: dog}\ntrain: images/train\nval: images/val\n", "'names' keys"),
        (b"names: [cat, cat]\ntrain: images/train\nval: images/val\n", "duplicate class names"),
        (b"nc: 4\nnames: [a, b, c]\ntrain: images/train\nval: images/val\n", "'nc: 4'"),
        (b"names: [a, b, c]\ntrain: /data/images/train\nval: images/val\n", "relative"),
        (b"names: [a, b, c]\ntrain: train.txt\nval: images/val\n", "image list files"),
        (b"names: [a, b, c]\ntrain: images/../../x\nval: images/val\n", "outside the dataset"),
        (
            b"names: [a, b, c]\ntrain: images/train\nval: images/val\ndownload: rm -rf /\n",
            "'download' is not allowed",
        ),
    ],
)
def test_bad_data_yaml_is_rejected(tmp_path: Path, data_yaml: bytes, description: str) -> None:
    entries = replace(detect_entries("set/"), "set/data.yaml", data_yaml)

    field, got, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == ("set/data.yaml", Reason.BAD_DATA_YAML)
    assert description in got


def test_unrecognised_layout_is_rejected(tmp_path: Path) -> None:
    entries: list[Entry] = [("README.md", b"my photos"), ("photos/a.jpg", jpeg(1))]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == (ARCHIVE_FIELD, Reason.UNRECOGNISED_LAYOUT)
    assert "data.yaml" in description and "train/<class>/<image>" in description


def test_detect_layout_without_data_yaml_gets_a_hint(tmp_path: Path) -> None:
    entries = without(detect_entries(), "data.yaml")

    _, description, _ = only_violation(rejection(tmp_path, entries))

    assert "found images/ and labels/ folders but no data.yaml" in description


def test_two_datasets_in_one_archive_are_rejected(tmp_path: Path) -> None:
    entries = [*detect_entries("a/"), *detect_entries("b/")]

    field, description, reason = only_violation(rejection(tmp_path, entries))

    assert (field, reason) == (ARCHIVE_FIELD, Reason.UNRECOGNISED_LAYOUT)
    assert "a/, b/" in description


# --- the archive as a whole -------------------------------------------------------------


def _forbid_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an entry was read")

    monkeypatch.setattr(zipfile.ZipFile, "open", refuse)


def test_archive_over_max_bytes_is_rejected(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "dataset.zip", detect_entries())

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=zip_path.stat().st_size - 1)

    field, description, reason = only_violation(info.value)
    assert (field, reason) == (ARCHIVE_FIELD, Reason.ARCHIVE_TOO_LARGE)
    assert description.startswith(f"archive is {zip_path.stat().st_size} bytes")


def test_zip_bomb_is_rejected_without_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = [*detect_entries(), ("images/train/zeros.bin", bytes(32 << 20))]
    zip_path = write_zip(tmp_path / "bomb.zip", bomb)
    assert zip_path.stat().st_size < 1 << 20
    _forbid_reading(monkeypatch)

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=8 << 20)

    field, description, reason = only_violation(info.value)
    assert (field, reason) == (ARCHIVE_FIELD, Reason.ARCHIVE_TOO_LARGE)
    assert description.startswith("uncompressed size")


def _patch_declared_size(zip_path: Path, member: str, size: int) -> None:
    """Rewrite an entry's uncompressed size in the central directory."""
    data = bytearray(zip_path.read_bytes())
    pos = data.find(b"PK\x01\x02")
    while pos >= 0:
        (name_len,) = struct.unpack_from("<H", data, pos + 28)
        if data[pos + 46 : pos + 46 + name_len] == member.encode():
            struct.pack_into("<I", data, pos + 24, size)
            zip_path.write_bytes(bytes(data))
            return
        pos = data.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"{member} not in the central directory")


def test_forged_declared_size_over_the_limit_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zip_path = write_zip(tmp_path / "dataset.zip", detect_entries())
    _patch_declared_size(zip_path, "images/train/img_001.jpg", 3 << 30)
    _forbid_reading(monkeypatch)

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=MAX_BYTES)

    assert only_violation(info.value)[::2] == (ARCHIVE_FIELD, Reason.ARCHIVE_TOO_LARGE)


def test_entry_larger_than_declared_is_rejected(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "dataset.zip", detect_entries())
    _patch_declared_size(zip_path, "labels/train/img_001.txt", 4)

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=MAX_BYTES)

    field, description, reason = only_violation(info.value)
    assert (field, reason) == ("labels/train/img_001.txt", Reason.CORRUPT_ENTRY)
    assert description.startswith("corrupt entry")


def test_corrupt_entry_data_is_rejected(tmp_path: Path) -> None:
    zip_path = write_zip(tmp_path / "dataset.zip", detect_entries(), compression=zipfile.ZIP_STORED)
    data = bytearray(zip_path.read_bytes())
    image = jpeg(5)
    offset = data.find(image)
    data[offset + len(image) // 2] ^= 0xFF
    zip_path.write_bytes(bytes(data))

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=MAX_BYTES)

    field, description, reason = only_violation(info.value)
    assert (field, reason) == ("images/val/img_101.jpg", Reason.CORRUPT_ENTRY)
    assert "CRC" in description


def test_too_many_files_is_rejected(tmp_path: Path) -> None:
    error = rejection(tmp_path, detect_entries(), max_files=5)

    field, description, reason = only_violation(error)
    assert (field, reason) == (ARCHIVE_FIELD, Reason.TOO_MANY_FILES)
    assert description == "archive has 12 entries, over the limit of 5"


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty"])
def test_corrupt_zip_is_rejected(tmp_path: Path, kind: str) -> None:
    zip_path = tmp_path / "dataset.zip"
    if kind == "garbage":
        zip_path.write_bytes(b"this is not a zip file at all" * 10)
    elif kind == "truncated":
        whole = write_zip(tmp_path / "whole.zip", detect_entries()).read_bytes()
        zip_path.write_bytes(whole[: len(whole) // 2])
    else:
        zip_path.write_bytes(b"")

    with pytest.raises(InvalidArgument) as info:
        inspect_archive(zip_path, max_bytes=MAX_BYTES)

    field, description, reason = only_violation(info.value)
    assert (field, reason) == (ARCHIVE_FIELD, Reason.CORRUPT_ARCHIVE)
    assert description.startswith("not a readable zip archive")


def test_rejection_maps_to_invalid_argument_with_bad_request_detail(tmp_path: Path) -> None:
    entries = replace(detect_entries(), "labels/train/img_003.txt", b"0 0.5 0.5 0.2 0.2\n7 0 0 1 1")

    body = rejection(tmp_path, entries).to_json()

    assert body["status"] == "INVALID_ARGUMENT"
    bad_request = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))
    assert bad_request["fieldViolations"] == [
        {
            "field": "labels/train/img_003.txt",
            "description": "line 2: class id 7 out of range (3 classes)",
            "reason": Reason.BAD_LABEL,
        }
    ]


@pytest.mark.parametrize("workers", [1, 8])
def test_the_first_problems_in_path_order_are_reported(tmp_path: Path, workers: int) -> None:
    entries = [*detect_entries()]
    for i in range(15):
        entries.append((f"images/train/bad_{i:02d}.jpg", b"not an image"))
        entries.append((f"labels/train/bad_{i:02d}.txt", b"5 0.5 0.5 0.2 0.2\n"))
        entries.append((f"images/val/good_{i:02d}.jpg", jpeg(i)))

    error = rejection(tmp_path, entries, workers=workers)

    assert [v.field for v in error.field_violations] == [
        *(f"images/train/bad_{i:02d}.jpg" for i in range(15)),
        *(f"labels/train/bad_{i:02d}.txt" for i in range(5)),
    ]
