"""Progress bookkeeping shared by the trainers: when to report, ETA, and cancellation polling."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

from visionmesh.training.core.callbacks import ProgressUpdate, TrainerHooks

__all__ = ["ProgressReporter", "TrainingCancelled"]


class TrainingCancelled(Exception):
    """Raised inside a training loop when `should_stop` says so; the trainer catches it."""


class ProgressReporter:
    """Turns batch events into a `ProgressUpdate` every `every` batches and at each pass end."""

    def __init__(
        self, hooks: TrainerHooks, *, total_epochs: int, start_epoch: int, every: int
    ) -> None:
        if every < 1:
            raise ValueError(f"progress_every must be >= 1, got {every}")
        self._hooks = hooks
        self._total_epochs = total_epochs
        self._start_epoch = start_epoch  # 0-based first epoch this run trains
        self._every = every
        self._started = time.monotonic()
        self.batches_run = 0
        """Training batches this run has done; 0 means no weights changed yet."""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def eta(self, epoch: int, done_in_epoch: float) -> float:
        """Seconds left, from this run's pace so far; `epoch` is 0-based."""
        todo = self._total_epochs - self._start_epoch
        done = (epoch - self._start_epoch) + done_in_epoch
        if todo <= 0 or done <= 0:
            return 0.0
        return max(self.elapsed * (todo - done) / done, 0.0)

    def poll_stop(self) -> None:
        if self._hooks.should_stop():
            raise TrainingCancelled

    def train_batch(
        self, *, epoch: int, index: int, total: int, losses: Mapping[str, float], lr: float
    ) -> None:
        """After training batch `index` (0-based) of 0-based `epoch`: maybe report, then poll."""
        self.batches_run += 1
        if (index + 1) % self._every == 0 or index + 1 == total:
            self._hooks.on_progress(
                ProgressUpdate(
                    epoch=epoch + 1,
                    total_epochs=self._total_epochs,
                    batch=index + 1,
                    total_batches=total,
                    losses=dict(losses),
                    lr=lr,
                    # Training is most of an epoch; count the pass as 90% of it for the ETA.
                    eta_seconds=self.eta(epoch, 0.9 * (index + 1) / max(total, 1)),
                    phase="train",
                )
            )
        self.poll_stop()

    def val_batch(self, *, epoch: int, index: int, total: int, lr: float) -> None:
        """After validation batch `index` (0-based) of 0-based `epoch`: maybe report."""
        phase: Literal["val"] = "val"
        if (index + 1) % self._every == 0 or index + 1 == total:
            self._hooks.on_progress(
                ProgressUpdate(
                    epoch=epoch + 1,
                    total_epochs=self._total_epochs,
                    batch=index + 1,
                    total_batches=total,
                    losses={},
                    lr=lr,
                    eta_seconds=self.eta(epoch, 0.9 + 0.1 * (index + 1) / max(total, 1)),
                    phase=phase,
                )
            )
