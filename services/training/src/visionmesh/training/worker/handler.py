"""The training handler on the shared job runtime: data, resume, train in a thread, upload."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import artifact_pb2, job_pb2, metric_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.common.datasets import DataError, DatasetCache
from visionmesh.common.jobs import (
    JobContext,
    JobOutcome,
    JobReporter,
    PermanentJobError,
    is_out_of_memory,
)
from visionmesh.common.logging import get_logger
from visionmesh.common.storage import ObjectStore
from visionmesh.training.core import (
    EpochResult,
    InvalidSpecError,
    ProgressUpdate,
    TrainerHooks,
    TrainResult,
    train_classifier,
    train_ultralytics,
)
from visionmesh.training.specs import to_train_spec

_log = get_logger(__name__)

RESUME_CHECKPOINT = "checkpoints/last.pt"
BEST_CHECKPOINT = "checkpoints/best.pt"
# Where both trainers keep their weights under the workdir they are given; an earlier
# attempt's best.pt goes back there so a resumed run keeps competing against it.
_WEIGHTS = Path("run") / "weights"
_ARTIFACT_KINDS = {".pt": "checkpoint", ".csv": "metrics", ".png": "plot"}
_CONTENT_TYPES = {".pt": "application/octet-stream", ".csv": "text/csv", ".png": "image/png"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class CheckpointUploader:
    """Uploads each epoch's checkpoints (for resuming) without stalling training.

    Called on the training thread: the files are copied aside (milliseconds) and uploaded
    on the event loop while the next epoch trains. The previous epoch's upload is awaited
    first, so checkpoints land in order and at most one is in flight.
    """

    def __init__(
        self, store: ObjectStore, prefix: str, loop: asyncio.AbstractEventLoop, staging: Path
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._loop = loop
        self._staging = staging
        self._in_flight: concurrent.futures.Future[None] | None = None

    def stage(self, epoch: int, files: list[tuple[str, Path]]) -> None:
        if self._in_flight is not None:
            self._in_flight.result()
        self._staging.mkdir(parents=True, exist_ok=True)
        staged = []
        for key, path in files:
            copy = self._staging / f"{epoch}-{Path(key).name}"
            shutil.copyfile(path, copy)
            staged.append((key, copy))
        self._in_flight = asyncio.run_coroutine_threadsafe(self._upload(staged), self._loop)

    async def _upload(self, staged: list[tuple[str, Path]]) -> None:
        for key, copy in staged:
            await self._store.put_file(self._prefix + key, copy)
            await asyncio.to_thread(copy.unlink)

    async def drain(self) -> None:
        if self._in_flight is not None:
            await asyncio.wrap_future(self._in_flight)
            self._in_flight = None


class TrainingHandler:
    """Runs one attempt of a training job; everything around it is the shared job runtime."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        cache: DatasetCache,
        work_root: Path,
        progress_every: int,
        default_device: str = "auto",
    ) -> None:
        self._store = store
        self._cache = cache
        self._work_root = work_root
        self._progress_every = progress_every
        self._default_device = default_device

    async def run(self, job: JobContext) -> JobOutcome:
        workdir = self._work_root / job.job_id / f"attempt-{job.attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        training_done = threading.Event()
        try:
            return await self._run(job, workdir, training_done)
        except DataError as exc:
            raise PermanentJobError("DATA_CORRUPT", str(exc)) from exc
        except InvalidSpecError as exc:
            # The gateway validated it; a worker whose catalogue differs says so here.
            raise PermanentJobError("INVALID_SPEC", str(exc)) from exc
        finally:
            # A handler abandoned after the graceful-stop deadline leaves its training
            # thread running: never delete the files under it.
            if training_done.is_set() or not (workdir / "run").exists():
                shutil.rmtree(workdir, ignore_errors=True)

    async def _run(
        self, job: JobContext, workdir: Path, training_done: threading.Event
    ) -> JobOutcome:
        request, reporter = job.request, job.reporter
        work = request.training
        prefix = work.artifact_prefix
        spec_proto = work.spec
        await reporter.progress(job_pb2.JobProgress(phase="data", total_epochs=spec_proto.epochs))
        dataset = await self._cache.materialise(work.snapshot)
        data_dir = dataset.root
        _log.info("dataset ready", job_id=request.job_id, path=str(data_dir), cached=dataset.cached)
        init_checkpoint = None
        if work.init_checkpoint_key:
            init_checkpoint = workdir / "init.pt"
            await self._store.download_file(work.init_checkpoint_key, init_checkpoint)
        resume_from = None
        if await self._store.exists(prefix + RESUME_CHECKPOINT):
            resume_from = workdir / "resume" / "last.pt"
            resume_from.parent.mkdir()
            await self._store.download_file(prefix + RESUME_CHECKPOINT, resume_from)
            if await self._store.exists(prefix + BEST_CHECKPOINT):
                earlier_best = workdir / "run" / _WEIGHTS / "best.pt"
                earlier_best.parent.mkdir(parents=True)
                await self._store.download_file(prefix + BEST_CHECKPOINT, earlier_best)
            _log.info("resuming from the last uploaded checkpoint", job_id=request.job_id)
        spec = to_train_spec(spec_proto, init_checkpoint=init_checkpoint)
        if spec.device == "auto" and self._default_device != "auto":
            spec = replace(spec, device=self._default_device)

        loop = asyncio.get_running_loop()
        checkpoints = CheckpointUploader(self._store, prefix, loop, workdir / "staged")
        hooks = self._hooks(loop, reporter, checkpoints, job.should_stop)
        options: dict[str, Any] = {
            "workdir": workdir / "run",
            "hooks": hooks,
            "resume_from": resume_from,
            "progress_every": self._progress_every,
        }
        train: Callable[..., TrainResult]
        if spec.framework == "torchvision":
            train, options["data_root"] = train_classifier, data_dir
        elif spec.task == "classify":
            train, options["data"] = train_ultralytics, data_dir
        else:
            # The manifest's resolved layout, never the archive's own YAML (data.yml,
            # Roboflow's ../train/images): the gateway and the worker read the same thing.
            train = train_ultralytics
            data_yaml = workdir / "data.yaml"
            data_yaml.write_text(yaml.safe_dump(dataset.ultralytics_data(), sort_keys=False))
            options["data"] = data_yaml

        def training() -> TrainResult:
            try:
                return train(spec, **options)
            finally:
                training_done.set()

        try:
            result = await asyncio.to_thread(training)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise PermanentJobError(
                    "OUT_OF_MEMORY",
                    f"out of {spec.device} memory training {spec.model} at batch {spec.batch}, "
                    f"imgsz {spec.imgsz}: lower spec.batch or spec.imgsz ({exc})"[:2000],
                ) from exc
            raise
        finally:
            await checkpoints.drain()
        await reporter.flush()
        if result.cancelled and job.stop.is_set() and not job.cancel.is_set():
            # Graceful stop: the checkpoint of the last finished epoch is uploaded (drained
            # above), so the next attempt replays the interrupted epoch exactly as an
            # uninterrupted run would have; the mid-epoch last.pt is left out on purpose.
            return JobOutcome("stopped")
        await reporter.progress(
            job_pb2.JobProgress(
                phase="upload",
                epoch=result.epochs_completed,
                total_epochs=spec.epochs,
                fraction=1.0 if not result.cancelled else 0.0,
            )
        )
        uploaded = await self._upload_results(result, prefix, reporter)
        if result.cancelled:
            return JobOutcome("cancelled", dict(result.metrics))
        best = uploaded.get("best.pt") or uploaded.get("last.pt")
        if best is None:
            raise RuntimeError("training finished without a checkpoint")
        await reporter.emit(
            model_trained=events_pb2.ModelTrained(
                framework=spec.framework,
                task=spec.task,
                architecture=spec.model,
                class_names=list(result.class_names or work.snapshot.class_names),
                imgsz=result.imgsz or spec.imgsz,
                metrics=dict(result.metrics),
                checkpoint=best,
            )
        )
        return JobOutcome("succeeded", dict(result.metrics))

    def _hooks(
        self,
        loop: asyncio.AbstractEventLoop,
        reporter: JobReporter,
        checkpoints: CheckpointUploader,
        should_stop: Callable[[], bool],
    ) -> TrainerHooks:
        """Hooks run on the training thread: events are queued to the loop in order, and
        checkpoint uploads block the trainer so last.pt is not rewritten while uploading."""

        def on_progress(update: ProgressUpdate) -> None:
            done = (update.epoch - 1) + update.batch / max(update.total_batches, 1)
            reporter.emit_threadsafe(
                loop,
                progress=job_pb2.JobProgress(
                    epoch=update.epoch,
                    total_epochs=update.total_epochs,
                    step=update.batch,
                    total_steps=update.total_batches,
                    fraction=min(done / max(update.total_epochs, 1), 1.0),
                    eta_seconds=update.eta_seconds,
                    phase=update.phase,
                    losses=dict(update.losses),
                    learning_rate=update.lr,
                ),
            )

        def on_epoch_end(result: EpochResult) -> None:
            now = _now()
            points = [
                metric_pb2.MetricPoint(name=name, value=float(value), epoch=result.epoch, time=now)
                for name, value in result.metrics.items()
            ]
            points.append(
                metric_pb2.MetricPoint(name="lr", value=result.lr, epoch=result.epoch, time=now)
            )
            reporter.emit_threadsafe(loop, metrics=events_pb2.JobMetricsReported(points=points))

        def on_checkpoint(epoch: int, last_path: Path, best_path: Path | None) -> None:
            uploads = [(RESUME_CHECKPOINT, last_path)]
            if best_path is not None:
                uploads.append((BEST_CHECKPOINT, best_path))
            checkpoints.stage(epoch, uploads)

        return TrainerHooks(
            on_progress=on_progress,
            on_epoch_end=on_epoch_end,
            on_checkpoint=on_checkpoint,
            should_stop=should_stop,
        )

    async def _upload_results(
        self, result: TrainResult, prefix: str, reporter: JobReporter
    ) -> dict[str, artifact_pb2.ArtifactRef]:
        files: dict[str, Path | None] = {
            "best.pt": result.best_path,
            "last.pt": result.last_path,
            "results.csv": result.results_csv,
            "training_curves.png": result.curves_png,
        }
        uploaded: dict[str, artifact_pb2.ArtifactRef] = {}
        for name, path in files.items():
            if path is None or not await asyncio.to_thread(Path(path).exists):
                continue
            path = Path(path)
            suffix = path.suffix
            size = (await asyncio.to_thread(path.stat)).st_size
            ref = artifact_pb2.ArtifactRef(
                name=name,
                kind=_ARTIFACT_KINDS.get(suffix, "file"),
                key=prefix + name,
                size_bytes=size,
                sha256=await asyncio.to_thread(_sha256, path),
                content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
            )
            await self._store.put_file(ref.key, path, content_type=ref.content_type)
            await reporter.artifact(ref)
            uploaded[name] = ref
        return uploaded
