"""Training core without training: spec validation, capabilities, synthetic data, curves."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image
from visionmesh.cli.synth import make_classify_dataset, make_detect_dataset, zip_dataset
from visionmesh.training.core import (
    DataLoading,
    EpochResult,
    InvalidSpecError,
    TrainSpec,
    capabilities,
    ensure_valid,
    plot_training_curves,
    validate_spec,
)

YOLO = TrainSpec(framework="ultralytics", task="detect", model="yolo11n.yaml", imgsz=64)
TORCHVISION = TrainSpec(framework="torchvision", task="classify", model="resnet18", imgsz=64)


def _fields(spec: TrainSpec, **kwargs: object) -> list[str]:
    return [v.field for v in validate_spec(spec, **kwargs)]  # type: ignore[arg-type]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "spec",
    [
        YOLO,
        dataclasses.replace(YOLO, task="segment", model="yolo11n-seg.yaml"),
        dataclasses.replace(YOLO, task="classify", model="yolo11n-cls.yaml"),
        dataclasses.replace(YOLO, model="yolov8s.yaml", augment={"mosaic": 0.0, "degrees": 10}),
        TORCHVISION,
        dataclasses.replace(
            TORCHVISION,
            model="mobilenet_v3_small",
            augment={
                "fliplr": 0.5,
                "erasing": 0.2,
                "scale": 0.5,
                "degrees": 180,
                "translate": 0.1,
                "hsv_h": 0.015,
                "hsv_s": 0.7,
                "hsv_v": 0.4,
            },
            data_loading=DataLoading(num_workers=2, prefetch_factor=4, pin_memory=True),
        ),
    ],
)
def test_valid_specs_pass(spec: TrainSpec) -> None:
    assert validate_spec(spec) == []
    ensure_valid(spec)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (dataclasses.replace(YOLO, framework="keras"), "framework"),  # type: ignore[arg-type]
        (dataclasses.replace(YOLO, task="pose"), "task"),  # type: ignore[arg-type]
        (dataclasses.replace(TORCHVISION, task="detect"), "task"),
        (dataclasses.replace(YOLO, model="yolo99n.yaml"), "model"),
        (dataclasses.replace(YOLO, model="yolo11n.pt"), "model"),  # would download weights
        (dataclasses.replace(YOLO, model="yolo11n-cls.yaml"), "model"),  # classify arch, detect
        (dataclasses.replace(YOLO, task="classify", model="yolo11n.yaml"), "model"),
        (dataclasses.replace(TORCHVISION, model="resnet7"), "model"),
        (dataclasses.replace(TORCHVISION, model="inception_v3", imgsz=64), "imgsz"),  # too small
        (dataclasses.replace(YOLO, epochs=0), "epochs"),
        (dataclasses.replace(YOLO, imgsz=0), "imgsz"),
        (dataclasses.replace(YOLO, imgsz=100), "imgsz"),
        (dataclasses.replace(YOLO, batch=0), "batch"),
        (dataclasses.replace(YOLO, optimizer="Lion"), "optimizer"),
        (dataclasses.replace(YOLO, lr0=0.0), "lr0"),
        (dataclasses.replace(YOLO, lr0=float("nan")), "lr0"),
        (dataclasses.replace(YOLO, patience=-1), "patience"),
        (dataclasses.replace(YOLO, seed=-1), "seed"),
        (dataclasses.replace(YOLO, device="gpu0"), "device"),
        (dataclasses.replace(YOLO, augment={"foo": 0.1}), "augment.foo"),
        (dataclasses.replace(YOLO, augment={"fliplr": 1.5}), "augment.fliplr"),
        (dataclasses.replace(TORCHVISION, augment={"mosaic": 1.0}), "augment.mosaic"),
        (dataclasses.replace(TORCHVISION, augment={"shear": 2.0}), "augment.shear"),
        (dataclasses.replace(TORCHVISION, augment={"scale": 1.5}), "augment.scale"),
        (
            dataclasses.replace(YOLO, data_loading=DataLoading(num_workers=-1)),
            "data_loading.num_workers",
        ),
        (
            dataclasses.replace(YOLO, data_loading=DataLoading(num_workers=0, prefetch_factor=2)),
            "data_loading.prefetch_factor",
        ),
        (dataclasses.replace(YOLO, init_checkpoint=Path("weights.onnx")), "init_checkpoint"),
    ],
)
def test_each_bad_field_is_named(spec: TrainSpec, field: str) -> None:
    assert _fields(spec) == [field]
    with pytest.raises(InvalidSpecError) as caught:
        ensure_valid(spec)
    assert [v.field for v in caught.value.violations] == [field]


def test_violations_are_all_reported_together() -> None:
    spec = dataclasses.replace(YOLO, epochs=-1, batch=0, augment={"foo": 1.0})
    assert sorted(_fields(spec)) == ["augment.foo", "batch", "epochs"]


@pytest.mark.parametrize(
    ("task", "dataset_task", "ok"),
    [
        ("detect", "detect", True),
        ("detect", "segment", True),  # YOLO detection reads polygon labels as boxes
        ("detect", "classify", False),
        ("classify", "detect", False),
        ("segment", "detect", False),
        ("classify", "classify", True),
    ],
)
def test_dataset_kind_must_fit_the_task(task: str, dataset_task: str, ok: bool) -> None:
    model = {
        "detect": "yolo11n.yaml",
        "segment": "yolo11n-seg.yaml",
        "classify": "yolo11n-cls.yaml",
    }
    spec = dataclasses.replace(YOLO, task=task, model=model[task])  # type: ignore[arg-type]
    assert _fields(spec, dataset_task=dataset_task) == ([] if ok else ["task"])


def test_device_is_checked_against_the_machine_when_asked() -> None:
    cpu_only = ["cpu"]
    assert _fields(dataclasses.replace(YOLO, device="cuda:0"), devices=cpu_only) == ["device"]
    assert _fields(dataclasses.replace(YOLO, device="cuda"), devices=cpu_only) == ["device"]
    assert _fields(dataclasses.replace(YOLO, device="auto"), devices=cpu_only) == []
    assert _fields(dataclasses.replace(YOLO, device="cuda:1"), devices=["cpu", "cuda:1"]) == []


def test_local_checkpoint_as_model_is_accepted(tmp_path: Path) -> None:
    checkpoint = tmp_path / "earlier.pt"
    checkpoint.write_bytes(b"not inspected by validation")
    assert _fields(dataclasses.replace(YOLO, model=str(checkpoint))) == []


def test_spec_round_trips_through_a_dict() -> None:
    spec = dataclasses.replace(
        TORCHVISION,
        augment={"fliplr": 0.25},
        data_loading=DataLoading(preload=True, num_workers=1, prefetch_factor=2),
        init_checkpoint=Path("/data/best.pt"),
    )
    assert TrainSpec.from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


def test_capabilities_list_what_validation_accepts() -> None:
    caps = capabilities()
    assert list(caps.frameworks) == ["ultralytics", "torchvision"]
    assert caps.tasks["torchvision"] == ["classify"]
    ul = caps.architectures["ultralytics"]
    assert {"yolo11n.yaml", "yolov8n.yaml", "yolo26n.yaml"} <= set(ul["detect"])
    assert "yolo11n-cls.yaml" in ul["classify"] and "yolo11n-seg.yaml" in ul["segment"]
    assert not set(ul["detect"]) & set(ul["classify"])
    # YOLO-World / YOLOE need text encoders fetched at build time: not offered.
    assert not any("world" in n or "yoloe" in n for names in ul.values() for n in names)
    tv = caps.architectures["torchvision"]["classify"]
    assert {"resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny"} <= set(tv)
    assert caps.devices[0].name == "cpu"
    assert all(d.kind == "cuda" and d.total_memory_bytes > 0 for d in caps.devices[1:])
    for task, names in ul.items():
        spec = dataclasses.replace(YOLO, task=task, model=names[0])  # type: ignore[arg-type]
        assert validate_spec(spec) == []


def test_detect_dataset_layout_and_labels(tmp_path: Path) -> None:
    data_yaml = make_detect_dataset(tmp_path / "det", n_train=12, n_val=4, imgsz=96, seed=3)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["train"] == "images/train" and cfg["val"] == "images/val"
    assert "path" not in cfg  # relative to the YAML, wherever the dataset is unpacked
    assert cfg["names"] == {0: "circle", 1: "square", 2: "triangle"}
    for split, count in (("train", 12), ("val", 4)):
        images = sorted((tmp_path / "det" / "images" / split).glob("*.jpg"))
        assert len(images) == count
        for image in images:
            assert Image.open(image).size == (96, 96)
            lines = (tmp_path / "det" / "labels" / split / f"{image.stem}.txt").read_text()
            rows = [line.split() for line in lines.splitlines()]
            assert 1 <= len(rows) <= 3
            for cls, *box in rows:
                cx, cy, w, h = map(float, box)
                assert cls in {"0", "1", "2"}
                assert 0.15 <= w <= 0.46 and 0.15 <= h <= 0.46
                assert w / 2 <= cx <= 1 - w / 2 and h / 2 <= cy <= 1 - h / 2


def test_synthetic_datasets_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_detect_dataset(tmp_path / name / "det", n_train=6, n_val=2, imgsz=64, seed=7)
        make_classify_dataset(
            tmp_path / name / "cls", n_per_class_train=3, n_per_class_val=1, imgsz=64, seed=7
        )
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    make_detect_dataset(tmp_path / "c" / "det", n_train=6, n_val=2, imgsz=64, seed=8)
    assert _digest(tmp_path / "c" / "det") != _digest(tmp_path / "a" / "det")


def test_classify_dataset_layout(tmp_path: Path) -> None:
    root = make_classify_dataset(
        tmp_path / "cls",
        n_per_class_train=4,
        n_per_class_val=2,
        imgsz=64,
        seed=0,
        classes=("red_circle", "square", "other"),
    )
    for split, count in (("train", 4), ("val", 2)):
        for name in ("red_circle", "square", "other"):
            assert len(list((root / split / name).glob("*.jpg"))) == count


def test_zip_has_relative_paths_and_stable_bytes(tmp_path: Path) -> None:
    make_detect_dataset(tmp_path / "det", n_train=3, n_val=1, imgsz=64, seed=0)
    first = zip_dataset(tmp_path / "det", tmp_path / "one.zip")
    second = zip_dataset(tmp_path / "det", tmp_path / "two.zip")
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert "data.yaml" in names and "images/train/00000.jpg" in names
    assert all(not n.startswith("/") and ".." not in n for n in names)


def test_training_curves_png(tmp_path: Path) -> None:
    history = [
        EpochResult(
            epoch=e,
            total_epochs=3,
            metrics={"train/loss": 1.0 / e, "val/loss": 1.2 / e, "top1": 0.3 * e, "top5": 1.0},
            lr=0.001,
            elapsed_seconds=float(e),
        )
        for e in (1, 2, 3)
    ]
    out = plot_training_curves(history, tmp_path / "curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400
