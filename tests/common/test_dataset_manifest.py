"""The shared dataset manifest: canonical JSON, strict parsing, Ultralytics' data dict."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from visionmesh.common.datasets import (
    MANIFEST_VERSION,
    DataError,
    DatasetManifest,
    ManifestError,
    ManifestFile,
    ManifestSplit,
    is_sha256,
    label_dir,
)
from visionmesh.common.errors import FailedPrecondition

SHA = hashlib.sha256(b"x").hexdigest()


def detect_manifest(**overrides: Any) -> DatasetManifest:
    fields: dict[str, Any] = {
        "format": "detect",
        "root_prefix": "shapes/",
        "class_names": ("circle", "square"),
        "splits": (
            ManifestSplit("train", ("train/images",), ("train/labels",)),
            ManifestSplit("val", ("valid/images",), ("valid/labels",)),
        ),
        "files": (
            ManifestFile("data.yml", 10, SHA),
            ManifestFile("train/images/a.jpg", 20, SHA),
            ManifestFile("valid/images/b.jpg", 30, SHA),
        ),
        "archive_sha256": SHA,
        "archive_size": 1234,
    }
    fields.update(overrides)
    return DatasetManifest(**fields)


def test_round_trip_is_canonical() -> None:
    manifest = detect_manifest()

    raw = manifest.to_json()

    assert DatasetManifest.from_json(raw) == manifest
    assert DatasetManifest.from_json(raw.decode()).to_json() == raw
    assert manifest.sha256() == hashlib.sha256(raw).hexdigest()
    document = json.loads(raw)
    assert document["version"] == 2 < MANIFEST_VERSION  # detect stays version 2
    assert document["archive"] == {"sha256": SHA, "size": 1234}
    assert document["splits"][0] == {
        "name": "train",
        "images": ["train/images"],
        "labels": ["train/labels"],
    }
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii")


def test_members_carry_the_root_prefix() -> None:
    members = dict(detect_manifest().members())

    assert members["shapes/data.yml"].path == "data.yml"
    assert detect_manifest().total_size == 60


def test_ultralytics_data_for_detect(tmp_path: Path) -> None:
    data = detect_manifest().ultralytics_data(tmp_path)

    assert data == {
        "path": str(tmp_path),
        "train": str(tmp_path / "train/images"),
        "val": str(tmp_path / "valid/images"),
        "names": {0: "circle", 1: "square"},
    }


def test_ultralytics_data_with_several_folders_and_a_test_split(tmp_path: Path) -> None:
    manifest = detect_manifest(
        splits=(
            ManifestSplit("train", ("images/a", "images/b"), ("labels/a", "labels/b")),
            ManifestSplit("val", ("",), ("",)),
            ManifestSplit("test", ("images/test",), ("labels/test",)),
        )
    )

    data = manifest.ultralytics_data(tmp_path)

    assert data["train"] == [str(tmp_path / "images/a"), str(tmp_path / "images/b")]
    assert data["val"] == str(tmp_path)
    assert data["test"] == str(tmp_path / "images/test")


def test_ultralytics_data_for_classify_gives_the_split_folders(tmp_path: Path) -> None:
    manifest = detect_manifest(
        format="classify",
        splits=(ManifestSplit("train", ("train",)), ManifestSplit("val", ("val",))),
    )

    data = manifest.ultralytics_data(tmp_path)

    assert data["path"] == str(tmp_path)
    assert (data["train"], data["val"]) == (str(tmp_path / "train"), str(tmp_path / "val"))


@pytest.mark.parametrize(
    ("images", "labels"),
    [
        ("images/train", "labels/train"),
        ("train/images", "train/labels"),
        ("data/images/train/x", "data/labels/train/x"),
        ("images", "labels"),
        ("train", "train"),
        ("", ""),
    ],
)
def test_label_dir_follows_ultralytics(images: str, labels: str) -> None:
    assert label_dir(images) == labels


def test_is_sha256() -> None:
    assert is_sha256(SHA)
    assert not is_sha256(SHA.upper())
    assert not is_sha256(SHA[:-1])
    assert not is_sha256(SHA + "0")
    assert not is_sha256("../" + SHA[3:])
    assert not is_sha256(None)


def _document(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(detect_manifest().to_json())
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (_document(version=1), "version 1 is not supported"),
        (_document(format="pose"), "format 'pose'"),
        (_document(root_prefix="shapes"), "root_prefix"),
        (_document(root_prefix="../x/"), "root_prefix"),
        (_document(class_names=[]), "class_names is empty"),
        (_document(class_names=["a", "a"]), "unique"),
        (_document(class_names="a"), "'class_names' must be a list"),
        (_document(splits=[]), "split 'train' is missing"),
        (
            _document(splits=[{"name": "train", "images": ["x"], "labels": ["y"]}]),
            "split 'val' is missing",
        ),
        (
            _document(
                splits=[
                    {"name": "train", "images": ["../up"], "labels": ["l"]},
                    {"name": "val", "images": ["v"], "labels": ["l"]},
                ]
            ),
            "'..'",
        ),
        (_document(files=[{"path": "/etc/passwd", "size": 1, "sha256": SHA}]), "absolute"),
        (_document(files=[{"path": "a/../../b", "size": 1, "sha256": SHA}]), "'..'"),
        (_document(files=[{"path": "a\\b", "size": 1, "sha256": SHA}]), "backslash"),
        (_document(files=[{"path": "a", "size": -1, "sha256": SHA}]), "negative"),
        (_document(files=[{"path": "a", "size": True, "sha256": SHA}]), "must be a int"),
        (_document(files=[{"path": "a", "size": 1, "sha256": SHA.upper()}]), "hex"),
        (
            _document(
                files=[
                    {"path": "b", "size": 1, "sha256": SHA},
                    {"path": "a", "size": 1, "sha256": SHA},
                ]
            ),
            "sorted",
        ),
        (_document(archive={"sha256": "nothex", "size": 1}), "archive.sha256"),
        (_document(archive={"sha256": SHA}), "'archive.size'"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_from_json_refuses_bad_documents(document: Any, message: str) -> None:
    with pytest.raises(ManifestError, match="invalid dataset manifest") as info:
        DatasetManifest.from_json(json.dumps(document))

    assert message in str(info.value)


def test_from_json_refuses_non_json() -> None:
    with pytest.raises(ManifestError, match="not JSON"):
        DatasetManifest.from_json(b"\xff{")


def test_manifest_errors_are_data_errors_in_the_one_hierarchy() -> None:
    assert issubclass(ManifestError, DataError)
    assert issubclass(DataError, FailedPrecondition)
    assert DataError("x").status_name == "FAILED_PRECONDITION"
