"""Images in, typed results out: what Predict and batch jobs run on a loaded model.

Decoding, preprocessing and post-processing follow the export's ModelMetadata through
`visionmesh.common.vision.processing`, so a torchvision classifier and an Ultralytics
detector are served by the same code that checked their exports' parity.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import FieldViolation, InvalidArgument
from visionmesh.common.vision import processing
from visionmesh.inference.core.model import KSERVE_DTYPES, Runtime, Tensor, Timing

__all__ = ["ImageInput", "Predictor"]

DEFAULT_TOP_K = 5
_IMGSZ_STRIDE = 32


@dataclass(frozen=True)
class ImageInput:
    """One image of a request, as the caller got it."""

    field: str
    """The request field it came from, e.g. "images[2]"; errors name "<field>.data"/".key"."""
    data: bytes | None = None
    key: str = ""
    """The tenant-relative object key when it came from the store (echoed in the result)."""
    error: inference_pb2.ImageError | None = None
    """Set by the caller when it could not fetch the image; the image is then not run."""

    @property
    def data_field(self) -> str:
        return f"{self.field}.key" if self.key else f"{self.field}.data"


@dataclass(frozen=True)
class _Prepared:
    """One decoded and preprocessed image: a (1, 3, H, W) tensor and how to map back."""

    tensor: Tensor
    transform: processing.Transform


@dataclass(frozen=True)
class _Options:
    meta: Mapping[str, Any]
    conf: float | None
    iou: float | None
    max_det: int | None
    agnostic: bool | None
    classes: tuple[int, ...] | None
    top_k: int


class Predictor:
    """Runs a deployment's model on encoded images, with per-image errors."""

    def __init__(
        self,
        metadata: Mapping[str, Any],
        runtime: Runtime,
        *,
        max_image_bytes: int,
        max_image_pixels: int,
    ) -> None:
        self.metadata = dict(metadata)
        self.runtime = runtime
        self.task = str(self.metadata.get("task", ""))
        if self.task not in ("detect", "segment", "classify"):
            raise ValueError(f"metadata task {self.task!r} is not detect, segment or classify")
        if not runtime.inputs:
            raise ValueError("the model has no inputs")
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.class_names: tuple[str, ...] = tuple(self.metadata.get("class_names", ()))
        self._input = runtime.inputs[0]
        self._input_dtype = KSERVE_DTYPES.get(self._input.datatype, np.dtype(np.float32))
        shape = [int(d) for d in (self.metadata.get("input") or {}).get("shape", ())]
        self.dynamic_size = len(shape) == 4 and (shape[2] < 0 or shape[3] < 0)
        # Validate the metadata once, at load, rather than on every request.
        processing.preprocess([], self.metadata)

    @property
    def class_count(self) -> int:
        """How many classes the model scores (its names, else its output's width)."""
        if self.class_names:
            return len(self.class_names)
        shape = self.runtime.outputs[0].shape if self.runtime.outputs else ()
        if len(shape) >= 2 and shape[1] > 0:
            if self.task == "classify":
                return shape[1]
            if self.task == "detect" and not self.metadata.get("nms_in_graph", False):
                return shape[1] - 4
        return 0

    async def predict(
        self, images: Sequence[ImageInput], options: inference_pb2.PredictOptions
    ) -> inference_pb2.PredictResponse:
        resolved = self._resolve(options)
        response = inference_pb2.PredictResponse(task=self.task)
        results = [inference_pb2.ImageResult(key=image.key) for image in images]
        response.results.extend(results)
        results = list(response.results)  # the messages now held by the response

        start = time.perf_counter()
        prepared = await asyncio.gather(
            *(asyncio.to_thread(self._prepare, image, resolved.meta) for image in images)
        )
        preprocess_s = time.perf_counter() - start

        good: list[int] = []
        for index, (result, outcome) in enumerate(zip(results, prepared, strict=True)):
            if isinstance(outcome, inference_pb2.ImageError):
                result.error.CopyFrom(outcome)
            else:
                result.width = outcome.transform.orig_width
                result.height = outcome.transform.orig_height
                good.append(index)
        if not good:
            raise InvalidArgument(
                f"none of the {len(images)} images can be used",
                field_violations=[
                    FieldViolation(
                        field=result.error.field,
                        description=result.error.message,
                        reason=result.error.reason,
                    )
                    for result in results
                ],
            )

        chunk = max(1, self.runtime.max_batch_size)
        chunks = [good[i : i + chunk] for i in range(0, len(good), chunk)]
        timings = [Timing() for _ in chunks]
        postprocess_s = [0.0] * len(chunks)

        async def run_chunk(number: int, indices: list[int]) -> None:
            ready = [item for item in (prepared[i] for i in indices) if isinstance(item, _Prepared)]
            batch = np.concatenate([item.tensor for item in ready])
            outputs = await self.runtime.infer({self._input.name: batch}, timing=timings[number])
            began = time.perf_counter()
            ordered = [outputs[spec.name] for spec in self.runtime.outputs]
            transforms = [item.transform for item in ready]
            await asyncio.to_thread(
                self._postprocess, ordered, transforms, [results[i] for i in indices], resolved
            )
            postprocess_s[number] = time.perf_counter() - began

        await asyncio.gather(*(run_chunk(n, indices) for n, indices in enumerate(chunks)))
        # Chunks ran concurrently: the call waited as long as its slowest chunk did.
        response.timing.queue_ms = max(t.queue for t in timings) * 1000
        response.timing.inference_ms = max(t.compute for t in timings) * 1000
        response.timing.preprocess_ms = preprocess_s * 1000
        response.timing.postprocess_ms = max(postprocess_s) * 1000
        return response

    # --- options ---------------------------------------------------------------------

    def _resolve(self, options: inference_pb2.PredictOptions) -> _Options:
        meta: Mapping[str, Any] = self.metadata
        if options.HasField("imgsz"):
            size = options.imgsz
            if not self.dynamic_size:
                raise InvalidArgument.for_field(
                    "options.imgsz",
                    "the model was exported with a fixed input size "
                    f"{meta.get('input_height')}x{meta.get('input_width')}; imgsz needs an "
                    "export with dynamic_size",
                )
            if size < _IMGSZ_STRIDE or size % _IMGSZ_STRIDE:
                raise InvalidArgument.for_field(
                    "options.imgsz", f"must be a positive multiple of {_IMGSZ_STRIDE}, got {size}"
                )
            meta = {**self.metadata, "input_height": size, "input_width": size}
        for name in ("conf", "iou"):
            if options.HasField(name) and not 0.0 <= getattr(options, name) <= 1.0:
                raise InvalidArgument.for_field(f"options.{name}", "must be in [0, 1]")
        if options.HasField("max_det") and options.max_det < 1:
            raise InvalidArgument.for_field("options.max_det", "must be positive")
        if options.HasField("top_k") and options.top_k < 1:
            raise InvalidArgument.for_field("options.top_k", "must be positive")
        count = self.class_count
        classes: tuple[int, ...] | None = None
        if options.classes:
            bad = [c for c in options.classes if c < 0 or (count and c >= count)]
            if bad:
                raise InvalidArgument.for_field(
                    "options.classes",
                    f"class ids {bad} are not among the model's {count} classes (0-{count - 1})",
                )
            classes = tuple(options.classes)
        top_k = options.top_k if options.HasField("top_k") else DEFAULT_TOP_K
        return _Options(
            meta=meta,
            conf=options.conf if options.HasField("conf") else None,
            iou=options.iou if options.HasField("iou") else None,
            max_det=options.max_det if options.HasField("max_det") else None,
            agnostic=options.agnostic if options.HasField("agnostic") else None,
            classes=classes,
            top_k=min(top_k, count) if count else top_k,
        )

    # --- per image, on worker threads ------------------------------------------------

    def _prepare(
        self, image: ImageInput, meta: Mapping[str, Any]
    ) -> _Prepared | inference_pb2.ImageError:
        if image.error is not None:
            return image.error
        field = image.data_field
        data = image.data or b""
        if len(data) > self.max_image_bytes:
            return _error(
                field,
                "TOO_LARGE",
                f"{len(data)} bytes is over the limit of {self.max_image_bytes} bytes",
            )
        declared = _declared_size(data)
        if declared is None:
            return _error(
                field, "TOO_LARGE", "the image declares more pixels than a decoder will allocate"
            )
        if declared and declared[0] * declared[1] > self.max_image_pixels:
            return self._too_many_pixels(field, *declared)
        try:
            decoded = processing.decode_image(data)
        except ValueError as exc:
            return _error(field, "UNDECODABLE", str(exc))
        height, width = decoded.shape[:2]
        if height * width > self.max_image_pixels:
            return self._too_many_pixels(field, width, height)
        tensor, (transform,) = processing.preprocess([decoded], meta)
        return _Prepared(tensor=tensor.astype(self._input_dtype, copy=False), transform=transform)

    def _too_many_pixels(self, field: str, width: int, height: int) -> inference_pb2.ImageError:
        return _error(
            field,
            "TOO_LARGE",
            f"{width}x{height} pixels is over the limit of {self.max_image_pixels} pixels",
        )

    def _postprocess(
        self,
        outputs: list[Tensor],
        transforms: list[processing.Transform],
        results: list[inference_pb2.ImageResult],
        options: _Options,
    ) -> None:
        if self.task == "classify":
            ranked = processing.classifications(outputs, options.meta, top_k=options.top_k)
            for result, top in zip(results, ranked, strict=True):
                result.classifications.extend(
                    inference_pb2.Classification(
                        class_id=class_id, class_name=self._name(class_id), score=score
                    )
                    for class_id, score in top
                )
            return
        nms: dict[str, Any] = {
            "conf": options.conf,
            "iou": options.iou,
            "max_det": options.max_det,
            "agnostic": options.agnostic,
            "classes": options.classes,
        }
        if self.task == "segment":
            found = processing.segment_polygons(outputs, transforms, options.meta, **nms)
        else:
            found = [
                (boxes, [])
                for boxes in processing.detections(outputs, transforms, options.meta, **nms)
            ]
        for result, (boxes, polygons) in zip(results, found, strict=True):
            for i, row in enumerate(boxes):
                class_id = int(row[5])
                detection = result.detections.add(
                    class_id=class_id,
                    class_name=self._name(class_id),
                    score=float(row[4]),
                    box=inference_pb2.Box(
                        x1=float(row[0]), y1=float(row[1]), x2=float(row[2]), y2=float(row[3])
                    ),
                )
                if polygons:
                    detection.polygon.extend(
                        inference_pb2.Point(x=float(x), y=float(y)) for x, y in polygons[i]
                    )

    def _name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else ""


def _error(field: str, reason: str, message: str) -> inference_pb2.ImageError:
    return inference_pb2.ImageError(field=field, reason=reason, message=message)


def _declared_size(data: bytes) -> tuple[int, int] | tuple[()] | None:
    """(width, height) from the image header, without decoding the pixels.

    A small file can declare a huge image (a decompression bomb): its size is refused
    before a decoder allocates the pixels. () when Pillow cannot read the header (the
    decoder then judges the bytes), None when Pillow itself refuses it as a bomb.
    """
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            width, height = opened.size
    except PILImage.DecompressionBombError:
        return None
    except Exception:  # Pillow raises many kinds on bytes it cannot read
        return ()
    return int(width), int(height)
