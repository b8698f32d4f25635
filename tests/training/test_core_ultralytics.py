"""Ultralytics trainer on tiny synthetic data: hooks, checkpoints, cancel, resume, determinism."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from visionmesh.cli.synth import make_classify_dataset, make_detect_dataset
from visionmesh.training.core import (
    EpochResult,
    ProgressUpdate,
    TrainerHooks,
    TrainSpec,
    train_ultralytics,
)

# Ultralytics reads its settings dir and probes the network once, when first imported (lazily,
# by the trainer): point both somewhere harmless before any test can trigger that import.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "visionmesh-tests" / "ultralytics")
)

pytestmark = pytest.mark.timeout(180)

# 24 images of 64 px in batches of 8: three batches an epoch, a few seconds per run on a CPU.
SPEC = TrainSpec(
    framework="ultralytics",
    task="detect",
    model="yolo11n.yaml",
    epochs=3,
    imgsz=64,
    batch=8,
    device="cpu",
    seed=0,
    amp=False,
)
BATCHES_PER_EPOCH = 3


@dataclasses.dataclass
class Recorder:
    """TrainerHooks that record every call, with an optional stop condition."""

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


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Fail the test if anything (fonts, AMP-check weights, update checks) tries the network."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access in a training-core test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts
    assert attempts == []


@pytest.fixture(scope="module")
def detect_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detect")
    return make_detect_dataset(root, n_train=24, n_val=8, imgsz=64, seed=0)


def test_detect_run_reports_and_writes_checkpoints(detect_data: Path, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    rec = Recorder()
    result = train_ultralytics(
        SPEC, data=detect_data, workdir=tmp_path, hooks=rec.hooks(), progress_every=2
    )
    assert torch.get_num_threads() == threads  # Ultralytics changes it process-wide

    assert not result.cancelled and result.epochs_completed == 3
    assert result.best_path and result.best_path.is_file()
    assert result.last_path and result.last_path.is_file()
    assert result.results_csv and result.results_csv.is_file()
    assert result.curves_png and result.curves_png.is_file()
    assert list(result.class_names) == ["circle", "square", "triangle"]
    assert result.imgsz == 64
    assert set(result.metrics) == {"precision", "recall", "map50", "map50_95"}

    assert [r.epoch for r in rec.epochs] == [1, 2, 3]
    for r in rec.epochs:
        assert {"map50", "map50_95", "precision", "recall"} <= set(r.metrics)
        assert {"train/box_loss", "train/cls_loss", "val/box_loss"} <= set(r.metrics)
        assert not any(k.startswith(("metrics/", "lr/")) for k in r.metrics)
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert [c[0] for c in rec.checkpoints] == [1, 2, 3]
    assert all(last == result.last_path for _, last, _ in rec.checkpoints)

    # Every 2nd batch and the last of each epoch: batches 2 and 3, then the one val batch.
    train = [(u.epoch, u.batch) for u in rec.progress if u.phase == "train"]
    assert train == [(e, b) for e in (1, 2, 3) for b in (2, 3)]
    assert all(u.total_batches == BATCHES_PER_EPOCH for u in rec.progress if u.phase == "train")
    assert {u.epoch for u in rec.progress if u.phase == "val"} == {1, 2, 3}
    assert all(
        set(u.losses) == {"box_loss", "cls_loss", "dfl_loss"}
        for u in rec.progress
        if u.phase == "train"
    )
    assert all(u.eta_seconds >= 0 and u.total_epochs == 3 for u in rec.progress)
    assert rec.progress[-1].eta_seconds == pytest.approx(0.0, abs=1.0)


def test_best_checkpoint_loads_and_predicts(detect_data: Path, tmp_path: Path) -> None:
    spec = dataclasses.replace(SPEC, epochs=1)
    result = train_ultralytics(spec, data=detect_data, workdir=tmp_path)
    from ultralytics import YOLO

    assert result.best_path is not None
    model = YOLO(str(result.best_path))
    assert model.task == "detect" and list(model.names.values()) == list(result.class_names)
    image = next((detect_data.parent / "images" / "val").glob("*.jpg"))
    predictions = list(model.predict(str(image), imgsz=64, device="cpu", verbose=False))
    assert len(predictions) == 1
    assert getattr(predictions[0], "boxes", None) is not None


def test_classify_metrics_are_normalised(tmp_path: Path) -> None:
    root = make_classify_dataset(
        tmp_path / "cls", n_per_class_train=6, n_per_class_val=2, imgsz=32, seed=0
    )
    spec = dataclasses.replace(SPEC, task="classify", model="yolo11n-cls.yaml", epochs=1, imgsz=32)
    rec = Recorder()
    result = train_ultralytics(spec, data=root, workdir=tmp_path / "work", hooks=rec.hooks())
    assert {"top1", "top5", "train/loss", "val/loss"} <= set(rec.epochs[0].metrics)
    assert {"top1", "top5"} <= set(result.metrics)
    assert list(result.class_names) == ["circle", "square", "triangle"]


def test_cancel_mid_epoch_stops_at_a_batch_and_keeps_last(
    detect_data: Path, tmp_path: Path
) -> None:
    rec = Recorder(stop_when=lambda r: len(r.progress) >= 2)
    result = train_ultralytics(
        SPEC, data=detect_data, workdir=tmp_path, hooks=rec.hooks(), progress_every=1
    )

    assert result.cancelled
    # Stopped at the batch boundary right after the 2nd update: no third batch, no epoch end.
    assert [(u.epoch, u.batch, u.phase) for u in rec.progress] == [(1, 1, "train"), (1, 2, "train")]
    assert rec.epochs == [] and rec.checkpoints == [] and result.epochs_completed == 0
    assert result.last_path is not None and result.last_path.is_file()
    assert result.best_path is None  # half an epoch never becomes "best"
    from ultralytics.utils.patches import torch_load

    ckpt = torch_load(result.last_path)
    assert ckpt["optimizer"] is not None and ckpt["epoch"] == 0  # resumable


def test_cancel_before_training_leaves_nothing(detect_data: Path, tmp_path: Path) -> None:
    rec = Recorder(stop_when=lambda r: True)
    result = train_ultralytics(SPEC, data=detect_data, workdir=tmp_path, hooks=rec.hooks())
    assert result.cancelled and result.epochs_completed == 0
    assert rec.progress == [] and result.last_path is None and result.metrics == {}


def test_resume_on_a_new_machine_continues_at_the_next_epoch(
    detect_data: Path, tmp_path: Path
) -> None:
    # The first "machine" trains on its own copy of the dataset, in its own workdir.
    first_data = tmp_path / "machine1" / "dataset"
    shutil.copytree(detect_data.parent, first_data)
    first = Recorder(stop_when=lambda r: bool(r.checkpoints))  # "crash" after epoch 1's upload
    crashed = train_ultralytics(
        SPEC,
        data=first_data / "data.yaml",
        workdir=tmp_path / "machine1" / "work",
        hooks=first.hooks(),
    )
    assert crashed.cancelled and [c[0] for c in first.checkpoints] == [1]
    uploaded = tmp_path / "store" / "last.pt"
    uploaded.parent.mkdir()
    shutil.copy(first.checkpoints[0][1], uploaded)
    shutil.rmtree(tmp_path / "machine1")  # every path recorded in the checkpoint is gone

    second_data = tmp_path / "machine2" / "dataset"
    shutil.copytree(detect_data.parent, second_data)
    second = Recorder()
    resumed = train_ultralytics(
        SPEC,
        data=second_data / "data.yaml",
        workdir=tmp_path / "machine2" / "work",
        hooks=second.hooks(),
        resume_from=uploaded,
    )

    assert not resumed.cancelled
    assert [r.epoch for r in second.epochs] == [2, 3]
    assert {u.epoch for u in second.progress} == {2, 3}
    # results.csv and the history still cover the whole job.
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.results_csv is not None
    assert resumed.results_csv.read_text().count("\n") == 4
    assert resumed.last_path and resumed.last_path.is_relative_to(tmp_path / "machine2")


def test_resume_from_a_finished_checkpoint_is_refused(detect_data: Path, tmp_path: Path) -> None:
    done = train_ultralytics(
        dataclasses.replace(SPEC, epochs=1), data=detect_data, workdir=tmp_path / "a"
    )
    assert done.last_path is not None
    with pytest.raises(ValueError, match="not a resumable checkpoint"):
        train_ultralytics(
            SPEC, data=detect_data, workdir=tmp_path / "b", resume_from=done.last_path
        )


def test_same_seed_same_data_same_result(detect_data: Path, tmp_path: Path) -> None:
    a = train_ultralytics(SPEC, data=detect_data, workdir=tmp_path / "a")
    b = train_ultralytics(SPEC, data=detect_data, workdir=tmp_path / "b")
    # Bit-for-bit on the CPU: every epoch's losses and metrics, and the final metrics.
    assert [h.metrics for h in a.history] == [h.metrics for h in b.history]
    assert a.metrics == b.metrics
    from ultralytics.utils.patches import torch_load

    assert a.best_path is not None and b.best_path is not None
    wa = torch_load(a.best_path)["model"].state_dict()
    wb = torch_load(b.best_path)["model"].state_dict()
    assert all(wa[k].equal(wb[k]) for k in wa)
