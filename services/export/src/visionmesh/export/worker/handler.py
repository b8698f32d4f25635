"""The export handler on the shared job runtime: fetch, export in a thread, verify, upload."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from pathlib import Path

from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.datasets import DataError, DatasetCache
from visionmesh.common.jobs import JobContext, JobOutcome, PermanentJobError, is_out_of_memory
from visionmesh.common.logging import get_logger
from visionmesh.common.specs.export import check_export_spec
from visionmesh.common.storage import ObjectStore
from visionmesh.export.core.capabilities import export_capabilities
from visionmesh.export.core.images import synthetic_images, validation_images
from visionmesh.export.core.onnx_export import ExportError
from visionmesh.export.core.parity import ParityInputs
from visionmesh.export.core.pipeline import (
    METADATA_FILE,
    ONNX_FILE,
    PARITY_FILE,
    PHASES,
    PLAN_FILE,
    TRITON_DIR,
    TRITON_ZIP,
    ExportPackage,
    ExportTarget,
    ParityFailed,
    Stopped,
    run_export,
)
from visionmesh.export.core.source import SourceError
from visionmesh.export.core.tensorrt import TensorRtError

_log = get_logger(__name__)

# What each file of the package is, for the artifact list; Triton folder files are
# "triton_file" (the folder is what a Triton server with an S3 repository loads).
_KINDS = {
    ONNX_FILE: ("onnx", "application/octet-stream"),
    PLAN_FILE: ("tensorrt_plan", "application/octet-stream"),
    METADATA_FILE: ("metadata", "application/json"),
    PARITY_FILE: ("parity_report", "application/json"),
    TRITON_ZIP: ("triton_repository", "application/zip"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ExportHandler:
    """Runs one attempt of an export job; everything around it is the shared job runtime."""

    def __init__(
        self, *, store: ObjectStore, cache: DatasetCache, work_root: Path, parity_images: int = 8
    ) -> None:
        self._store = store
        self._cache = cache
        self._work_root = work_root
        self._parity_images = parity_images

    async def run(self, job: JobContext) -> JobOutcome:
        workdir = self._work_root / job.job_id / f"attempt-{job.attempt}"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        export_done = threading.Event()
        export_done.set()
        try:
            return await self._run(job, workdir, export_done)
        except SourceError as exc:
            raise PermanentJobError("INVALID_CHECKPOINT", str(exc)) from exc
        except ExportError as exc:
            raise PermanentJobError("EXPORT_FAILED", str(exc)[:2000]) from exc
        except TensorRtError as exc:
            raise PermanentJobError("TENSORRT_FAILED", str(exc)[:2000]) from exc
        except ParityFailed as exc:
            raise PermanentJobError("PARITY_FAILED", str(exc)[:2000]) from exc
        finally:
            # An export thread abandoned after the graceful-stop deadline still writes here.
            if export_done.is_set():
                shutil.rmtree(workdir, ignore_errors=True)

    async def _run(
        self, job: JobContext, workdir: Path, export_done: threading.Event
    ) -> JobOutcome:
        work, reporter = job.request.export, job.reporter
        loop = asyncio.get_running_loop()
        await reporter.progress(job_pb2.JobProgress(phase="load", fraction=0.0))
        capabilities = await asyncio.to_thread(export_capabilities)
        # The gateway checked the spec; this worker's own capabilities decide.
        spec = check_export_spec(
            work.spec,
            framework=work.framework,
            task=work.task,
            model_imgsz=work.imgsz or work.spec.imgsz,
            capabilities=capabilities,
        )
        checkpoint = workdir / ("model.pt" if work.framework == "ultralytics" else "classifier.pt")
        await self._store.download_file(work.checkpoint_key, checkpoint)
        if work.checkpoint_sha256 and await asyncio.to_thread(_sha256, checkpoint) != (
            work.checkpoint_sha256
        ):
            raise PermanentJobError(
                "CHECKPOINT_MISMATCH", f"{work.checkpoint_key} does not have the registered sha256"
            )
        inputs = await self._parity_inputs(work)
        target = ExportTarget(
            spec=spec,
            model_version_id=spec.model_version_id,
            model_name=work.model_name,
            model_version=work.model_version,
            framework=work.framework,
            task=work.task,
            architecture=work.architecture,
            class_names=tuple(work.class_names),
            imgsz=spec.imgsz,
        )

        def on_phase(name: str) -> None:
            fraction = PHASES.index(name) / len(PHASES) if name in PHASES else 0.6
            reporter.emit_threadsafe(
                loop, progress=job_pb2.JobProgress(phase=name, fraction=fraction)
            )

        def export() -> ExportPackage:
            try:
                return run_export(
                    target,
                    checkpoint,
                    workdir,
                    inputs,
                    on_phase=on_phase,
                    should_stop=job.should_stop,
                )
            finally:
                export_done.set()

        export_done.clear()
        try:
            package = await asyncio.to_thread(export)
        except Stopped:
            return self._interrupted(job)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise PermanentJobError(
                    "OUT_OF_MEMORY",
                    f"out of memory exporting at max_batch_size {spec.max_batch_size}, "
                    f"imgsz {spec.imgsz}: lower spec.max_batch_size or spec.imgsz ({exc})"[:2000],
                ) from exc
            raise
        await reporter.flush()
        if job.should_stop():
            return self._interrupted(job)
        await reporter.progress(job_pb2.JobProgress(phase="upload", fraction=0.8))
        uploaded = await self._upload(package, work.artifact_prefix, job)
        if uploaded is None:
            return self._interrupted(job)
        result = self._result(package, work.artifact_prefix, uploaded)
        await reporter.emit(model_exported=events_pb2.ModelExported(result=result))
        await reporter.progress(job_pb2.JobProgress(phase="upload", fraction=1.0))
        return JobOutcome("succeeded", _metrics(package))

    @staticmethod
    def _interrupted(job: JobContext) -> JobOutcome:
        return JobOutcome("cancelled" if job.cancel.is_set() else "stopped")

    async def _parity_inputs(self, work: events_pb2.ExportJobRequest) -> ParityInputs:
        if work.HasField("snapshot") and work.snapshot.manifest_key:
            try:
                dataset = await self._cache.materialise(work.snapshot)
                found = await asyncio.to_thread(validation_images, dataset, self._parity_images)
            except DataError as exc:  # deleted or unreadable: synthetic images still check
                _log.warning("validation images unavailable; using synthetic", error=str(exc))
            else:
                if found is not None:
                    return found
        return await asyncio.to_thread(synthetic_images, self._parity_images)

    async def _upload(
        self, package: ExportPackage, prefix: str, job: JobContext
    ) -> dict[str, artifact_pb2.ArtifactRef] | None:
        """Uploads every file, then announces them; None when cancelled midway (what was
        uploaded is removed, and nothing was announced).

        Keys are fixed per job, so a redelivered attempt overwrites, never duplicates.
        """
        uploaded: dict[str, artifact_pb2.ArtifactRef] = {}
        for path in package.files():
            if job.should_stop():
                for ref in uploaded.values():
                    await self._store.delete(ref.key)
                return None
            name = path.relative_to(package.root).as_posix()
            kind, content_type = _KINDS.get(name, ("triton_file", "application/octet-stream"))
            ref = artifact_pb2.ArtifactRef(
                name=name,
                kind=kind,
                key=prefix + name,
                size_bytes=(await asyncio.to_thread(path.stat)).st_size,
                sha256=await asyncio.to_thread(_sha256, path),
                content_type=content_type,
            )
            await self._store.put_file(ref.key, path, content_type=content_type)
            uploaded[name] = ref
        for ref in uploaded.values():
            await job.reporter.artifact(ref)
        return uploaded

    @staticmethod
    def _result(
        package: ExportPackage, prefix: str, uploaded: dict[str, artifact_pb2.ArtifactRef]
    ) -> export_pb2.ExportResult:
        result = export_pb2.ExportResult(
            model_version_id=package.spec.model_version_id,
            spec=package.spec,
            onnx=uploaded[ONNX_FILE],
            triton_repository_prefix=f"{prefix}{TRITON_DIR}/",
            metadata=package.metadata,
            metadata_file=uploaded[METADATA_FILE],
            parity_max_abs_diff=max((o.max_abs_diff for o in package.parity.outputs), default=0.0),
            triton_repository_zip=uploaded[TRITON_ZIP],
            parity_report_file=uploaded[PARITY_FILE],
            parity=package.parity,
        )
        if PLAN_FILE in uploaded:
            result.tensorrt.CopyFrom(uploaded[PLAN_FILE])
        if package.tensorrt_build is not None:
            result.tensorrt_build.CopyFrom(package.tensorrt_build)
        for model in package.triton_models:
            entry = result.triton_models.add()
            entry.CopyFrom(model)
            for field in ("config", "model"):
                key = getattr(model, field).key
                if key:
                    getattr(entry, field).CopyFrom(uploaded[f"{TRITON_DIR}/{key}"])
        return result


def _metrics(package: ExportPackage) -> dict[str, float]:
    parity = package.parity
    metrics = {
        "parity_images": float(parity.images),
        "parity_max_abs_diff": max((o.max_abs_diff for o in parity.outputs), default=0.0),
        "parity_batch_max_abs_diff": parity.batch_max_abs_diff,
        "onnx_mb": package.path(ONNX_FILE).stat().st_size / 1e6,
    }
    if package.metadata.task == "classify":
        metrics["parity_top1_agreed"] = float(parity.top1_agreed)
    else:
        metrics["parity_boxes_reference"] = float(parity.boxes_reference)
        metrics["parity_boxes_matched"] = float(parity.boxes_matched)
        metrics["parity_min_box_iou"] = parity.min_box_iou
    if package.spec.nms:
        metrics["parity_graph_nms_matched"] = float(parity.graph_nms_matched)
    if package.tensorrt_parity is not None:
        metrics["tensorrt_parity_max_abs_diff"] = max(
            (o.max_abs_diff for o in package.tensorrt_parity.outputs), default=0.0
        )
    for phase, seconds in package.seconds.items():
        metrics[f"seconds_{phase}"] = seconds
    return metrics
