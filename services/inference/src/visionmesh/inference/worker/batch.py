"""Batch inference jobs on the shared job runtime: every image of a prefix or a zip through a
model, results written as JSON Lines in fixed chunks (resumable) and as COCO detections.

Layout under the job's output prefix (store key `tenants/<tenant>/<spec.output_prefix>`):
`predictions-00000.jsonl`, `predictions-00001.jsonl`, ... hold CHUNK images each, inputs in
sorted key order, one ImageResult per line in proto JSON (key set to the tenant-relative key,
"<zip key>!<member>" for zip members; error set for an image that could not be used), and
`coco.json` (detect and segment models) is written once every chunk is.

A chunk file is one PUT of the whole chunk, so it exists only complete. A redelivered job
(worker crash, graceful hand-back) reads the chunk files already there, checks they hold
exactly the images its chunk boundaries give, and predicts only the chunks that are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import re
import shutil
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from google.protobuf import json_format
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import FieldViolation, InvalidArgument, NotFound
from visionmesh.common.jobs import JobContext, JobOutcome, PermanentJobError
from visionmesh.common.logging import get_logger
from visionmesh.common.specs.batch_inference import check_batch_spec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.tenancy import relative_key, tenant_key
from visionmesh.inference.core.model import LoadedModel
from visionmesh.inference.core.predictor import ImageInput, Predictor
from visionmesh.inference.worker.coco import COCO_FILE, COCO_TASKS, CocoDetections

__all__ = [
    "CHUNK",
    "COCO_FILE",
    "BatchInferenceHandler",
    "OpenModel",
    "chunk_name",
]

_log = get_logger(__name__)

CHUNK = 256
"""Images per JSON Lines file. Fixed, so a redelivered job finds the same boundaries."""
JSONL_CONTENT_TYPE = "application/x-ndjson"
_CHUNK_FILE = re.compile(r"^predictions-(\d{5,})\.jsonl$")
_ZIP_SEPARATOR = "!"
_FETCH_CONCURRENCY = 8

OpenModel = Callable[
    [str, inference_pb2.BatchInferenceSpec], AbstractAsyncContextManager[LoadedModel]
]
"""(tenant id, checked spec) -> the model to run: the deployment's loaded model, or one
loaded for the job from spec.export and closed after. NotFound when there is none."""


def chunk_name(index: int) -> str:
    """The file name of chunk `index` (0-based): predictions-00000.jsonl."""
    return f"predictions-{index:05d}.jsonl"


@dataclass(frozen=True, slots=True)
class _Input:
    key: str
    """As results name it: tenant-relative, "<zip key>!<member>" for a zip member."""
    size: int
    """Bytes, as the listing (or the zip directory) declares them."""
    location: str
    """The store key, or the member name inside the zip."""


class _Source(Protocol):
    inputs: list[_Input]

    async def read(
        self, batch: Sequence[_Input], first_index: int
    ) -> list[bytes | inference_pb2.ImageError]: ...


def _image_error(field: str, reason: str, message: str) -> inference_pb2.ImageError:
    return inference_pb2.ImageError(field=field, reason=reason, message=message)


def _field(index: int) -> str:
    # Positions count over the whole job in input order, like Predict's images[i].
    return f"images[{index}]"


def _key_field(index: int) -> str:
    # What the Predictor names for an image given by key (ImageInput.data_field).
    return f"{_field(index)}.key"


def _is_image(name: str, extensions: frozenset[str]) -> bool:
    return posixpath.splitext(name)[1].lower() in extensions


class _PrefixSource:
    """Every image object under a prefix of the tenant's area, by key."""

    def __init__(self, store: ObjectStore, inputs: list[_Input], max_image_bytes: int) -> None:
        self._store = store
        self.inputs = inputs
        self._max_image_bytes = max_image_bytes
        self._limit = asyncio.Semaphore(_FETCH_CONCURRENCY)

    @classmethod
    async def open(
        cls,
        store: ObjectStore,
        *,
        tenant_id: str,
        spec: inference_pb2.BatchInferenceSpec,
        output: str,
        max_image_bytes: int,
    ) -> _PrefixSource:
        prefix = tenant_key(tenant_id, spec.input_prefix, field="spec.input_prefix", prefix=True)
        extensions = frozenset(spec.image_extensions)
        listed = await store.list(prefix)
        inputs = [
            _Input(key=relative_key(tenant_id, info.key), size=info.size, location=info.key)
            for info in listed
            # Results never become inputs, whatever the prefixes.
            if _is_image(info.key, extensions) and not info.key.startswith(output)
        ]
        return cls(store, inputs, max_image_bytes)

    async def read(
        self, batch: Sequence[_Input], first_index: int
    ) -> list[bytes | inference_pb2.ImageError]:
        async def one(index: int, item: _Input) -> bytes | inference_pb2.ImageError:
            field = _key_field(index)
            if item.size > self._max_image_bytes:
                return _image_error(
                    field, "TOO_LARGE", f"{item.size} bytes; at most {self._max_image_bytes}"
                )
            async with self._limit:
                try:
                    return await self._store.get_bytes(item.location)
                except NotFound:
                    return _image_error(field, "NOT_FOUND", f"{item.key} was removed")

        return list(
            await asyncio.gather(*(one(first_index + i, item) for i, item in enumerate(batch)))
        )


class _ZipSource:
    """Every image member of a zip in the tenant's area, downloaded once per attempt."""

    def __init__(self, archive: zipfile.ZipFile, inputs: list[_Input], max_bytes: int) -> None:
        self._archive = archive
        self.inputs = inputs
        self._max_image_bytes = max_bytes

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        store: ObjectStore,
        *,
        tenant_id: str,
        spec: inference_pb2.BatchInferenceSpec,
        workdir: Path,
        max_image_bytes: int,
    ) -> AsyncIterator[_ZipSource]:
        key = tenant_key(tenant_id, spec.input_zip_key, field="spec.input_zip_key")
        path = workdir / "inputs.zip"
        try:
            await store.download_file(key, path)
        except NotFound as exc:
            raise PermanentJobError(
                "NOT_FOUND", f"spec.input_zip_key: {spec.input_zip_key!r} not found"
            ) from exc
        try:
            archive = await asyncio.to_thread(zipfile.ZipFile, path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidArgument.for_field(
                "spec.input_zip_key", f"{spec.input_zip_key!r} is not a readable zip ({exc})"
            ) from exc
        try:
            extensions = frozenset(spec.image_extensions)
            members = sorted(
                (info for info in archive.infolist() if _zip_image(info, extensions)),
                key=lambda info: info.filename,
            )
            inputs = [
                _Input(
                    key=f"{spec.input_zip_key}{_ZIP_SEPARATOR}{info.filename}",
                    size=info.file_size,
                    location=info.filename,
                )
                for info in members
            ]
            yield cls(archive, inputs, max_image_bytes)
        finally:
            archive.close()

    async def read(
        self, batch: Sequence[_Input], first_index: int
    ) -> list[bytes | inference_pb2.ImageError]:
        def read_all() -> list[bytes | inference_pb2.ImageError]:
            return [self._member(first_index + i, item) for i, item in enumerate(batch)]

        return await asyncio.to_thread(read_all)

    def _member(self, index: int, item: _Input) -> bytes | inference_pb2.ImageError:
        field = _key_field(index)
        too_large = _image_error(
            field, "TOO_LARGE", f"more than {self._max_image_bytes} bytes uncompressed"
        )
        if item.size > self._max_image_bytes:
            return too_large
        try:
            with self._archive.open(item.location) as member:
                # The directory's size can lie (a zip bomb); never inflate past the limit.
                data = member.read(self._max_image_bytes + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
            # A damaged, encrypted or oddly compressed member is one bad image, not a bad job.
            return _image_error(field, "UNDECODABLE", f"cannot read {item.key}: {exc}")
        return too_large if len(data) > self._max_image_bytes else data


def _zip_image(info: zipfile.ZipInfo, extensions: frozenset[str]) -> bool:
    name = info.filename
    if info.is_dir() or not _is_image(name, extensions):
        return False
    # macOS archivers add resource forks ("__MACOSX/", "._name.jpg") that are no images.
    return not (name.startswith("__MACOSX/") or posixpath.basename(name).startswith("._"))


@dataclass(slots=True)
class _Written:
    """A chunk file in the store: what is announced as an artifact at the end."""

    name: str
    key: str
    size: int
    sha256: str


@dataclass(slots=True)
class _Totals:
    images: int = 0
    errors: int = 0
    detections: int = 0
    resumed: int = 0

    def add(self, results: Sequence[inference_pb2.ImageResult]) -> None:
        self.images += len(results)
        for result in results:
            if result.HasField("error"):
                self.errors += 1
            self.detections += len(result.detections)


class BatchInferenceHandler:
    """Runs one attempt of a batch inference job; the shared job runtime does the rest.

    `chunk_size` is the number of images per JSON Lines file; it must stay the same across
    the attempts of a job (a chunk written with other boundaries is predicted again).
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        open_model: OpenModel,
        work_root: Path,
        max_image_bytes: int,
        max_image_pixels: int,
        chunk_size: int = CHUNK,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._store = store
        self._open_model = open_model
        self._work_root = work_root
        self._max_image_bytes = max_image_bytes
        self._max_image_pixels = max_image_pixels
        self._chunk_size = chunk_size

    async def run(self, job: JobContext) -> JobOutcome:
        started = time.monotonic()
        tenant_id = job.request.tenant_id
        # The gateway checked it; the worker runs only what the shared rules accept.
        spec = check_batch_spec(
            job.request.batch_inference.spec, tenant_id=tenant_id, job_id=job.job_id
        )
        output = tenant_key(tenant_id, spec.output_prefix, field="spec.output_prefix", prefix=True)
        # Only a zip input needs local disk: the archive, downloaded once per attempt.
        workdir = self._work_root / job.job_id / f"attempt-{job.attempt}"
        try:
            async with contextlib.AsyncExitStack() as stack:
                source: _Source
                if spec.input_zip_key:
                    shutil.rmtree(workdir, ignore_errors=True)
                    workdir.mkdir(parents=True)
                    source = await stack.enter_async_context(
                        _ZipSource.open(
                            self._store,
                            tenant_id=tenant_id,
                            spec=spec,
                            workdir=workdir,
                            max_image_bytes=self._max_image_bytes,
                        )
                    )
                else:
                    source = await _PrefixSource.open(
                        self._store,
                        tenant_id=tenant_id,
                        spec=spec,
                        output=output,
                        max_image_bytes=self._max_image_bytes,
                    )
                if not source.inputs:
                    field = "spec.input_zip_key" if spec.input_zip_key else "spec.input_prefix"
                    raise InvalidArgument.for_field(
                        field,
                        "holds no images with the extensions " + ", ".join(spec.image_extensions),
                    )
                model = await self._model(stack, tenant_id, spec)
                return await self._run(job, spec, source, model, output, started)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            with contextlib.suppress(OSError):  # kept while another attempt still uses it
                workdir.parent.rmdir()

    async def _model(
        self,
        stack: contextlib.AsyncExitStack,
        tenant_id: str,
        spec: inference_pb2.BatchInferenceSpec,
    ) -> LoadedModel:
        try:
            return await stack.enter_async_context(self._open_model(tenant_id, spec))
        except NotFound as exc:
            if spec.deployment:
                named = f"spec.deployment {spec.deployment!r}"
            else:
                named = f"spec.model_version_id {spec.model_version_id!r}"
            raise PermanentJobError("NOT_FOUND", f"{named}: {exc.message}") from exc

    async def _run(
        self,
        job: JobContext,
        spec: inference_pb2.BatchInferenceSpec,
        source: _Source,
        model: LoadedModel,
        output: str,
        started: float,
    ) -> JobOutcome:
        inputs = source.inputs
        total = len(inputs)
        chunks = [inputs[i : i + self._chunk_size] for i in range(0, total, self._chunk_size)]
        existing = {info.key: info for info in await self._store.list(output, recursive=False)}
        predictor = Predictor(
            model.metadata,
            model.runtime,
            max_image_bytes=self._max_image_bytes,
            max_image_pixels=self._max_image_pixels,
        )
        task = str(model.metadata.get("task", ""))
        coco = (
            CocoDetections(class_names=model.metadata.get("class_names", ()), task=task)
            if task in COCO_TASKS
            else None  # classifiers: COCO has no image labels; the JSON Lines carry them
        )
        totals = _Totals()
        written: list[_Written] = []
        await self._progress(job, 0, total)
        for index, chunk in enumerate(chunks):
            if job.should_stop():
                return await self._interrupted(job, written)
            first = index * self._chunk_size
            name = chunk_name(index)
            key = output + name
            results = await self._resumed(key, chunk) if key in existing else None
            if results is not None:
                data = _jsonl(results)
                totals.resumed += len(results)
            else:
                predicted = await self._predict_chunk(job, predictor, source, chunk, first, spec)
                if predicted is None:  # cancelled inside the chunk; nothing of it is written
                    return await self._interrupted(job, written)
                results = predicted
                data = _jsonl(results)
                await self._store.put_bytes(key, data, content_type=JSONL_CONTENT_TYPE)
            written.append(_Written(name, key, len(data), hashlib.sha256(data).hexdigest()))
            totals.add(results)
            if coco is not None:
                for result in results:
                    coco.add(result)
            await self._progress(job, first + len(chunk), total)
        await self._remove_stale_chunks(existing, output, len(chunks))
        if coco is not None:
            data = coco.to_json()
            await self._store.put_bytes(output + COCO_FILE, data, content_type="application/json")
            written.append(
                _Written(COCO_FILE, output + COCO_FILE, len(data), hashlib.sha256(data).hexdigest())
            )
        await self._announce(job, written)
        return JobOutcome(
            "succeeded",
            {
                "images": float(totals.images),
                "errors": float(totals.errors),
                "detections": float(totals.detections),
                "images_resumed": float(totals.resumed),
                "seconds": time.monotonic() - started,
            },
        )

    async def _resumed(
        self, key: str, chunk: Sequence[_Input]
    ) -> list[inference_pb2.ImageResult] | None:
        """The results of a chunk file an earlier attempt wrote, when it holds exactly this
        chunk's images; None when it must be predicted again (the inputs changed)."""
        try:
            data = await self._store.get_bytes(key)
            results = [
                json_format.Parse(line, inference_pb2.ImageResult())
                for line in data.decode().splitlines()
                if line.strip()
            ]
        except (NotFound, UnicodeDecodeError, json_format.ParseError) as exc:
            _log.warning("unreadable chunk file predicted again", key=key, error=repr(exc))
            return None
        if [r.key for r in results] != [item.key for item in chunk]:
            _log.warning("chunk file of other inputs predicted again", key=key)
            return None
        return results

    async def _predict_chunk(
        self,
        job: JobContext,
        predictor: Predictor,
        source: _Source,
        chunk: Sequence[_Input],
        first: int,
        spec: inference_pb2.BatchInferenceSpec,
    ) -> list[inference_pb2.ImageResult] | None:
        """The chunk's results in order; None when the job is cancelled midway.

        A graceful stop finishes the chunk (it is the checkpoint); a cancel does not wait.
        The next batch's images are fetched while the model runs on this one.
        """
        size = spec.batch_size
        batches = [(first + i, chunk[i : i + size]) for i in range(0, len(chunk), size)]
        results: list[inference_pb2.ImageResult] = []
        pending = asyncio.create_task(source.read(batches[0][1], batches[0][0]))
        try:
            for position, (start, batch) in enumerate(batches):
                payloads = await pending
                if position + 1 < len(batches):
                    following = batches[position + 1]
                    pending = asyncio.create_task(source.read(following[1], following[0]))
                if job.cancel.is_set():
                    return None
                results += await self._predict_batch(predictor, batch, start, payloads, spec)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        return results

    async def _predict_batch(
        self,
        predictor: Predictor,
        batch: Sequence[_Input],
        start: int,
        payloads: Sequence[bytes | inference_pb2.ImageError],
        spec: inference_pb2.BatchInferenceSpec,
    ) -> list[inference_pb2.ImageResult]:
        images = [
            ImageInput(field=_field(start + i), key=item.key, error=payload)
            if isinstance(payload, inference_pb2.ImageError)
            else ImageInput(field=_field(start + i), key=item.key, data=payload)
            for i, (item, payload) in enumerate(zip(batch, payloads, strict=True))
        ]
        return await _predict(predictor, images, spec.options)

    async def _progress(self, job: JobContext, done: int, total: int) -> None:
        await job.reporter.progress(
            job_pb2.JobProgress(
                phase="predict", step=done, total_steps=total, fraction=done / total
            )
        )

    async def _interrupted(self, job: JobContext, written: list[_Written]) -> JobOutcome:
        if not job.cancel.is_set():
            # Handing back: the next attempt announces every chunk once it has them all.
            return JobOutcome("stopped")
        # The chunks written before the cancel are complete results; they stay and are
        # announced, so ListBatchInferenceResults and downloads serve them.
        await self._announce(job, written)
        return JobOutcome("cancelled")

    async def _announce(self, job: JobContext, written: list[_Written]) -> None:
        for file in written:
            is_coco = file.name == COCO_FILE
            await job.reporter.artifact(
                artifact_pb2.ArtifactRef(
                    name=file.name,
                    kind="coco_detections" if is_coco else "predictions",
                    key=file.key,
                    size_bytes=file.size,
                    sha256=file.sha256,
                    content_type="application/json" if is_coco else JSONL_CONTENT_TYPE,
                )
            )

    async def _remove_stale_chunks(
        self, existing: Collection[str], output: str, chunks: int
    ) -> None:
        """Chunk files past the last chunk (an earlier attempt saw more inputs) would be read
        as results of this job."""
        for key in existing:
            match = _CHUNK_FILE.match(key[len(output) :])
            if match is not None and int(match.group(1)) >= chunks:
                await self._store.delete(key)


async def _predict(
    predictor: Predictor, images: list[ImageInput], options: inference_pb2.PredictOptions
) -> list[inference_pb2.ImageResult]:
    """One ImageResult per image, key set; a batch whose every image is bad is errors too.

    Predict refuses a request whose images are all bad (InvalidArgument naming each); in a
    batch job each one is a result line. Any other InvalidArgument is about spec.options and
    fails the job, named as the spec's field.
    """
    try:
        response = await predictor.predict(images, options)
    except InvalidArgument as exc:
        errors = _image_errors(exc, images)
        if errors is not None:
            return [
                inference_pb2.ImageResult(key=image.key, error=error)
                for image, error in zip(images, errors, strict=True)
            ]
        violations = [
            FieldViolation(field=f"spec.{v.field}", description=v.description, reason=v.reason)
            for v in exc.field_violations
        ]
        if not violations:
            raise
        raise InvalidArgument(
            "; ".join(f"{v.field}: {v.description}" for v in violations),
            field_violations=violations,
        ) from exc
    if len(response.results) != len(images):
        raise RuntimeError(f"predictor returned {len(response.results)} results for {len(images)}")
    results = list(response.results)
    for image, result in zip(images, results, strict=True):
        result.key = image.key
    return results


def _image_errors(
    exc: InvalidArgument, images: Sequence[ImageInput]
) -> list[inference_pb2.ImageError] | None:
    """One error per image from the violations; None unless they name every image and only
    images."""
    by_image: dict[int, inference_pb2.ImageError] = {}
    for violation in exc.field_violations:
        index = next(
            (
                i
                for i, image in enumerate(images)
                if violation.field == image.field
                or violation.field.startswith((f"{image.field}.", f"{image.field}["))
            ),
            None,
        )
        if index is None:
            return None
        by_image.setdefault(
            index,
            _image_error(violation.field, violation.reason or "UNDECODABLE", violation.description),
        )
    if len(by_image) != len(images):
        return None
    return [by_image[i] for i in range(len(images))]


def _jsonl(results: Sequence[inference_pb2.ImageResult]) -> bytes:
    return "".join(
        json_format.MessageToJson(result, indent=None) + "\n" for result in results
    ).encode()
