"""Moved to `visionmesh.common.datasets`; this module only re-exports it until callers switch."""

from __future__ import annotations

from visionmesh.common.datasets import DataError, DatasetCache, MaterialisedDataset

__all__ = ["DataError", "DatasetCache", "MaterialisedDataset"]
