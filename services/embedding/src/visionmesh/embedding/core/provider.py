"""Embedders by name, loaded once and cached: DINOv2 from the models directory, and our
classifiers' backbones (`mv-<model_version_id>`) from the checkpoint the registry keeps.

A backbone belongs to the tenant that registered its model version: the resolver answers
for one tenant, and the cache is keyed by tenant too, so a tenant can never reach another
tenant's model by guessing its id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from visionmesh.common.errors import InvalidArgument, NotFound
from visionmesh.embedding.core.backbones import load_backbone
from visionmesh.embedding.core.dinov2 import describe_dinov2, discover_dinov2, load_dinov2
from visionmesh.embedding.core.embedders import Embedder, EmbedderInfo

__all__ = [
    "BACKBONE_PREFIX",
    "BackboneCheckpoint",
    "EmbedderProvider",
    "ResolveBackbone",
    "backbone_name",
]

BACKBONE_PREFIX = "mv-"
"""A backbone embedder is named after its model version: `mv-<model_version_id>`."""


@dataclass(frozen=True)
class BackboneCheckpoint:
    """Where a model version's checkpoint lies on this machine, and how to read it."""

    path: Path
    framework: str
    """"torchvision" or "ultralytics"."""
    imgsz: int
    """The registry's input size; 0 takes the checkpoint's own."""


ResolveBackbone = Callable[[str, str], Awaitable[BackboneCheckpoint]]
"""(tenant_id, model_version_id) -> its local checkpoint. Raises NotFound when the tenant has
no such classification model version (the service wiring downloads from the object store)."""


def backbone_name(model_version_id: str) -> str:
    return f"{BACKBONE_PREFIX}{model_version_id}"


class EmbedderProvider:
    """Loads embedders on first use and keeps the most recently used ones in memory."""

    def __init__(
        self,
        *,
        dinov2_root: Path,
        resolve_backbone: ResolveBackbone | None = None,
        device: str = "auto",
        batch_size: int = 32,
        max_loaded: int = 4,
    ) -> None:
        self._root = dinov2_root
        self._resolve = resolve_backbone
        self._device = device
        self._batch_size = batch_size
        self._max_loaded = max(1, max_loaded)
        self._loaded: OrderedDict[tuple[str, str], Embedder] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    @property
    def dinov2_root(self) -> Path:
        return self._root

    def dinov2_models(self) -> list[EmbedderInfo]:
        """The DINOv2 models present, described from their configs without loading them."""
        return [describe_dinov2(name, path) for name, path in discover_dinov2(self._root).items()]

    async def get(self, name: str, *, tenant_id: str, field: str = "model") -> Embedder:
        """The embedder called `name` for `tenant_id`, loading it on first use.

        InvalidArgument naming `field` when no such model exists for the tenant.
        """
        key = self._cache_key(name, tenant_id, field)
        cached = self._loaded.get(key)
        if cached is not None:
            self._loaded.move_to_end(key)
            return cached
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._loaded.get(key)
            if cached is None:
                cached = await self._load(name, tenant_id, field)
                self._loaded[key] = cached
                while len(self._loaded) > self._max_loaded:
                    evicted, _ = self._loaded.popitem(last=False)
                    self._locks.pop(evicted, None)
            self._loaded.move_to_end(key)
            return cached

    async def describe(self, name: str, *, tenant_id: str, field: str = "model") -> EmbedderInfo:
        """An embedder's name, dimension and family; DINOv2 without loading its weights."""
        if not name.startswith(BACKBONE_PREFIX):
            found = discover_dinov2(self._root)
            if name in found:
                return describe_dinov2(name, found[name])
        return (await self.get(name, tenant_id=tenant_id, field=field)).info

    def _cache_key(self, name: str, tenant_id: str, field: str) -> tuple[str, str]:
        if name.startswith(BACKBONE_PREFIX) and len(name) > len(BACKBONE_PREFIX):
            return (tenant_id, name)
        if not name:
            raise InvalidArgument.for_field(field, "names no model")
        # DINOv2 weights are public models, shared by every tenant.
        return ("", name)

    async def _load(self, name: str, tenant_id: str, field: str) -> Embedder:
        if name.startswith(BACKBONE_PREFIX):
            return await self._load_backbone(name, tenant_id, field)
        found = discover_dinov2(self._root)
        if name not in found:
            present = ", ".join(sorted(found)) or "none"
            raise InvalidArgument.for_field(
                field,
                f"unknown embedding model {name!r} (DINOv2 models here: {present}; "
                f"backbones are named {BACKBONE_PREFIX}<model_version_id>)",
                reason="UNKNOWN_MODEL",
            )
        return await asyncio.to_thread(
            load_dinov2,
            found[name],
            name=name,
            device=self._device,
            batch_size=self._batch_size,
        )

    async def _load_backbone(self, name: str, tenant_id: str, field: str) -> Embedder:
        model_version_id = name[len(BACKBONE_PREFIX) :]
        if self._resolve is None:
            raise InvalidArgument.for_field(
                field, f"{name!r}: this deployment serves no backbones", reason="UNKNOWN_MODEL"
            )
        try:
            checkpoint = await self._resolve(tenant_id, model_version_id)
        except NotFound as exc:
            raise InvalidArgument.for_field(
                field,
                f"{name!r}: no classification model version {model_version_id!r} in your tenant",
                reason="UNKNOWN_MODEL",
            ) from exc
        return await asyncio.to_thread(
            load_backbone,
            checkpoint.path,
            framework=checkpoint.framework,
            name=name,
            model_version_id=model_version_id,
            imgsz=checkpoint.imgsz or None,
            device=self._device,
            batch_size=self._batch_size,
        )
