"""Embedding jobs: a source's images embedded into collections on the shared job runtime."""

from visionmesh.embedding.worker.handler import CHUNK, EmbeddingHandler, OpenEmbedder, progress_key
from visionmesh.embedding.worker.routing import Collections, NewCollection, Route, Target, route
from visionmesh.embedding.worker.sources import SourceItem

__all__ = [
    "CHUNK",
    "Collections",
    "EmbeddingHandler",
    "NewCollection",
    "OpenEmbedder",
    "Route",
    "SourceItem",
    "Target",
    "progress_key",
    "route",
]
