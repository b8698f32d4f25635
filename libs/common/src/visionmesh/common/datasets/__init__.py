"""Datasets shared by the gateway and the workers: the manifest format and the local cache.

The gateway writes a `DatasetManifest` when it finalizes an upload; workers materialise a
snapshot with `DatasetCache` and build their training configuration from the manifest.
"""

from __future__ import annotations

from visionmesh.common.datasets._cache import (
    MAX_MANIFEST_BYTES,
    CappedDownload,
    DatasetCache,
    MaterialisedDataset,
    download_capped,
)
from visionmesh.common.datasets._manifest import (
    MANIFEST_VERSION,
    SPLIT_NAMES,
    DataError,
    DatasetFormatName,
    DatasetManifest,
    ManifestError,
    ManifestFile,
    ManifestSplit,
    is_sha256,
    label_dir,
)

__all__ = [
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "SPLIT_NAMES",
    "CappedDownload",
    "DataError",
    "DatasetCache",
    "DatasetFormatName",
    "DatasetManifest",
    "ManifestError",
    "ManifestFile",
    "ManifestSplit",
    "MaterialisedDataset",
    "download_capped",
    "is_sha256",
    "label_dir",
]
