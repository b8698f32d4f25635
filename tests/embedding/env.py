"""An EmbeddingCore over real parts, for tests: SQLite with the service's migrations, a
vector store (Qdrant Edge in a temp dir, or qdrant-client local mode), a tiny random-init
DINOv2 saved with save_pretrained, and a torchvision backbone from a registry checkpoint."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import torch
from visionmesh.common.auth import Principal
from visionmesh.common.db import Database, run_migrations
from visionmesh.common.errors import NotFound
from visionmesh.common.storage import ObjectStore
from visionmesh.embedding.core.collections import CollectionStore
from visionmesh.embedding.core.edge_store import EdgeStore
from visionmesh.embedding.core.provider import (
    BackboneCheckpoint,
    EmbedderProvider,
    ResolveBackbone,
)
from visionmesh.embedding.core.qdrant_store import QdrantStore
from visionmesh.embedding.core.service import Detect, EmbeddingCore
from visionmesh.embedding.core.vector_store import VectorStore
from visionmesh.embedding.db import MIGRATIONS

from tests.models import classifier_checkpoint

DINOV2 = "dinov2_tiny"
BACKBONE_VERSION = "resnet-1"
"""The model version id tenant A's registry holds (a torchvision resnet18 classifier)."""


def principal(tenant: str) -> Principal:
    return Principal(subject=f"user-{tenant}", tenant_id=tenant, role="member", kind="user")


TENANT_A = principal("tenant-a")
TENANT_B = principal("tenant-b")


def save_dinov2(root: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=224,
    )
    Dinov2Model(config).save_pretrained(root / DINOV2)
    return root


def backbone_resolver(checkpoint: Path) -> ResolveBackbone:
    """Tenant A's registry: one classification model version; anything else is NotFound."""

    async def resolve(tenant_id: str, model_version_id: str) -> BackboneCheckpoint:
        if tenant_id != TENANT_A.tenant_id or model_version_id != BACKBONE_VERSION:
            raise NotFound(resource_type="model version", resource_id=model_version_id)
        return BackboneCheckpoint(path=checkpoint, framework="torchvision", imgsz=0)

    return resolve


def models_dir(root: Path) -> tuple[Path, Path]:
    """(DINOv2 root, backbone checkpoint), written once per module."""
    torch.manual_seed(0)
    return save_dinov2(root / "dinov2"), classifier_checkpoint(root / "resnet.pt")


@contextlib.asynccontextmanager
async def running_core(
    tmp: Path,
    models: tuple[Path, Path],
    *,
    store: str = "edge",
    objects: ObjectStore | None = None,
    detect: Detect | None = None,
    provider: EmbedderProvider | None = None,
) -> AsyncIterator[tuple[EmbeddingCore, VectorStore]]:
    url = f"sqlite:///{tmp / 'embedding.db'}"
    await run_migrations(database_url=url, script_location=MIGRATIONS)
    database = Database(url)
    vectors: VectorStore = EdgeStore(tmp / "edge") if store == "edge" else QdrantStore.local()
    dinov2_root, checkpoint = models
    core = EmbeddingCore(
        collections=CollectionStore(database),
        vectors=vectors,
        embedders=provider
        or EmbedderProvider(
            dinov2_root=dinov2_root,
            resolve_backbone=backbone_resolver(checkpoint),
            device="cpu",
            batch_size=8,
        ),
        objects=objects,
        detect=detect,
    )
    try:
        yield core, vectors
    finally:
        await vectors.close()
        await database.dispose()
