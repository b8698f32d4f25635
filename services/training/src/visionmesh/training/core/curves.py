"""Training-curve figure (losses and metrics per epoch) drawn with matplotlib's Agg canvas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from visionmesh.training.core.callbacks import EpochResult

__all__ = ["plot_training_curves"]


def plot_training_curves(history: Sequence[EpochResult], out_png: Path | str) -> Path:
    """Write a PNG with a panel of losses and one of metrics per epoch; returns its path."""
    # The object API with an explicit Agg canvas, not pyplot: no global backend or figure state,
    # so it is safe on a worker thread and on machines without a display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    epochs = [r.epoch for r in history]
    names = sorted({k for r in history for k in r.metrics})
    losses = [n for n in names if "loss" in n]
    metrics = [n for n in names if "loss" not in n]

    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for ax, keys, title in (
        (fig.add_subplot(1, 2, 1), losses, "Losses"),
        (fig.add_subplot(1, 2, 2), metrics, "Metrics"),
    ):
        for key in keys:
            points = [(r.epoch, r.metrics[key]) for r in history if key in r.metrics]
            xs, ys = zip(*points, strict=True) if points else ((), ())
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
        if epochs:
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    fig.savefig(out)
    return out
