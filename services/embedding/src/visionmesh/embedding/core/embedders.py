"""The embedder interface, the batched torch forward behind every embedder, and capabilities.

An embedder turns H x W x 3 uint8 RGB images into one float32 vector each. Preprocessing
(resize, crop, normalisation) runs on the CPU with numpy and Pillow, exactly as the model
saw images when it was evaluated; the forward runs batched on the chosen device, under
fp16 autocast on CUDA.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from visionmesh.common.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import torch

__all__ = [
    "Embedder",
    "EmbedderInfo",
    "Family",
    "TorchEmbedder",
    "capabilities",
    "check_images",
    "resolve_device",
]

Family = Literal["dinov2", "backbone"]
Image = npt.NDArray[np.uint8]
Vectors = npt.NDArray[np.float32]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:(\d+))?)$")


@dataclass(frozen=True)
class EmbedderInfo:
    """What GetCapabilities says about one embedder (`EmbeddingModel` in embedding.proto)."""

    name: str
    dim: int
    family: Family
    imgsz: int
    description: str
    model_version_id: str = ""
    """The registered model version behind a backbone; empty for DINOv2."""


@runtime_checkable
class Embedder(Protocol):
    """Images to vectors with one model."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def family(self) -> Family: ...

    @property
    def imgsz(self) -> int: ...

    @property
    def model_version_id(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def info(self) -> EmbedderInfo: ...

    def embed(self, images: Sequence[Image], *, normalize: bool = True) -> Vectors:
        """(N, dim) float32 vectors of N H x W x 3 uint8 RGB images, L2-normalised by default."""
        ...


def resolve_device(device: str) -> torch.device:
    """The torch device of a setting: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".

    FailedPrecondition naming `device` when the setting is malformed or asks for a GPU that
    this machine does not have.
    """
    import torch

    match = _DEVICE.match(device or "auto")
    if match is None:
        raise FailedPrecondition.for_field(
            "device", f"{device!r} is not one of auto, cpu, cuda, cuda:N"
        )
    kind = match.group(1)
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FailedPrecondition.for_field(
            "device", f"{device!r} asks for CUDA, which torch cannot use on this machine"
        )
    index = int(match.group(3) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise FailedPrecondition.for_field(
            "device", f"{device!r} asks for GPU {index}; this machine has {count}"
        )
    return torch.device("cuda", index)


def check_images(images: Sequence[Image]) -> None:
    """InvalidArgument naming `images[i]` for anything that is not H x W x 3 uint8 RGB."""
    for index, image in enumerate(images):
        field = f"images[{index}]"
        if not isinstance(image, np.ndarray):
            raise InvalidArgument.for_field(
                field, f"is a {type(image).__name__}, not a numpy array"
            )
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidArgument.for_field(
                field, f"must be H x W x 3 uint8 RGB, got {image.dtype} of shape {image.shape}"
            )
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise InvalidArgument.for_field(field, f"is empty: shape {image.shape}")


class TorchEmbedder:
    """A torch module whose output is the embedding, run in batches on one device.

    Subclasses give the module (eval mode, on the CPU), its output size, and the CPU
    preprocessing to NCHW float32; this class owns devices, batching, AMP and normalisation.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        name: str,
        dim: int,
        family: Family,
        imgsz: int,
        description: str,
        model_version_id: str = "",
        device: str = "auto",
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise FailedPrecondition.for_field("batch_size", f"must be positive, got {batch_size}")
        self._device = resolve_device(device)
        self._module = module.float().eval().to(self._device)
        self._info = EmbedderInfo(
            name=name,
            dim=dim,
            family=family,
            imgsz=imgsz,
            description=description,
            model_version_id=model_version_id,
        )
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def dim(self) -> int:
        return self._info.dim

    @property
    def family(self) -> Family:
        return self._info.family

    @property
    def imgsz(self) -> int:
        return self._info.imgsz

    @property
    def model_version_id(self) -> str:
        return self._info.model_version_id

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def info(self) -> EmbedderInfo:
        return self._info

    @property
    def module(self) -> torch.nn.Module:
        """The torch module whose (N, dim) output is the raw embedding, on `device`."""
        return self._module

    def preprocess(self, images: Sequence[Image]) -> npt.NDArray[np.float32]:
        """N x 3 x H x W float32 model input of checked RGB images, computed on the CPU."""
        raise NotImplementedError

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """The (n, dim) embedding of a model-input batch on the device; override if needed."""
        out: torch.Tensor = self._module(batch)
        return out

    def embed(self, images: Sequence[Image], *, normalize: bool = True) -> Vectors:
        """(N, dim) float32 vectors, L2-normalised unless `normalize` is False."""
        import torch

        check_images(images)
        chunks: list[Vectors] = []
        on_cuda = self._device.type == "cuda"
        for start in range(0, len(images), self.batch_size):
            pixels = torch.from_numpy(self.preprocess(images[start : start + self.batch_size]))
            with (
                torch.inference_mode(),
                torch.autocast(device_type="cuda", dtype=torch.float16, enabled=on_cuda),
            ):
                features = self._features(pixels.to(self._device, non_blocking=True))
            # Normalising in float32: an fp16 sum of squares of a wide vector can overflow.
            features = features.float()
            if normalize:
                features = torch.nn.functional.normalize(features, dim=1)
            chunks.append(features.cpu().numpy().astype(np.float32, copy=False))
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.concatenate(chunks)
        if vectors.shape[1] != self.dim:
            raise RuntimeError(
                f"embedder {self.name} gave {vectors.shape[1]}-d vectors, expected {self.dim}"
            )
        return vectors


def capabilities(
    embedders: Iterable[Embedder | EmbedderInfo], *, dinov2_root: Path | None = None
) -> list[EmbedderInfo]:
    """Every embedder this deployment offers, for GetCapabilities: DINOv2 first, by name.

    `embedders` are the loaded (or described) ones; DINOv2 models found under `dinov2_root`
    are listed from their config.json without loading their weights. A name given both ways
    is listed once, as given in `embedders`.
    """
    from visionmesh.embedding.core.dinov2 import describe_dinov2, discover_dinov2

    listed: dict[str, EmbedderInfo] = {}
    for item in embedders:
        info = item if isinstance(item, EmbedderInfo) else item.info
        listed.setdefault(info.name, info)
    if dinov2_root is not None:
        for name, path in discover_dinov2(dinov2_root).items():
            if name not in listed:
                listed[name] = describe_dinov2(name, path)
    return sorted(listed.values(), key=lambda info: (info.family != "dinov2", info.name))
