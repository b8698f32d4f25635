"""Ultralytics YOLO training (detect, segment, classify) reporting through `TrainerHooks`."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from visionmesh.training.core._progress import ProgressReporter, TrainingCancelled
from visionmesh.training.core.callbacks import (
    DEFAULT_PROGRESS_EVERY,
    EpochResult,
    TrainerHooks,
    TrainResult,
)
from visionmesh.training.core.capabilities import resolve_device
from visionmesh.training.core.curves import plot_training_curves
from visionmesh.training.core.spec import TrainSpec, ensure_valid

__all__ = ["normalise_ultralytics_metrics", "train_ultralytics"]

_RUN_NAME = "run"
_METRIC_NAMES: Mapping[str, str] = {
    "metrics/precision(B)": "precision",
    "metrics/recall(B)": "recall",
    "metrics/mAP50(B)": "map50",
    "metrics/mAP50-95(B)": "map50_95",
    "metrics/precision(M)": "mask_precision",
    "metrics/recall(M)": "mask_recall",
    "metrics/mAP50(M)": "mask_map50",
    "metrics/mAP50-95(M)": "mask_map50_95",
    "metrics/accuracy_top1": "top1",
    "metrics/accuracy_top5": "top5",
}


def normalise_ultralytics_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics' metric keys (`metrics/mAP50(B)`, ...) as the platform's (`map50`, ...).

    Losses keep their `train/` and `val/` names; learning rates, fitness and the CSV's
    epoch/time columns are dropped.
    """
    out: dict[str, float] = {}
    for key, value in raw.items():
        name = _METRIC_NAMES.get(key.strip())
        if name is None and key.strip().startswith(("train/", "val/")):
            name = key.strip()
        if name is not None:
            out[name] = float(value)
    return out


def _import_ultralytics() -> None:
    # Ultralytics decides once, when first imported, whether it is online (a DNS probe that
    # also enables its update check and telemetry); a training worker never is.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics  # noqa: F401


def _no_font_download(font: str = "Arial.ttf") -> None:
    del font  # fonts only serve plots, which are off; the real check downloads a missing one


def _offline_check_amp(model: Any) -> bool:
    # The real check downloads yolo26n.pt to compare FP32 with AMP outputs; without network
    # only its device rule is left: AMP on accelerators, never on the CPU.
    return bool(next(model.parameters()).device.type == "cuda")


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Undo Ultralytics' process-wide `torch.set_num_threads(cpu_count - 1, max 8)`.

    Its device selection sets it for CPU runs and never restores it, which slows down and
    changes the numerics of whatever the process runs next (e.g. a classifier job).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _offline_guards() -> Iterator[None]:
    """Stop the two downloads Ultralytics attempts even with YOLO_OFFLINE set."""
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as engine_trainer

    saved = (data_utils.check_font, engine_trainer.check_amp)
    setattr(data_utils, "check_font", _no_font_download)  # noqa: B010
    setattr(engine_trainer, "check_amp", _offline_check_amp)  # noqa: B010
    try:
        yield
    finally:
        setattr(data_utils, "check_font", saved[0])  # noqa: B010
        setattr(engine_trainer, "check_amp", saved[1])  # noqa: B010


def _prepare_data(task: str, data: Path, workdir: Path) -> str:
    """The `data` argument for Ultralytics; for YAML datasets a sanitised copy in `workdir`."""
    if task == "classify":
        if not (data / "train").is_dir():
            raise FileNotFoundError(f"classification dataset {data} has no train/ folder")
        return str(data.resolve())
    yaml_path = data / "data.yaml" if data.is_dir() else data
    if not yaml_path.is_file():
        raise FileNotFoundError(f"dataset YAML {yaml_path} not found")
    cfg = yaml.safe_load(yaml_path.read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"dataset YAML {yaml_path} is not a mapping")
    # Ultralytics exec()s a `download:` value as Python when val images are missing: never
    # for uploaded data.
    cfg.pop("download", None)
    # A relative `path:` means the worker's cwd (then Ultralytics' datasets dir) to Ultralytics;
    # for an uploaded dataset it can only mean the YAML's own folder.
    base = yaml_path.parent.resolve()
    root = Path(str(cfg["path"])) if cfg.get("path") else base
    cfg["path"] = str(root if root.is_absolute() else (base / root).resolve())
    out = workdir / "data.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def _ultralytics_device(device: str) -> str:
    return device.removeprefix("cuda:") if device.startswith("cuda:") else device


def _run_args(spec: TrainSpec, device: str) -> dict[str, Any]:
    """Arguments that may change when a job resumes on another machine."""
    return {
        "device": _ultralytics_device(device),
        "amp": bool(spec.amp and device.startswith("cuda")),
        "workers": spec.data_loading.num_workers,
        "cache": "ram" if spec.data_loading.preload else False,
        "plots": False,
        "val": True,
    }


def _write_results_csv(columns: Mapping[str, list[Any]], out: Path) -> None:
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(rows)


def _prepare_resume(
    resume_from: Path, *, workdir: Path, save_dir: Path, data: str, run_args: Mapping[str, Any]
) -> Path:
    """A copy of `resume_from` whose recorded paths and devices point at this machine.

    Ultralytics resumes from the `train_args` saved in the checkpoint, so data, save_dir and
    device would otherwise name the machine that wrote it; only some of them can be
    overridden when resuming, amp not at all.
    """
    import torch
    from ultralytics.utils.patches import torch_load

    ckpt = torch_load(resume_from, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("optimizer") is None or ckpt.get("epoch", -1) < 0:
        raise ValueError(
            f"{resume_from} is not a resumable checkpoint (a finished run's weights have no "
            "optimizer state); resume from a last.pt passed to on_checkpoint"
        )
    args = dict(ckpt.get("train_args") or {})
    if trained_every_epoch(ckpt):
        raise ValueError(f"{resume_from} has already trained all {args.get('epochs')} epochs")
    args.update(
        run_args, data=data, project=str(workdir), name=save_dir.name, save_dir=str(save_dir)
    )
    ckpt["train_args"] = args
    out = workdir / "resume" / "resumable.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    # The checkpoint carries the rows of the epochs it has trained: restore exactly those, so
    # results.csv (and the history) covers the whole job and never repeats an epoch that a
    # failed attempt in this workdir got further with.
    results = save_dir / "results.csv"
    results.unlink(missing_ok=True)
    if ckpt.get("train_results"):
        _write_results_csv(ckpt["train_results"], results)
    return out


def trained_every_epoch(ckpt: Mapping[str, Any]) -> bool:
    """True for a last.pt written after the final epoch: nothing is left to train."""
    epochs = int((ckpt.get("train_args") or {}).get("epochs", 0))
    return int(ckpt.get("epoch", -1)) + 1 >= epochs


def _finish_from_checkpoint(
    spec: TrainSpec, *, checkpoint: Path, data: str, save_dir: Path, device: str
) -> TrainResult:
    """What Ultralytics does after its last epoch (strip optimizers, validate best.pt),
    for a run whose last attempt trained every epoch and died before finishing."""
    import shutil

    from ultralytics import YOLO
    from ultralytics.utils.patches import torch_load
    from ultralytics.utils.torch_utils import strip_optimizer

    ckpt = torch_load(checkpoint, map_location="cpu")
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    last, best = weights / "last.pt", weights / "best.pt"
    shutil.copyfile(checkpoint, last)
    if not best.is_file():  # no earlier best.pt was restored: the last epoch's is the best
        shutil.copyfile(checkpoint, best)
    results_csv = save_dir / "results.csv"
    if ckpt.get("train_results"):
        _write_results_csv(ckpt["train_results"], results_csv)
    for weight in (last, best):
        strip_optimizer(weight)
    total_epochs = int((ckpt.get("train_args") or {}).get("epochs", spec.epochs))
    history = _read_history(results_csv, total_epochs)
    model = YOLO(str(best), task=spec.task)
    with _offline_guards(), _keep_torch_threads():
        # The trainer validates with twice the training batch: same batches, same numbers.
        validation = model.val(
            data=data,
            imgsz=spec.imgsz,
            batch=spec.batch * 2,
            device=device,
            plots=False,
            verbose=False,
            project=str(save_dir.parent),
            name="final-val",
            exist_ok=True,
        )
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    curves = plot_training_curves(history, save_dir / "curves.png") if history else None
    return TrainResult(
        framework="ultralytics",
        task=spec.task,
        best_path=best,
        last_path=last,
        results_csv=results_csv if results_csv.is_file() else None,
        curves_png=curves,
        metrics=normalise_ultralytics_metrics(validation.results_dict),
        history=tuple(history),
        class_names=tuple(names[i] for i in sorted(names)),
        imgsz=spec.imgsz,
        epochs_completed=len(history),
        cancelled=False,
    )


def _read_history(results_csv: Path, total_epochs: int) -> list[EpochResult]:
    if not results_csv.is_file():
        return []
    history = []
    with results_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            values = {k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")}
            history.append(
                EpochResult(
                    epoch=int(values["epoch"]),
                    total_epochs=total_epochs,
                    metrics=normalise_ultralytics_metrics(values),
                    lr=values.get("lr/pg0", math.nan),
                    elapsed_seconds=values.get("time", math.nan),
                )
            )
    return history


class _Run:
    """Ultralytics callbacks that translate trainer events into `TrainerHooks` calls."""

    def __init__(self, hooks: TrainerHooks, *, progress_every: int) -> None:
        self.hooks = hooks
        self.progress_every = progress_every
        self.trainer: Any = None
        self.reporter: ProgressReporter | None = None
        self.in_epoch = False
        self.batch_index = 0
        self.history: list[EpochResult] = []
        self.final_metrics: dict[str, float] | None = None

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {
            "on_pretrain_routine_end": self._on_pretrain_routine_end,
            "on_train_epoch_start": self._on_train_epoch_start,
            "on_train_batch_end": self._on_train_batch_end,
            "on_val_batch_end": self._on_val_batch_end,
            "on_fit_epoch_end": self._on_fit_epoch_end,
        }

    def _lr(self) -> float:
        groups = self.trainer.optimizer.param_groups if self.trainer is not None else []
        return float(groups[0]["lr"]) if groups else math.nan

    def _on_pretrain_routine_end(self, trainer: Any) -> None:
        # start_epoch is known here: a resumed run has loaded its checkpoint by now.
        self.trainer = trainer
        self.reporter = ProgressReporter(
            self.hooks,
            total_epochs=int(trainer.epochs),
            start_epoch=int(trainer.start_epoch),
            every=self.progress_every,
        )

    def _on_train_epoch_start(self, trainer: Any) -> None:
        self.in_epoch = True
        self.batch_index = 0
        assert self.reporter is not None
        # Before the scheduler steps: stopping here leaves the previous epoch's last.pt as is.
        self.reporter.poll_stop()

    def _on_train_batch_end(self, trainer: Any) -> None:
        assert self.reporter is not None
        index, self.batch_index = self.batch_index, self.batch_index + 1
        losses = {k: float(v) for k, v in (trainer.tloss or {}).items()}
        self.reporter.train_batch(
            epoch=int(trainer.epoch),
            index=index,
            total=len(trainer.train_loader),
            losses=losses,
            lr=self._lr(),
        )

    def _on_val_batch_end(self, validator: Any) -> None:
        # The final evaluation of best.pt after the last epoch also validates: not progress.
        if self.in_epoch and self.reporter is not None and self.trainer is not None:
            self.reporter.val_batch(
                epoch=int(self.trainer.epoch),
                index=int(validator.batch_i),
                total=len(validator.dataloader),
                lr=self._lr(),
            )

    def _on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = normalise_ultralytics_metrics(
            {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {})}
        )
        if not self.in_epoch:
            # Ultralytics calls this once more after training, with best.pt's validation; the
            # losses then still describe the last epoch, not best.pt.
            self.final_metrics = {k: v for k, v in metrics.items() if not k.startswith("train/")}
            return
        self.in_epoch = False
        assert self.reporter is not None
        epoch = int(trainer.epoch) + 1
        result = EpochResult(
            epoch=epoch,
            total_epochs=int(trainer.epochs),
            metrics=metrics,
            lr=self._lr(),
            elapsed_seconds=self.reporter.elapsed,
        )
        self.history.append(result)
        self.hooks.on_epoch_end(result)
        last, best = Path(trainer.last), Path(trainer.best)
        if last.is_file():
            # save_model wrote best.pt this epoch exactly when the fitness equals the best so far.
            rewrote_best = trainer.best_fitness == trainer.fitness and best.is_file()
            self.hooks.on_checkpoint(epoch, last, best if rewrote_best else None)

    def save_on_cancel(self) -> None:
        """Write last.pt at the batch where training stopped, unless no batch ran this epoch.

        Like Ultralytics' own stop, the checkpoint counts the interrupted epoch as done: a
        resume from it continues with the next epoch.
        """
        trainer = self.trainer
        if trainer is None:
            return
        for loader in (
            getattr(trainer, "train_loader", None),
            getattr(trainer, "test_loader", None),
        ):
            close = getattr(loader, "close", None)
            if callable(close):
                close()  # the exception skipped Ultralytics' own cleanup of workers
        if self.batch_index == 0:
            return  # stopped at an epoch boundary: last.pt of the epoch before is already right
        real_best = trainer.best
        # save_model also rewrites best.pt when the (previous epoch's) fitness ties the best:
        # point it elsewhere so that a half-trained epoch never replaces the best weights.
        trainer.best = Path(trainer.wdir) / ".cancelled-best.pt"
        try:
            trainer.save_model()
        finally:
            Path(trainer.best).unlink(missing_ok=True)
            trainer.best = real_best


def fresh_train_arguments(
    spec: TrainSpec, *, data: str, workdir: Path, device: str
) -> dict[str, Any]:
    """`YOLO(spec.model).train(**these)` is exactly what a fresh (not resumed) job runs.

    Public so a parity check can train with Ultralytics directly, without visionmesh in
    the loop, and compare what was learned.
    """
    return {
        **_run_args(spec, device),
        "data": data,
        "epochs": spec.epochs,
        "imgsz": spec.imgsz,
        "batch": spec.batch,
        "optimizer": spec.optimizer,
        "lr0": spec.lr0,
        "patience": spec.patience,
        "seed": spec.seed,
        "deterministic": True,
        "project": str(workdir),
        "name": _RUN_NAME,
        "save_dir": str(workdir / _RUN_NAME),
        "exist_ok": True,
        "verbose": False,
        "pretrained": str(spec.init_checkpoint) if spec.init_checkpoint else False,
        **spec.augment,
    }


def train_ultralytics(
    spec: TrainSpec,
    *,
    data: Path,
    workdir: Path,
    hooks: TrainerHooks | None = None,
    resume_from: Path | None = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
) -> TrainResult:
    """Train an Ultralytics YOLO model; blocks until done, stopped early or cancelled.

    `data` is the dataset's data.yaml (or its folder) for detect/segment and the dataset root
    (`train/<class>/`, `val/<class>/`) for classify. Everything is written under `workdir`
    (`run/weights/{last,best}.pt`, `run/results.csv`, `run/curves.png`). `resume_from` is a
    last.pt from an interrupted run of the same spec, possibly written on another machine:
    training continues at the epoch after the one it recorded.
    """
    ensure_valid(spec)
    if spec.framework != "ultralytics":
        raise ValueError(f"train_ultralytics cannot train a {spec.framework} spec")
    hooks = hooks or TrainerHooks()
    _import_ultralytics()
    from ultralytics import YOLO

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    save_dir = workdir / _RUN_NAME
    device = resolve_device(spec.device)
    data_arg = _prepare_data(spec.task, Path(data), workdir)
    run_args = _run_args(spec, device)

    if resume_from is not None:
        from ultralytics.utils.patches import torch_load

        if trained_every_epoch(torch_load(resume_from, map_location="cpu")):
            return _finish_from_checkpoint(
                spec, checkpoint=Path(resume_from), data=data_arg, save_dir=save_dir, device=device
            )
        checkpoint = _prepare_resume(
            Path(resume_from), workdir=workdir, save_dir=save_dir, data=data_arg, run_args=run_args
        )
        model = YOLO(str(checkpoint), task=spec.task)
        train_args: dict[str, Any] = {
            **run_args,
            "resume": str(checkpoint),
            "data": data_arg,
            "save_dir": str(save_dir),
        }
    else:
        model = YOLO(spec.model, task=spec.task)
        train_args = fresh_train_arguments(spec, data=data_arg, workdir=workdir, device=device)

    run = _Run(hooks, progress_every=progress_every)
    for event, callback in run.callbacks().items():
        model.add_callback(event, callback)
    cancelled = False
    with _offline_guards(), _keep_torch_threads():
        try:
            model.train(**train_args)
        except TrainingCancelled:
            cancelled = True
            run.save_on_cancel()

    trainer = run.trainer
    total_epochs = int(trainer.epochs) if trainer is not None else spec.epochs
    results_csv = save_dir / "results.csv"
    # results.csv holds the epochs before a resume too; this run's rows come unrounded.
    seen = {r.epoch for r in run.history}
    history = sorted(
        [r for r in _read_history(results_csv, total_epochs) if r.epoch not in seen] + run.history,
        key=lambda r: r.epoch,
    )
    curves = plot_training_curves(history, save_dir / "curves.png") if history else None
    best, last = save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt"
    names = (trainer.data or {}).get("names", {}) if trainer is not None else {}
    final = run.final_metrics if run.final_metrics is not None and not cancelled else None
    return TrainResult(
        framework="ultralytics",
        task=spec.task,
        best_path=best if best.is_file() else None,
        last_path=last if last.is_file() else None,
        results_csv=results_csv if results_csv.is_file() else None,
        curves_png=curves,
        metrics=final if final is not None else (dict(history[-1].metrics) if history else {}),
        history=tuple(history),
        class_names=tuple(names[i] for i in sorted(names))
        if isinstance(names, dict)
        else tuple(names),
        imgsz=int(trainer.args.imgsz) if trainer is not None else spec.imgsz,
        epochs_completed=len(history),
        cancelled=cancelled,
    )
