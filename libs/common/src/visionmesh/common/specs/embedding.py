"""What the gateway and the embedding service agree on about backbones. Torch-free."""

from __future__ import annotations

__all__ = ["BACKBONE_MODEL_PREFIX", "RESOLVED_BACKBONE_SCOPE", "backbone_model_version_id"]

BACKBONE_MODEL_PREFIX = "mv-"
"""A registered classification model version as an embedding model: `mv-<model_version_id>`."""

RESOLVED_BACKBONE_SCOPE = "gateway:resolved-backbone"
"""Scope of a gateway-minted delegated token whose call carries a ResolvedBackbone the gateway
resolved within the caller's tenant (CreateCollectionRequest.backbone, EmbedRequest.backbone,
EmbeddingJobSpec.backbone). The embedding service accepts a given backbone only with it;
user-issued tokens never carry "gateway:" scopes."""


def backbone_model_version_id(model: str) -> str:
    """The model version an `mv-<id>` model names; empty for any other model (DINOv2...)."""
    if model.startswith(BACKBONE_MODEL_PREFIX):
        return model[len(BACKBONE_MODEL_PREFIX) :]
    return ""
