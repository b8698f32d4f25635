"""Plain PyTorch training of torchvision classifiers on image-folder datasets."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, TensorDataset
from visionmesh.common.classifiers import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_torchvision_classifier,
    read_checkpoint,
)
from visionmesh.training.core._progress import ProgressReporter, TrainingCancelled
from visionmesh.training.core.callbacks import (
    DEFAULT_PROGRESS_EVERY,
    EpochResult,
    TrainerHooks,
    TrainResult,
)
from visionmesh.training.core.capabilities import resolve_device
from visionmesh.training.core.classifier_augment import augment_batch
from visionmesh.training.core.curves import plot_training_curves
from visionmesh.training.core.spec import TrainSpec, ensure_valid

__all__ = [
    "CHECKPOINT_FORMAT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "load_classifier",
    "predict_classifier",
    "train_classifier",
]


_RUN_NAME = "run"
_FINAL_LR_FRACTION = 0.01
_WARMUP_FRACTION = 0.05
_AUTO_LR = 1e-3
_CSV_COLUMNS = ("epoch", "time", "train/loss", "val/loss", "top1", "top5", "lr")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Every epoch draws its shuffle and augmentations from its own seed, so a resumed job
    # replays exactly the epochs an uninterrupted one would have run.
    return seed * 100_003 + epoch


def _decode_transform(imgsz: int) -> Any:
    """PIL image -> uint8 CHW tensor of imgsz x imgsz, shared by training and prediction."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize((imgsz, imgsz), antialias=True), transforms.PILToTensor()]
    )


def _folder_dataset(root: Path, imgsz: int, class_to_idx: Mapping[str, int] | None) -> Any:
    """An ImageFolder yielding uint8 CHW tensors resized to imgsz, with a fixed class mapping."""
    from torchvision import datasets

    class _Folder(datasets.ImageFolder):
        def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
            found, found_map = super().find_classes(directory)
            if class_to_idx is None:
                return found, found_map
            unknown = sorted(set(found) - set(class_to_idx))
            if unknown:
                raise ValueError(f"{directory} has classes the train split lacks: {unknown}")
            # The val split may lack a class; its indices must still be the train split's.
            return sorted(class_to_idx, key=class_to_idx.__getitem__), dict(class_to_idx)

    return _Folder(str(root), transform=_decode_transform(imgsz))


def _preload(dataset: Any, *, workers: int) -> TensorDataset:
    """Decode every image once (in batches, on `workers` processes) into one uint8 tensor."""
    loader: DataLoader[Any] = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=workers)
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(y)
    return TensorDataset(torch.cat(images), torch.cat(labels))


def _loader(
    dataset: Dataset[Any],
    *,
    spec: TrainSpec,
    device: torch.device,
    batch: int,
    sampler: RandomSampler | None,
    preloaded: bool,
    drop_last: bool,
) -> DataLoader[Any]:
    loading = spec.data_loading
    # Preloaded tensors need no worker processes: indexing them is cheaper than IPC.
    workers = 0 if preloaded else loading.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:
        extra["persistent_workers"] = True
        if loading.prefetch_factor is not None:
            extra["prefetch_factor"] = loading.prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=loading.pin_memory and device.type == "cuda",
        drop_last=drop_last,
        **extra,
    )


def _to_input(
    x: torch.Tensor, device: torch.device, augment: Mapping[str, float] | None = None
) -> torch.Tensor:
    """uint8 images to the normalised float batch; augmented first when `augment` is given."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    images = x.to(device, non_blocking=True).float() / 255.0
    if augment is not None:
        images = augment_batch(images, augment, erase_fill=mean[0])
    return (images - mean) / std


def _optimizer(spec: TrainSpec, model: nn.Module) -> tuple[torch.optim.Optimizer, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "SGD":
        return (
            torch.optim.SGD(params, lr=spec.lr0, momentum=0.9, nesterov=True, weight_decay=5e-4),
            spec.lr0,
        )
    if spec.optimizer == "Adam":
        return torch.optim.Adam(params, lr=spec.lr0), spec.lr0
    # 'auto', like Ultralytics' own, picks AdamW at a learning rate that suits it rather than
    # lr0, whose default (0.01) is calibrated for SGD.
    lr = _AUTO_LR if spec.optimizer == "auto" else spec.lr0
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.05), lr


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps, then cosine down to 1% of `base`."""
    warmup = max(1, round(_WARMUP_FRACTION * total))
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (
        _FINAL_LR_FRACTION + (1 - _FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * t))
    )


def _amp(spec: TrainSpec, device: torch.device) -> tuple[bool, torch.dtype]:
    if not (spec.amp and device.type == "cuda"):
        return False, torch.float32
    # bf16 needs no loss scaling; fp16 (older GPUs) gets a GradScaler.
    return True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _save_atomic(obj: Mapping[str, Any], path: Path) -> None:
    # A crash (or an upload) mid-write must never see a truncated checkpoint.
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(obj), tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    return read_checkpoint(path)


def _load_matching(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Copy the tensors whose names and shapes match (a new class count drops the head)."""
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matching, strict=False)
    return len(matching)


def _history_rows(history: Sequence[EpochResult]) -> list[dict[str, float]]:
    return [
        {"epoch": r.epoch, "time": r.elapsed_seconds, "lr": r.lr, **dict(r.metrics)}
        for r in history
    ]


def _write_csv(history: Sequence[EpochResult], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in _history_rows(history):
            writer.writerow({k: f"{v:.6g}" for k, v in row.items()})


@dataclass(frozen=True, slots=True)
class _Eval:
    loss: float
    top1: float
    top5: float


def _evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    *,
    device: torch.device,
    amp: tuple[bool, torch.dtype],
    k: int,
    report: ProgressReporter,
    epoch: int,
    lr: float,
) -> _Eval:
    model.eval()
    loss_sum, top1, topk, seen = 0.0, 0, 0, 0
    with torch.no_grad():
        for i, (x, y) in enumerate(loader):
            target = y.to(device)
            with _autocast(device, amp):
                logits = model(_to_input(x, device))
            loss_sum += float(nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
            ranked = logits.topk(k, dim=1).indices
            top1 += int((ranked[:, 0] == target).sum())
            topk += int((ranked == target[:, None]).any(dim=1).sum())
            seen += int(target.numel())
            report.val_batch(epoch=epoch, index=i, total=len(loader), lr=lr)
    seen = max(seen, 1)
    return _Eval(loss=loss_sum / seen, top1=top1 / seen, top5=topk / seen)


def _autocast(
    device: torch.device, amp: tuple[bool, torch.dtype]
) -> contextlib.AbstractContextManager[Any]:
    enabled, dtype = amp
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_classifier(
    spec: TrainSpec,
    *,
    data_root: Path,
    workdir: Path,
    hooks: TrainerHooks | None = None,
    resume_from: Path | None = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
) -> TrainResult:
    """Train a torchvision classifier from random init (or `spec.init_checkpoint`).

    `data_root` holds `train/<class>/*` and `val/<class>/*`. Writes `run/weights/{last,best}.pt`
    (dicts: model_state, optimizer_state, epoch, arch, class_names, imgsz, metrics, spec, ...),
    `run/results.csv` and `run/curves.png` under `workdir`. `resume_from` is a last.pt of the
    same spec: training continues at its epoch + 1 and, on the same device type, replays
    exactly what the uninterrupted run would have done.
    """
    ensure_valid(spec)
    if spec.framework != "torchvision" or spec.task != "classify":
        raise ValueError(f"train_classifier cannot train a {spec.framework} {spec.task} spec")
    hooks = hooks or TrainerHooks()
    data_root = Path(data_root)
    val_dir = data_root / "val" if (data_root / "val").is_dir() else data_root / "test"
    if not (data_root / "train").is_dir() or not val_dir.is_dir():
        raise FileNotFoundError(f"{data_root} needs train/<class>/ and val/<class>/ folders")
    save_dir = Path(workdir).resolve() / _RUN_NAME
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    last_path, best_path, csv_path = (
        weights / "last.pt",
        weights / "best.pt",
        save_dir / "results.csv",
    )
    device = torch.device(resolve_device(spec.device))
    torch.backends.cudnn.benchmark = False  # autotuning picks kernels nondeterministically
    torch.backends.cudnn.deterministic = True

    train_folder = _folder_dataset(data_root / "train", spec.imgsz, None)
    class_names: list[str] = list(train_folder.classes)
    val_folder = _folder_dataset(val_dir, spec.imgsz, train_folder.class_to_idx)
    if len(class_names) < 2:
        raise ValueError(f"{data_root / 'train'} needs at least two classes, has {class_names}")
    resume = _load_checkpoint(Path(resume_from)) if resume_from is not None else None
    if resume is not None:
        if resume["arch"] != spec.model or int(resume["imgsz"]) != spec.imgsz:
            raise ValueError(
                f"{resume_from} is a {resume['arch']}@{resume['imgsz']}, not this spec's"
            )
        if list(resume["class_names"]) != class_names:
            raise ValueError(f"{resume_from} was trained on classes {resume['class_names']}")

    _seed_everything(spec.seed)
    model = build_torchvision_classifier(spec.model, num_classes=len(class_names), imgsz=spec.imgsz)
    if spec.init_checkpoint is not None and resume is None:
        try:
            init = torch.load(spec.init_checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickled modules (e.g. an Ultralytics .pt) are refused here
            raise ValueError(
                f"{spec.init_checkpoint} is not a classifier checkpoint or state dict: {exc}"
            ) from exc
        state = init.get("model_state", init) if isinstance(init, dict) else {}
        if _load_matching(model, state) == 0:
            raise ValueError(f"{spec.init_checkpoint} shares no weights with {spec.model}")
    model.to(device)
    optimizer, base_lr = _optimizer(spec, model)
    amp = _amp(spec, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp[0] and amp[1] == torch.float16)

    preload = spec.data_loading.preload
    train_ds: Dataset[Any] = (
        _preload(train_folder, workers=spec.data_loading.num_workers) if preload else train_folder
    )
    val_ds: Dataset[Any] = (
        _preload(val_folder, workers=spec.data_loading.num_workers) if preload else val_folder
    )
    n_train = len(train_folder)
    shuffle = torch.Generator()
    # Dropping a ragged last batch of 1 keeps BatchNorm from failing on a single sample.
    train_loader = _loader(
        train_ds,
        spec=spec,
        device=device,
        batch=spec.batch,
        sampler=RandomSampler(range(n_train), generator=shuffle),
        preloaded=preload,
        drop_last=n_train > spec.batch and n_train % spec.batch == 1,
    )
    val_loader = _loader(
        val_ds,
        spec=spec,
        device=device,
        batch=spec.batch * 2,
        sampler=None,
        preloaded=preload,
        drop_last=False,
    )
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * spec.epochs
    k = min(5, len(class_names))

    start_epoch = 0  # 0-based index of the first epoch this run trains
    history: list[EpochResult] = []
    best_fitness, best_epoch = -math.inf, 0
    if resume is not None:
        model.load_state_dict(resume["model_state"])
        optimizer.load_state_dict(resume["optimizer_state"])
        if resume.get("scaler_state"):
            scaler.load_state_dict(resume["scaler_state"])
        start_epoch = int(resume["epoch"])
        best_fitness = float(resume.get("best_fitness", -math.inf))
        best_epoch = int(resume.get("best_epoch", 0))
        history = [
            EpochResult(
                epoch=int(row["epoch"]),
                total_epochs=spec.epochs,
                metrics={
                    k_: float(v) for k_, v in row.items() if k_ not in {"epoch", "time", "lr"}
                },
                lr=float(row["lr"]),
                elapsed_seconds=float(row["time"]),
            )
            for row in resume.get("history", [])
        ]

    report = ProgressReporter(
        hooks, total_epochs=spec.epochs, start_epoch=start_epoch, every=progress_every
    )

    def checkpoint(epoch: int, metrics: Mapping[str, float]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scaler_state": scaler.state_dict(),
            "epoch": epoch,
            "arch": spec.model,
            "class_names": list(class_names),
            "imgsz": spec.imgsz,
            "metrics": dict(metrics),
            "best_fitness": best_fitness,
            "best_epoch": best_epoch,
            "history": _history_rows(history),
            "spec": spec.to_dict(),
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        }

    if start_epoch >= spec.epochs or (spec.patience and start_epoch - best_epoch >= spec.patience):
        # Every epoch was trained before the last attempt died (during final validation,
        # upload or registration): finish from the checkpoint, train nothing again.
        shutil.copyfile(Path(resume_from or ""), last_path)
        _write_csv(history, csv_path)
        start_epoch = spec.epochs
    cancelled = False
    epoch = start_epoch
    batches_this_epoch = 0
    try:
        for epoch in range(start_epoch, spec.epochs):
            batches_this_epoch = 0
            report.poll_stop()
            torch.manual_seed(_epoch_seed(spec.seed, epoch))
            shuffle.manual_seed(_epoch_seed(spec.seed, epoch))
            model.train()
            loss_sum, seen = 0.0, 0
            lr = base_lr
            for i, (x, y) in enumerate(train_loader):
                step = epoch * steps_per_epoch + i
                lr = _lr_at(step, total_steps, base_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                inputs = _to_input(x, device, spec.augment)
                target = y.to(device, non_blocking=True)
                with _autocast(device, amp):
                    loss = nn.functional.cross_entropy(model(inputs).float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                batches_this_epoch += 1
                loss_sum += float(loss.detach()) * int(target.numel())
                seen += int(target.numel())
                report.train_batch(
                    epoch=epoch,
                    index=i,
                    total=steps_per_epoch,
                    losses={"loss": loss_sum / seen},
                    lr=lr,
                )

            result = _evaluate(
                model, val_loader, device=device, amp=amp, k=k, report=report, epoch=epoch, lr=lr
            )
            metrics = {
                "top1": result.top1,
                "top5": result.top5,
                "train/loss": loss_sum / max(seen, 1),
                "val/loss": result.loss,
            }
            # Fitness is top-1, ties broken by the lower validation loss.
            fitness = result.top1 - 1e-6 * min(result.loss, 1e5)
            improved = fitness > best_fitness
            if improved:
                best_fitness, best_epoch = fitness, epoch + 1
            epoch_result = EpochResult(
                epoch=epoch + 1,
                total_epochs=spec.epochs,
                metrics=metrics,
                lr=lr,
                elapsed_seconds=report.elapsed,
            )
            history.append(epoch_result)
            ckpt = checkpoint(epoch + 1, metrics)
            _save_atomic(ckpt, last_path)
            if improved:
                _save_atomic(ckpt, best_path)
            _write_csv(history, csv_path)
            hooks.on_epoch_end(epoch_result)
            hooks.on_checkpoint(epoch + 1, last_path, best_path if improved else None)
            if spec.patience and epoch + 1 - best_epoch >= spec.patience:
                break
    except TrainingCancelled:
        cancelled = True
        if batches_this_epoch:
            # Like Ultralytics' stop: the interrupted epoch counts as done in this checkpoint.
            _save_atomic(checkpoint(epoch + 1, history[-1].metrics if history else {}), last_path)

    curves = plot_training_curves(history, save_dir / "curves.png") if history else None
    final: Mapping[str, float] = {}
    if best_path.is_file() and not cancelled:
        final = torch.load(best_path, map_location="cpu", weights_only=True)["metrics"]
    elif history:
        final = history[-1].metrics
    return TrainResult(
        framework="torchvision",
        task="classify",
        best_path=best_path if best_path.is_file() else None,
        last_path=last_path if last_path.is_file() else None,
        results_csv=csv_path if csv_path.is_file() else None,
        curves_png=curves,
        metrics=dict(final),
        history=tuple(history),
        class_names=tuple(class_names),
        imgsz=spec.imgsz,
        epochs_completed=len(history),
        cancelled=cancelled,
    )


def load_classifier(
    checkpoint: Path | str, *, device: str = "cpu"
) -> tuple[nn.Module, list[str], int]:
    """The model (in eval mode), class names and input size stored in a classifier checkpoint."""
    ckpt = _load_checkpoint(Path(checkpoint))
    names = list(ckpt["class_names"])
    imgsz = int(ckpt["imgsz"])
    model = build_torchvision_classifier(ckpt["arch"], num_classes=len(names), imgsz=imgsz)
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), names, imgsz


def _as_uint8(image: Image.Image | Path | str, transform: Any) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return transform(image.convert("RGB"))  # type: ignore[no-any-return]
    with Image.open(image) as opened:
        return transform(opened.convert("RGB"))  # type: ignore[no-any-return]


def predict_classifier(
    model: nn.Module,
    images: Sequence[Image.Image | Path | str],
    *,
    imgsz: int,
    batch: int = 32,
) -> torch.Tensor:
    """Class probabilities, shape (len(images), classes), for images or image paths."""
    device = next(model.parameters()).device
    transform = _decode_transform(imgsz)
    model.eval()
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.stack([_as_uint8(im, transform) for im in images[start : start + batch]])
            out.append(model(_to_input(x, device)).float().softmax(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
