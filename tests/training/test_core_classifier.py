"""PyTorch classifier core on synthetic shapes: learning, data paths, cancel, exact resume."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from visionmesh.cli.synth import make_classify_dataset
from visionmesh.training.core import (
    DataLoading,
    EpochResult,
    ProgressUpdate,
    TrainerHooks,
    TrainSpec,
    load_classifier,
    predict_classifier,
    train_classifier,
)

pytestmark = pytest.mark.timeout(180)

# 48 train images (16 per class) in batches of 16: three batches an epoch. From random init a
# resnet18 at 64 px separates the three shape/colour classes within two epochs on this data.
SPEC = TrainSpec(
    framework="torchvision",
    task="classify",
    model="resnet18",
    epochs=3,
    imgsz=64,
    batch=16,
    optimizer="auto",
    device="cpu",
    seed=0,
    # Every kind of augmentation the trainer has, so that the resume tests replay them all.
    augment={
        "fliplr": 0.5,
        "erasing": 0.2,
        "scale": 0.5,
        "degrees": 90,
        "hsv_v": 0.3,
        "hsv_h": 0.02,
    },
)


@dataclasses.dataclass
class Recorder:
    stop_when: Any = None
    progress: list[ProgressUpdate] = dataclasses.field(default_factory=list)
    epochs: list[EpochResult] = dataclasses.field(default_factory=list)
    checkpoints: list[tuple[int, Path, Path | None]] = dataclasses.field(default_factory=list)

    def hooks(self) -> TrainerHooks:
        return TrainerHooks(
            on_progress=self.progress.append,
            on_epoch_end=self.epochs.append,
            on_checkpoint=lambda e, last, best: self.checkpoints.append((e, last, best)),
            should_stop=lambda: bool(self.stop_when and self.stop_when(self)),
        )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_classify_dataset(
        tmp_path_factory.mktemp("classify"),
        n_per_class_train=16,
        n_per_class_val=8,
        imgsz=64,
        seed=0,
    )


@pytest.fixture(scope="module")
def preloaded_run(
    data_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Recorder]:
    spec = dataclasses.replace(SPEC, data_loading=DataLoading(preload=True))
    rec = Recorder()
    result = train_classifier(
        spec,
        data_root=data_root,
        workdir=tmp_path_factory.mktemp("preloaded"),
        hooks=rec.hooks(),
        progress_every=2,
    )
    return result, rec


def test_learns_well_above_chance(preloaded_run: tuple[Any, Recorder]) -> None:
    result, rec = preloaded_run
    assert not result.cancelled and result.epochs_completed == 3
    assert result.metrics["top1"] >= 0.9  # chance is 1/3
    assert result.metrics["top5"] == 1.0  # top-5 over three classes is top-3
    assert set(result.metrics) == {"top1", "top5", "train/loss", "val/loss"}
    assert [r.epoch for r in rec.epochs] == [1, 2, 3]
    assert rec.epochs[-1].metrics["val/loss"] < rec.epochs[0].metrics["val/loss"]
    assert list(result.class_names) == ["circle", "square", "triangle"]


def test_hooks_checkpoints_and_files(preloaded_run: tuple[Any, Recorder]) -> None:
    result, rec = preloaded_run
    assert [c[0] for c in rec.checkpoints] == [1, 2, 3]
    assert rec.checkpoints[0][2] == result.best_path  # the first epoch is always the best so far
    train = [(u.epoch, u.batch) for u in rec.progress if u.phase == "train"]
    assert train == [(e, b) for e in (1, 2, 3) for b in (2, 3)]
    assert all(
        u.total_batches == 3 and set(u.losses) == {"loss"}
        for u in rec.progress
        if u.phase == "train"
    )
    assert [u.epoch for u in rec.progress if u.phase == "val"] == [1, 2, 3]
    assert (
        result.results_csv.read_text().splitlines()[0]
        == "epoch,time,train/loss,val/loss,top1,top5,lr"
    )
    assert result.curves_png.is_file()
    ckpt = torch.load(result.best_path, weights_only=True)
    assert {
        "model_state",
        "optimizer_state",
        "epoch",
        "arch",
        "class_names",
        "imgsz",
        "metrics",
        "spec",
    } <= set(ckpt)
    assert ckpt["arch"] == "resnet18" and ckpt["imgsz"] == 64


def test_best_checkpoint_loads_and_predicts(
    preloaded_run: tuple[Any, Recorder], data_root: Path
) -> None:
    result, _ = preloaded_run
    model, names, imgsz = load_classifier(result.best_path)
    assert names == ["circle", "square", "triangle"] and imgsz == 64
    images = sorted((data_root / "val").rglob("*.jpg"))
    probs = predict_classifier(model, images, imgsz=imgsz)
    assert probs.shape == (len(images), 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(images)), atol=1e-5)
    truth = torch.tensor([names.index(p.parent.name) for p in images])
    accuracy = float((probs.argmax(dim=1) == truth).float().mean())
    assert accuracy == pytest.approx(result.metrics["top1"])


def test_streaming_loader_matches_preloading(
    preloaded_run: tuple[Any, Recorder], data_root: Path, tmp_path: Path
) -> None:
    # Same decode, same order, same augmentation draws: the two data paths train identically.
    spec = dataclasses.replace(SPEC, data_loading=DataLoading(preload=False, num_workers=0))
    result = train_classifier(spec, data_root=data_root, workdir=tmp_path)
    preloaded, _ = preloaded_run
    assert result.metrics == pytest.approx(preloaded.metrics, abs=1e-6)


def test_worker_processes_with_prefetch(data_root: Path, tmp_path: Path) -> None:
    spec = dataclasses.replace(
        SPEC, epochs=1, data_loading=DataLoading(num_workers=1, prefetch_factor=2)
    )
    result = train_classifier(spec, data_root=data_root, workdir=tmp_path)
    assert result.epochs_completed == 1 and result.best_path is not None


def test_cancel_mid_epoch(data_root: Path, tmp_path: Path) -> None:
    rec = Recorder(stop_when=lambda r: len(r.progress) >= 2)
    result = train_classifier(
        SPEC, data_root=data_root, workdir=tmp_path, hooks=rec.hooks(), progress_every=1
    )
    assert result.cancelled and result.epochs_completed == 0
    assert [(u.epoch, u.batch) for u in rec.progress] == [(1, 1), (1, 2)]
    assert rec.checkpoints == [] and result.best_path is None
    assert result.last_path is not None
    assert torch.load(result.last_path, weights_only=True)["epoch"] == 1


def test_resume_elsewhere_replays_the_uninterrupted_run(data_root: Path, tmp_path: Path) -> None:
    full = train_classifier(SPEC, data_root=data_root, workdir=tmp_path / "full")

    first = Recorder(stop_when=lambda r: bool(r.checkpoints))  # "crash" after epoch 1's upload
    crashed = train_classifier(
        SPEC, data_root=data_root, workdir=tmp_path / "machine1", hooks=first.hooks()
    )
    assert crashed.cancelled and [c[0] for c in first.checkpoints] == [1]
    uploaded = tmp_path / "store" / "last.pt"
    uploaded.parent.mkdir()
    shutil.copy(first.checkpoints[0][1], uploaded)
    shutil.rmtree(tmp_path / "machine1")

    second = Recorder()
    resumed = train_classifier(
        SPEC,
        data_root=data_root,
        workdir=tmp_path / "machine2",
        hooks=second.hooks(),
        resume_from=uploaded,
    )
    assert [r.epoch for r in second.epochs] == [2, 3]
    assert {u.epoch for u in second.progress} == {2, 3}
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    # Per-epoch seeding makes epochs 2..3 after a resume the very epochs 2..3 of one run.
    assert resumed.metrics == full.metrics
    assert full.last_path is not None and resumed.last_path is not None
    a = torch.load(full.last_path, weights_only=True)["model_state"]
    b = torch.load(resumed.last_path, weights_only=True)["model_state"]
    assert all(a[k].equal(b[k]) for k in a)


def test_resume_refuses_a_different_architecture(data_root: Path, tmp_path: Path) -> None:
    done = train_classifier(
        dataclasses.replace(SPEC, epochs=1), data_root=data_root, workdir=tmp_path / "a"
    )
    other = dataclasses.replace(SPEC, model="mobilenet_v3_small")
    with pytest.raises(ValueError, match="resnet18"):
        train_classifier(
            other, data_root=data_root, workdir=tmp_path / "b", resume_from=done.last_path
        )


def test_fine_tune_from_an_earlier_checkpoint(
    preloaded_run: tuple[Any, Recorder], data_root: Path, tmp_path: Path
) -> None:
    earlier, rec = preloaded_run
    assert rec.epochs[0].metrics["top1"] < 0.9  # from scratch, one epoch is not enough
    spec = dataclasses.replace(
        SPEC, epochs=1, optimizer="AdamW", lr0=1e-4, init_checkpoint=earlier.best_path
    )
    tuned = train_classifier(spec, data_root=data_root, workdir=tmp_path)
    assert tuned.metrics["top1"] >= 0.9
