"""Export packages as the export service publishes them, for the inference tests."""

from __future__ import annotations

import asyncio
import hashlib
import io

import numpy as np
from PIL import Image
from visionmesh.api.common.v1 import artifact_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.storage import ObjectStore
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.export.worker.handler import ExportHandler


async def publish_export(
    store: ObjectStore, package: ExportPackage, job_id: str, *, model_version_id: str = "mv-1"
) -> export_pb2.ExportResult:
    """Uploads a package under the job's prefix and returns the ExportResult the export
    worker would have announced for it (built by the worker's own code)."""
    prefix = f"jobs/{job_id}/"
    uploaded: dict[str, artifact_pb2.ArtifactRef] = {}
    for path in package.files():
        name = path.relative_to(package.root).as_posix()
        data = await asyncio.to_thread(path.read_bytes)
        ref = artifact_pb2.ArtifactRef(
            job_id=job_id,
            name=name,
            key=prefix + name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        await store.put_bytes(ref.key, data)
        uploaded[name] = ref
    result = ExportHandler._result(package, prefix, uploaded)
    result.model_version_id = model_version_id
    return result


def jpeg(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small random-content JPEG (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
