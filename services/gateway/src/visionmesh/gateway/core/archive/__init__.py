"""Dataset archive validation: zip safety, layout and data.yaml, labels, images, manifest.

`inspect_archive` validates an uploaded zip in place and describes it; its manifest is the
shared `visionmesh.common.datasets.DatasetManifest` that workers read.
"""

from __future__ import annotations

from visionmesh.common.datasets import MANIFEST_VERSION
from visionmesh.gateway.core.archive._inspect import (
    ArchiveReport,
    ManifestEntry,
    SplitReport,
    inspect_archive,
    iter_manifest,
    manifest_json,
)
from visionmesh.gateway.core.archive._layout import IMAGE_SUFFIXES, DatasetFormatName
from visionmesh.gateway.core.archive._violations import ARCHIVE_FIELD, MAX_VIOLATIONS, Reason

__all__ = [
    "ARCHIVE_FIELD",
    "IMAGE_SUFFIXES",
    "MANIFEST_VERSION",
    "MAX_VIOLATIONS",
    "ArchiveReport",
    "DatasetFormatName",
    "ManifestEntry",
    "Reason",
    "SplitReport",
    "inspect_archive",
    "iter_manifest",
    "manifest_json",
]
