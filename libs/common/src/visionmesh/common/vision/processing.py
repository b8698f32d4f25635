"""Image pre- and post-processing for exported vision models, driven by their metadata.

The metadata is the JSON form of `visionmesh.export.v1.ModelMetadata` with the proto's field
names, as a plain dict. Each step reproduces the framework the model was trained with, so an
exported model sees the tensors its training code would have given it:

- "letterbox": Ultralytics' `LetterBox` as its predictor applies it to a fixed-size model;
- "center_crop": Ultralytics' `classify_transforms`;
- "resize": torchvision's `Resize((h, w), antialias=True)` on a PIL image;
- "yolo_detect" / "yolo_segment": Ultralytics' `non_max_suppression` and `scale_boxes`.

This file imports only the standard library, numpy (1.26 and 2.x), OpenCV and Pillow: it is
copied verbatim next to Triton Python-backend models, whose environment has no visionmesh.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "Transform",
    "classifications",
    "decode_image",
    "detections",
    "instance_masks",
    "preprocess",
    "segment_detections",
    "segment_polygons",
]

Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

RESIZE_MODES = ("letterbox", "resize", "center_crop")
CHANNEL_ORDERS = ("rgb", "bgr")
DETECT_POSTPROCESS = ("yolo_detect", "yolo_segment")
CLASSIFY_POSTPROCESS = ("probabilities", "logits")

# Ultralytics' non_max_suppression: boxes of different classes are shifted this far apart so
# one class-agnostic NMS keeps classes apart, and at most this many candidates enter it.
_CLASS_OFFSET = 7680
_MAX_NMS_CANDIDATES = 30000


@dataclass(frozen=True)
class Transform:
    """How one original image became model input, to map boxes back onto the original.

    The whole original (orig_height x orig_width) was resized to resized_height x
    resized_width and placed with its top-left corner at (pad_x, pad_y) of the model input:
    positive offsets are letterbox padding, negative ones the part a centre crop cut off.
    All fields are integers, so the float32 tensor of `to_list` carries them exactly.
    """

    SIZE: ClassVar[int] = 6

    orig_height: int
    orig_width: int
    resized_height: int
    resized_width: int
    pad_x: int
    pad_y: int

    @property
    def gain_x(self) -> float:
        return self.resized_width / self.orig_width

    @property
    def gain_y(self) -> float:
        return self.resized_height / self.orig_height

    def to_list(self) -> list[float]:
        return [
            float(self.orig_height),
            float(self.orig_width),
            float(self.resized_height),
            float(self.resized_width),
            float(self.pad_x),
            float(self.pad_y),
        ]

    @classmethod
    def from_list(cls, values: Sequence[float] | npt.NDArray[Any]) -> Transform:
        flat = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
        if len(flat) != cls.SIZE:
            raise ValueError(f"a Transform has {cls.SIZE} values, got {len(flat)}")
        h, w, rh, rw, px, py = (round(v) for v in flat)
        if min(h, w, rh, rw) < 1:
            raise ValueError(f"a Transform needs positive sizes, got {flat}")
        return cls(
            orig_height=h, orig_width=w, resized_height=rh, resized_width=rw, pad_x=px, pad_y=py
        )


# --- decoding -----------------------------------------------------------------------------


def decode_image(data: bytes) -> Image:
    """Decode an encoded image into H x W x 3 uint8 RGB, upright.

    OpenCV decodes first, as Ultralytics' loader does (it applies EXIF orientation, drops
    alpha, expands grayscale and palettes, and scales 16-bit samples to 8 bits); Pillow
    decodes what OpenCV cannot (e.g. AVIF), with the EXIF orientation applied as Ultralytics'
    Pillow fallback does. Raises ValueError when neither can decode the bytes.
    """
    if not data:
        raise ValueError("cannot decode an image from empty bytes")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    if bgr is not None and bgr.size:
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return _decode_with_pillow(data)


def _decode_with_pillow(data: bytes) -> Image:
    # Pillow is imported only where it is needed (formats OpenCV lacks, the PIL resize modes):
    # the visionmesh-common[vision] extra installs numpy and OpenCV alone.
    from PIL import Image as PILImage
    from PIL import ImageOps

    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            upright = ImageOps.exif_transpose(opened)
            rgb = np.asarray(upright.convert("RGB"), dtype=np.uint8)
    # Any error: Pillow's plugins raise many kinds on hostile bytes, and in a process that
    # imported Ultralytics, Image.open is its wrapper, which raises ModuleNotFoundError when
    # its HEIF plugin is missing.
    except Exception as exc:
        raise ValueError(
            f"cannot decode an image from {len(data)} bytes (starting {data[:8]!r}): "
            "not a format OpenCV or Pillow can read"
        ) from exc
    if rgb.ndim != 3 or not rgb.size:
        raise ValueError(f"decoded image has an unusable shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


# --- metadata -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Preprocessing:
    height: int
    width: int
    channel_order: str
    resize: str
    pad_value: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> _Preprocessing:
        height, width = _input_size(meta)
        resize = str(meta.get("resize", ""))
        if resize not in RESIZE_MODES:
            raise ValueError(f"metadata resize {resize!r} is not one of {RESIZE_MODES}")
        channel_order = str(meta.get("channel_order", "")).lower()
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(
                f"metadata channel_order {channel_order!r} is not one of {CHANNEL_ORDERS}"
            )
        scale = float(meta.get("scale", 0.0))
        if not scale > 0:
            raise ValueError(f"metadata scale must be positive, got {scale}")
        mean = tuple(float(v) for v in meta.get("mean", ()))
        std = tuple(float(v) for v in meta.get("std", ()))
        for name, values in (("mean", mean), ("std", std)):
            if values and len(values) != 3:
                raise ValueError(f"metadata {name} needs 3 values (or none), got {len(values)}")
        if any(v == 0 for v in std):
            raise ValueError(f"metadata std has a zero: {std}")
        pad_value = int(meta.get("pad_value", 0))
        if not 0 <= pad_value <= 255:
            raise ValueError(f"metadata pad_value must be in [0, 255], got {pad_value}")
        return cls(
            height=height,
            width=width,
            channel_order=channel_order,
            resize=resize,
            pad_value=pad_value,
            scale=scale,
            mean=mean,
            std=std,
        )


def _input_size(meta: Mapping[str, Any]) -> tuple[int, int]:
    height, width = int(meta.get("input_height", 0)), int(meta.get("input_width", 0))
    if height > 0 and width > 0:
        return height, width
    shape = [int(d) for d in (meta.get("input") or {}).get("shape", ())]
    if len(shape) == 4 and shape[2] > 0 and shape[3] > 0:
        return shape[2], shape[3]
    raise ValueError("metadata has no input size: input_height/input_width are unset")


# --- preprocessing ------------------------------------------------------------------------


def preprocess(
    images: Sequence[Image], meta: Mapping[str, Any]
) -> tuple[FloatArray, list[Transform]]:
    """Turn H x W x 3 uint8 RGB images into the model's float32 NCHW input batch.

    Returns the batch and, per image, the Transform that maps model-input coordinates back.
    """
    pre = _Preprocessing.from_meta(meta)
    resized: list[Image] = []
    transforms: list[Transform] = []
    for index, image in enumerate(images):
        _check_image(image, index)
        image = np.ascontiguousarray(image)  # OpenCV rejects views such as image[..., ::-1]
        if pre.resize == "letterbox":
            out, transform = _letterbox(image, pre.height, pre.width, pre.pad_value)
        elif pre.resize == "center_crop":
            out, transform = _center_crop(image, pre.height, pre.width)
        else:
            out, transform = _stretch(image, pre.height, pre.width)
        resized.append(out)
        transforms.append(transform)
    if not resized:
        return np.zeros((0, 3, pre.height, pre.width), dtype=np.float32), []
    return _normalise(np.stack(resized), pre), transforms


def _check_image(image: Image, index: int) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index} is a {type(image).__name__}, not a numpy array")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image {index} must be H x W x 3 uint8 RGB, got {image.dtype} of shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {index} is empty: shape {image.shape}")


def _letterbox(image: Image, height: int, width: int, pad_value: int) -> tuple[Image, Transform]:
    """Ultralytics' LetterBox(auto=False, scale_fill=False, scaleup=True, center=True).

    Its bilinear resize and constant padding treat channels alike, so running it on RGB gives
    the pixels Ultralytics gets from its BGR image, channels swapped.
    """
    orig_h, orig_w = image.shape[:2]
    ratio = min(height / orig_h, width / orig_w)
    new_w, new_h = max(round(orig_w * ratio), 1), max(round(orig_h * ratio), 1)
    half_dw, half_dh = (width - new_w) / 2, (height - new_h) / 2
    # Ultralytics' rounding: an odd padding puts the extra pixel at the bottom and right.
    top, bottom = round(half_dh - 0.1), round(half_dh + 0.1)
    left, right = round(half_dw - 0.1), round(half_dw + 0.1)
    if (orig_w, orig_h) != (new_w, new_h):
        image = np.asarray(
            cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )
    padded = np.asarray(
        cv2.copyMakeBorder(
            image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
        ),
        dtype=np.uint8,
    )
    transform = Transform(
        orig_height=orig_h,
        orig_width=orig_w,
        resized_height=new_h,
        resized_width=new_w,
        pad_x=left,
        pad_y=top,
    )
    return padded, transform


def _center_crop(image: Image, height: int, width: int) -> tuple[Image, Transform]:
    """Ultralytics' classify_transforms: torchvision Resize then CenterCrop on a PIL image.

    A square target resizes the short side (torchvision's Resize(int)); a non-square one is
    resized to exactly (height, width), as classify_transforms does, and the crop is a no-op.
    """
    orig_h, orig_w = image.shape[:2]
    if height == width:
        short, long = (orig_w, orig_h) if orig_w <= orig_h else (orig_h, orig_w)
        new_short, new_long = height, int(height * long / short)
        new_w, new_h = (new_short, new_long) if orig_w <= orig_h else (new_long, new_short)
    else:
        new_h, new_w = height, width
    resized = _pil_bilinear(image, new_h, new_w)
    top = round((new_h - height) / 2.0)
    left = round((new_w - width) / 2.0)
    cropped = np.ascontiguousarray(resized[top : top + height, left : left + width])
    transform = Transform(
        orig_height=orig_h,
        orig_width=orig_w,
        resized_height=new_h,
        resized_width=new_w,
        pad_x=-left,
        pad_y=-top,
    )
    return cropped, transform


def _stretch(image: Image, height: int, width: int) -> tuple[Image, Transform]:
    """torchvision's Resize((height, width), antialias=True) on a PIL RGB image."""
    orig_h, orig_w = image.shape[:2]
    transform = Transform(
        orig_height=orig_h,
        orig_width=orig_w,
        resized_height=height,
        resized_width=width,
        pad_x=0,
        pad_y=0,
    )
    return _pil_bilinear(image, height, width), transform


def _pil_bilinear(image: Image, height: int, width: int) -> Image:
    """Pillow's antialiased bilinear resize: what torchvision's Resize does to a PIL image."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image as PILImage

    resized = PILImage.fromarray(image).resize((width, height), PILImage.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _normalise(batch: npt.NDArray[np.uint8], pre: _Preprocessing) -> FloatArray:
    """N x H x W x 3 uint8 RGB -> N x 3 x H x W float32: scale, mean, std, in channel order."""
    if pre.channel_order == "bgr":
        batch = batch[..., ::-1]
    x = batch.transpose(0, 3, 1, 2).astype(np.float32)
    # Ultralytics and torchvision divide by 255; multiplying by float32(1/255) instead can
    # differ in the last bit.
    divide = abs(pre.scale * 255.0 - 1.0) < 1e-6
    x = x / np.float32(255.0) if divide else x * np.float32(pre.scale)
    if pre.mean:
        x = x - np.asarray(pre.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    if pre.std:
        x = x / np.asarray(pre.std, dtype=np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


# --- detection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _NmsOptions:
    conf: float
    iou: float
    max_det: int
    agnostic: bool
    classes: tuple[int, ...] | None

    @classmethod
    def resolve(
        cls,
        meta: Mapping[str, Any],
        *,
        conf: float | None,
        iou: float | None,
        max_det: int | None,
        agnostic: bool | None,
        classes: Sequence[int] | None,
    ) -> _NmsOptions:
        defaults = meta.get("nms") or {}
        options = cls(
            conf=float(defaults.get("conf", 0.0) if conf is None else conf),
            iou=float(defaults.get("iou", 0.0) if iou is None else iou),
            max_det=int(defaults.get("max_det", 0) if max_det is None else max_det),
            agnostic=bool(defaults.get("agnostic", False) if agnostic is None else agnostic),
            classes=None if classes is None else tuple(int(c) for c in classes),
        )
        if not 0.0 <= options.conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {options.conf}")
        if not 0.0 <= options.iou <= 1.0:
            raise ValueError(f"iou must be in [0, 1], got {options.iou}")
        if options.max_det < 1:
            raise ValueError(
                f"max_det must be positive, got {options.max_det} (metadata nms.max_det unset?)"
            )
        return options


def detections(
    outputs: Sequence[npt.NDArray[Any]],
    transforms: Sequence[Transform],
    meta: Mapping[str, Any],
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic: bool | None = None,
    classes: Sequence[int] | None = None,
) -> list[FloatArray]:
    """Per image, a (k, 6) float32 array of x1, y1, x2, y2, score, class, best first.

    Boxes are in original-image pixels, clipped to the image. `outputs` are the model's
    outputs in graph order; unset options take the metadata's nms defaults.
    """
    found = segment_detections(
        outputs,
        transforms,
        meta,
        conf=conf,
        iou=iou,
        max_det=max_det,
        agnostic=agnostic,
        classes=classes,
    )
    return [boxes for boxes, _ in found]


def segment_detections(
    outputs: Sequence[npt.NDArray[Any]],
    transforms: Sequence[Transform],
    meta: Mapping[str, Any],
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic: bool | None = None,
    classes: Sequence[int] | None = None,
) -> list[tuple[FloatArray, FloatArray]]:
    """As `detections`, with each detection's mask coefficients: per image (boxes, (k, m)).

    m is 0 for a detect model. Masks themselves (coefficients times the prototypes of the
    second output) are not built here.
    """
    postprocess = str(meta.get("postprocess", ""))
    if postprocess not in DETECT_POSTPROCESS:
        raise ValueError(f"metadata postprocess {postprocess!r} is not one of {DETECT_POSTPROCESS}")
    if not outputs:
        raise ValueError("no model outputs given")
    options = _NmsOptions.resolve(
        meta, conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, classes=classes
    )
    pred = np.asarray(outputs[0], dtype=np.float32)
    if pred.ndim != 3:
        raise ValueError(f"output0 must have 3 dimensions, got shape {pred.shape}")
    if pred.shape[0] != len(transforms):
        raise ValueError(f"output0 holds {pred.shape[0]} images but {len(transforms)} transforms")
    if meta.get("nms_in_graph", False):
        rows = [_filter_nms_rows(p, options) for p in pred]
    else:
        nc = _class_count(pred, outputs, meta, segment=postprocess == "yolo_segment")
        rows = [_nms_image(p, nc, options) for p in pred]
    return [
        (_to_original(r[:, :6], t), np.ascontiguousarray(r[:, 6:]))
        for r, t in zip(rows, transforms, strict=True)
    ]


def _class_count(
    pred: FloatArray,
    outputs: Sequence[npt.NDArray[Any]],
    meta: Mapping[str, Any],
    *,
    segment: bool,
) -> int:
    names = list(meta.get("class_names", ()))
    channels = pred.shape[1]
    if not segment:
        # Ultralytics infers nc from the output for detect models; the names must agree.
        nc = channels - 4
        if names and len(names) != nc:
            raise ValueError(f"output0 has {nc} class channels but the metadata {len(names)} names")
    elif names:
        nc = len(names)
    elif len(outputs) > 1 and np.ndim(outputs[1]) == 4:
        nc = channels - 4 - int(np.shape(outputs[1])[1])
    else:
        raise ValueError("a segment model needs class_names or its mask prototypes output")
    if nc < 1 or 4 + nc > channels:
        raise ValueError(f"output0 of shape {pred.shape} cannot hold {nc} classes")
    return nc


def _nms_image(pred: FloatArray, nc: int, options: _NmsOptions) -> FloatArray:
    """Ultralytics' non_max_suppression (multi_label=False) for one image's [4+nc+m, anchors].

    Returns (k, 6 + m) rows of x1, y1, x2, y2, score, class, extra channels.
    """
    x = pred.T  # anchors x channels
    class_scores = x[:, 4 : 4 + nc]
    score = class_scores.max(axis=1)
    keep = score > np.float32(options.conf)
    x, class_scores, score = x[keep], class_scores[keep], score[keep]
    if not len(x):
        return np.zeros((0, pred.shape[0] - nc + 2), dtype=np.float32)
    cls = class_scores.argmax(axis=1).astype(np.float32)
    rows = np.concatenate(
        (_xywh2xyxy(x[:, :4]), score[:, None], cls[:, None], x[:, 4 + nc :]), axis=1
    )
    if options.classes is not None:
        rows = rows[np.isin(rows[:, 5], np.asarray(options.classes, dtype=np.float32))]
    if len(rows) > _MAX_NMS_CANDIDATES:
        rows = rows[np.argsort(-rows[:, 4], kind="stable")[:_MAX_NMS_CANDIDATES]]
    offsets = rows[:, 5:6] * np.float32(0 if options.agnostic else _CLASS_OFFSET)
    kept = _greedy_nms(rows[:, :4] + offsets, rows[:, 4], options.iou, limit=options.max_det)
    return np.ascontiguousarray(rows[kept], dtype=np.float32)


def _xywh2xyxy(xywh: FloatArray) -> FloatArray:
    xy, half_wh = xywh[:, :2], xywh[:, 2:] / np.float32(2)
    return np.concatenate((xy - half_wh, xy + half_wh), axis=1)


def _greedy_nms(
    boxes: FloatArray, scores: FloatArray, iou_threshold: float, *, limit: int
) -> npt.NDArray[np.intp]:
    """torchvision.ops.nms, stopped after `limit` boxes, in the same float32 arithmetic.

    Greedy: the best remaining box is kept and every box overlapping it by IoU > threshold
    dropped. The first `limit` kept boxes do not depend on later ones, so stopping is exact.
    """
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, i]) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    remaining = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    zero = np.float32(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        while remaining.size and len(kept) < limit:
            i, rest = int(remaining[0]), remaining[1:]
            kept.append(i)
            width = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
            height = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
            inter = width * height
            iou = inter / (areas[i] + areas[rest] - inter)
            # torchvision compares the float IoU with the double threshold; NaN (two empty
            # boxes) suppresses nothing.
            remaining = rest[~(iou.astype(np.float64) > iou_threshold)]
    return np.asarray(kept, dtype=np.intp)


def _filter_nms_rows(pred: FloatArray, options: _NmsOptions) -> FloatArray:
    """Output of in-graph NMS ([max_det, 6 + m]): Ultralytics' end-to-end filtering."""
    if pred.ndim != 2 or pred.shape[1] < 6:
        raise ValueError(f"in-graph NMS output rows must have 6 values, got shape {pred.shape}")
    keep = pred[:, 4] > np.float32(options.conf)
    if options.classes is not None:
        keep &= np.isin(pred[:, 5], np.asarray(options.classes, dtype=np.float32))
    return np.ascontiguousarray(pred[keep][: options.max_det], dtype=np.float32)


def _to_original(rows: FloatArray, transform: Transform) -> FloatArray:
    """Ultralytics' scale_boxes(padding=True) and clip_boxes, in float32 like its tensors."""
    out = np.array(rows, dtype=np.float32)
    boxes = out[:, :4]
    boxes[:, [0, 2]] -= np.float32(transform.pad_x)
    boxes[:, [1, 3]] -= np.float32(transform.pad_y)
    boxes[:, [0, 2]] /= np.float32(transform.gain_x)
    boxes[:, [1, 3]] /= np.float32(transform.gain_y)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(np.float32(0), np.float32(transform.orig_width))
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(np.float32(0), np.float32(transform.orig_height))
    return out


# --- classification -----------------------------------------------------------------------


def classifications(
    outputs: Sequence[npt.NDArray[Any]], meta: Mapping[str, Any], *, top_k: int = 5
) -> list[list[tuple[int, float]]]:
    """Per image the top_k (class id, probability), most probable first, ties by lower id."""
    postprocess = str(meta.get("postprocess", ""))
    if postprocess not in CLASSIFY_POSTPROCESS:
        raise ValueError(
            f"metadata postprocess {postprocess!r} is not one of {CLASSIFY_POSTPROCESS}"
        )
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if not outputs:
        raise ValueError("no model outputs given")
    scores = np.asarray(outputs[0], dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"a classifier output must be [batch, classes], got {scores.shape}")
    probabilities = _softmax(scores) if postprocess == "logits" else scores
    results: list[list[tuple[int, float]]] = []
    for row in probabilities:
        # A stable sort of the negated values keeps equal probabilities in class-id order.
        order = np.argsort(-row, kind="stable")[:top_k]
        results.append([(int(c), float(row[c])) for c in order])
    return results


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    if not np.isfinite(result).all():
        raise ValueError("classifier logits are not finite")
    return result


# --- segmentation masks -------------------------------------------------------------------


def segment_polygons(
    outputs: Sequence[npt.NDArray[Any]],
    transforms: Sequence[Transform],
    meta: Mapping[str, Any],
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
    agnostic: bool | None = None,
    classes: Sequence[int] | None = None,
) -> list[tuple[FloatArray, list[FloatArray]]]:
    """Per image, detections with the outline of each one's mask: (boxes (k, 6), polygons).

    What Ultralytics' segment predict (retina_masks=False) and `Results.masks.xy` give:
    boxes as `detections` returns them, and per detection an (n, 2) float32 array of x, y
    points in original-image pixels. As Ultralytics does, a detection whose mask is empty
    inside its box is dropped. `outputs` are [detections, prototypes (N, m, mh, mw)].
    """
    if str(meta.get("postprocess", "")) != "yolo_segment":
        raise ValueError("segment_polygons needs a yolo_segment model")
    if len(outputs) < 2:
        raise ValueError("a segment model has two outputs: detections and mask prototypes")
    options = _NmsOptions.resolve(
        meta, conf=conf, iou=iou, max_det=max_det, agnostic=agnostic, classes=classes
    )
    pred = np.asarray(outputs[0], dtype=np.float32)
    protos = np.asarray(outputs[1], dtype=np.float32)
    if pred.ndim != 3 or protos.ndim != 4:
        raise ValueError(
            f"segment outputs must be [N, C, anchors] and [N, m, h, w], got {pred.shape} and "
            f"{protos.shape}"
        )
    if not pred.shape[0] == protos.shape[0] == len(transforms):
        raise ValueError(
            f"outputs hold {pred.shape[0]} and {protos.shape[0]} images, {len(transforms)} "
            "transforms"
        )
    input_size = _input_size(meta)
    results: list[tuple[FloatArray, list[FloatArray]]] = []
    for image_pred, image_protos, transform in zip(pred, protos, transforms, strict=True):
        if meta.get("nms_in_graph", False):
            rows = _filter_nms_rows(image_pred, options)
        else:
            nc = _class_count(pred, outputs, meta, segment=True)
            rows = _nms_image(image_pred, nc, options)
        masks = instance_masks(rows[:, 6:], image_protos, rows[:, :4], input_size)
        keep = masks.reshape(len(masks), -1).any(axis=1)
        rows, masks = rows[keep], masks[keep]
        polygons = [_outline(mask, transform) for mask in masks]
        results.append((_to_original(rows[:, :6], transform), polygons))
    return results


def instance_masks(
    coefficients: npt.NDArray[Any],
    prototypes: npt.NDArray[Any],
    boxes: npt.NDArray[Any],
    input_size: tuple[int, int],
) -> npt.NDArray[np.uint8]:
    """Binary (k, H, W) masks at model-input size: Ultralytics' process_mask(upsample=True).

    Each mask is its coefficients times the (m, mh, mw) prototypes, bilinearly upsampled to
    the input size (half-pixel centres, as torch's interpolate without align_corners),
    thresholded at 0 (sigmoid 0.5), and zeroed outside its box (x1, y1, x2, y2 in input
    pixels; a pixel column c is inside when x1 <= c < x2).
    """
    height, width = input_size
    count = len(coefficients)
    out = np.zeros((count, height, width), dtype=np.uint8)
    if not count:
        return out
    m, mh, mw = prototypes.shape
    logits = (
        np.asarray(coefficients, dtype=np.float32) @ prototypes.reshape(m, -1).astype(np.float32)
    ).reshape(count, mh, mw)
    columns = np.arange(width, dtype=np.float32)
    rows_ = np.arange(height, dtype=np.float32)
    for i in range(count):
        upsampled = cv2.resize(logits[i], (width, height), interpolation=cv2.INTER_LINEAR)
        x1, y1, x2, y2 = (np.float32(v) for v in boxes[i, :4])
        inside = ((rows_ >= y1) & (rows_ < y2))[:, None] & ((columns >= x1) & (columns < x2))[None]
        out[i] = (upsampled > 0) & inside
    return out


def _outline(mask: npt.NDArray[np.uint8], transform: Transform) -> FloatArray:
    """Ultralytics' masks2segments(strategy="all") then scale_coords, for one input-size mask."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), dtype=np.float32)
    if len(contours) == 1:
        points = contours[0].reshape(-1, 2)
    else:
        points = _join_contours([c.reshape(-1, 2) for c in contours])
    xy = points.astype(np.float32)
    xy[:, 0] -= np.float32(transform.pad_x)
    xy[:, 1] -= np.float32(transform.pad_y)
    xy[:, 0] /= np.float32(transform.gain_x)
    xy[:, 1] /= np.float32(transform.gain_y)
    xy[:, 0] = xy[:, 0].clip(0, transform.orig_width)
    xy[:, 1] = xy[:, 1].clip(0, transform.orig_height)
    return xy


def _join_contours(contours: list[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """One outline through several contours, as Ultralytics' merge_multi_segment draws it.

    Neighbouring contours (in findContours order) are linked at their closest pair of
    points; the path walks forward through each contour to its next link and returns
    through the remainders, so every contour is traced once and the links twice.
    """
    segments = [np.asarray(c) for c in contours]
    last = len(segments) - 1
    links: list[list[int]] = [[] for _ in segments]
    for i in range(1, len(segments)):
        a, b = segments[i - 1], segments[i]
        distances = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        near_a, near_b = np.unravel_index(int(np.argmin(distances)), distances.shape)
        links[i - 1].append(int(near_a))
        links[i].append(int(near_b))
    outward: list[npt.NDArray[Any]] = []
    for i, link in enumerate(links):
        segment = segments[i]
        if len(link) == 2 and link[0] > link[1]:
            link = [len(segment) - 1 - x for x in link]
            segment = segment[::-1]
        segment = np.roll(segment, -link[0], axis=0)
        segment = np.concatenate([segment, segment[:1]])
        segments[i] = segment
        outward.append(segment if i in (0, last) else segment[: link[1] - link[0] + 1])
    back = [segments[i][abs(links[i][1] - links[i][0]) :] for i in range(last - 1, 0, -1)]
    return np.concatenate(outward + back)
