"""What the trainers report while they run (hooks, progress, epoch results) and what they return."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_PROGRESS_EVERY",
    "EpochResult",
    "ProgressUpdate",
    "TrainResult",
    "TrainerHooks",
]

DEFAULT_PROGRESS_EVERY = 10
"""Batches between progress updates; the last batch of every epoch always reports too."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressUpdate:
    """Where a running job is, sent every N batches and at the end of each epoch's passes."""

    epoch: int
    """1-based."""
    total_epochs: int
    batch: int
    """1-based, within the current phase of the epoch."""
    total_batches: int
    losses: Mapping[str, float]
    """Running means over this epoch's training batches (`box_loss`, `loss`...); empty in val."""
    lr: float
    eta_seconds: float
    """Estimate for the rest of the job, validation included once one epoch has finished."""
    phase: Literal["train", "val"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochResult:
    """Metrics of one finished epoch.

    Metric names are the same for both trainers: detect/segment `map50`, `map50_95`,
    `precision`, `recall` (segment adds `mask_map50`, ...), classify `top1`, `top5`; losses as
    `train/<name>` and `val/<name>` (`train/box_loss`, `val/loss`, ...).
    """

    epoch: int
    """1-based."""
    total_epochs: int
    metrics: Mapping[str, float]
    lr: float
    elapsed_seconds: float
    """From the start of the run that trained this epoch (a resumed run counts from its start)."""


def _no_progress(update: ProgressUpdate) -> None:
    del update


def _no_epoch_end(result: EpochResult) -> None:
    del result


def _no_checkpoint(epoch: int, last_path: Path, best_path: Path | None) -> None:
    del epoch, last_path, best_path


def _never_stop() -> bool:
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainerHooks:
    """Callables a trainer reports through; every one defaults to doing nothing.

    They run on the training thread, between batches, so they must be quick: a worker running
    the trainer in a thread hands the values over to its event loop (e.g. with
    `loop.call_soon_threadsafe`) rather than doing I/O here. An exception raised by a hook
    aborts training and propagates to the trainer's caller.
    """

    on_progress: Callable[[ProgressUpdate], None] = _no_progress
    on_epoch_end: Callable[[EpochResult], None] = _no_epoch_end
    on_checkpoint: Callable[[int, Path, Path | None], None] = _no_checkpoint
    """(epoch, last.pt, best.pt or None) after each epoch's checkpoint is on disk; best.pt is
    passed only when this epoch rewrote it. last.pt is resumable at that moment: upload it."""
    should_stop: Callable[[], bool] = _never_stop
    """Polled at every training batch boundary: True stops the job there (cancel)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainResult:
    """What a finished, stopped-early or cancelled training run produced."""

    framework: str
    task: str
    best_path: Path | None
    """Best checkpoint by validation fitness; None when no epoch finished."""
    last_path: Path | None
    results_csv: Path | None
    curves_png: Path | None
    metrics: Mapping[str, float]
    """Final metrics: of best.pt when the run completed, else of the last finished epoch."""
    history: Sequence[EpochResult] = field(default_factory=tuple)
    """Every finished epoch, including those of the run a resume continued."""
    class_names: Sequence[str] = field(default_factory=tuple)
    imgsz: int = 0
    epochs_completed: int = 0
    cancelled: bool = False
