"""Datasets shared by the gateway and the workers: the manifest format and the local cache.

The gateway writes a `DatasetManifest` when it finalizes an upload; workers materialise a
snapshot with `DatasetCache` and build their training configuration (or, for a product
catalogue, their embedding work) from the manifest.
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
    CATALOG_IMAGES_DIR,
    MANIFEST_VERSION,
    MAX_METADATA_BYTES,
    MAX_PRODUCT_ID_BYTES,
    SPLIT_NAMES,
    SUPPORTED_MANIFEST_VERSIONS,
    DataError,
    DatasetFormatName,
    DatasetManifest,
    ManifestError,
    ManifestFile,
    ManifestProduct,
    ManifestSplit,
    is_sha256,
    label_dir,
    metadata_problem,
    product_id_problem,
)

__all__ = [
    "CATALOG_IMAGES_DIR",
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_PRODUCT_ID_BYTES",
    "SPLIT_NAMES",
    "SUPPORTED_MANIFEST_VERSIONS",
    "CappedDownload",
    "DataError",
    "DatasetCache",
    "DatasetFormatName",
    "DatasetManifest",
    "ManifestError",
    "ManifestFile",
    "ManifestProduct",
    "ManifestSplit",
    "MaterialisedDataset",
    "download_capped",
    "is_sha256",
    "label_dir",
    "metadata_problem",
    "product_id_problem",
]
