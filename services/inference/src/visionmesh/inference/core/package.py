"""An export's files on local disk: what a runtime loads.

Packages are cached per export job (its files never change once announced), downloaded into
a temporary directory and renamed into place, so a crash midway never leaves a half package
that a later load would trust. Every file's SHA-256 is checked against the export's record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from visionmesh.api.common.v1 import artifact_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.common.errors import FailedPrecondition, InvalidArgument
from visionmesh.common.storage import ObjectStore

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
TENSORRT_SUFFIX = "-trt"
"""The export names its TensorRT model `<model>-trt` in the Triton repository."""
_PACKAGE_DONE = "package.json"


@dataclass(frozen=True)
class Package:
    """One export, unpacked."""

    export_job_id: str
    directory: Path
    onnx_path: Path
    metadata: dict[str, Any]
    """ModelMetadata as a snake_case dict (what the processing code reads)."""
    model_name: str
    """The exported model's name in its Triton repository."""
    repository_dir: Path
    """The unzipped Triton model repository."""
    triton_config: dict[str, Any]
    """The model's config.pbtxt as Triton's JSON model config (proto field names)."""
    has_tensorrt: bool = False
    """The repository holds the export's TensorRT engine as `<model_name>-trt`."""


def metadata_dict(metadata: export_pb2.ModelMetadata) -> dict[str, Any]:
    """ModelMetadata in the form visionmesh.common.vision.processing reads."""
    return json_format.MessageToDict(
        metadata, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def check_export(export: export_pb2.ExportResult, *, field: str = "export") -> None:
    """Refuses an export result a runtime could not load, naming what is missing."""
    if not export.onnx.key:
        raise InvalidArgument.for_field(f"{field}.onnx", "the export has no ONNX model")
    if not export.triton_repository_zip.key:
        raise InvalidArgument.for_field(
            f"{field}.triton_repository_zip", "the export has no Triton repository"
        )
    if not export.metadata.task:
        raise InvalidArgument.for_field(f"{field}.metadata", "the export has no model metadata")
    if not any(model.platform == ONNX_PLATFORM for model in export.triton_models):
        raise InvalidArgument.for_field(
            f"{field}.triton_models", f"the export has no {ONNX_PLATFORM} model"
        )


class PackageCache:
    """Export packages under `root/<export job id>/`, fetched once per process."""

    def __init__(self, *, root: Path, store: ObjectStore) -> None:
        self._root = root
        self._store = store
        self._locks: dict[str, asyncio.Lock] = {}

    async def fetch(self, export: export_pb2.ExportResult, *, export_job_id: str) -> Package:
        check_export(export)
        if not export_job_id or "/" in export_job_id or export_job_id.startswith("."):
            raise InvalidArgument.for_field("export_job_id", "not an export job id")
        lock = self._locks.setdefault(export_job_id, asyncio.Lock())
        async with lock:
            directory = self._root / export_job_id
            if not (directory / _PACKAGE_DONE).exists():
                await self._download(export, directory)
        return _open(export, export_job_id, directory)

    async def _download(self, export: export_pb2.ExportResult, directory: Path) -> None:
        staging = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            await self._get(export.onnx, staging / "model.onnx")
            archive = staging / "triton.zip"
            await self._get(export.triton_repository_zip, archive)
            await asyncio.to_thread(_unzip, archive, staging / "triton")
            (staging / _PACKAGE_DONE).write_text(
                json.dumps({"onnx": export.onnx.key, "zip": export.triton_repository_zip.key})
            )
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _get(self, ref: artifact_pb2.ArtifactRef, path: Path) -> None:
        await self._store.download_file(ref.key, path)
        if ref.sha256:
            digest = await asyncio.to_thread(_sha256, path)
            if digest != ref.sha256:
                raise FailedPrecondition(
                    f"{ref.name or ref.key} does not match its export record "
                    f"(sha256 {digest[:12]}..., recorded {ref.sha256[:12]}...)",
                    reason="PACKAGE_CORRUPT",
                )


def _open(export: export_pb2.ExportResult, export_job_id: str, directory: Path) -> Package:
    model_name = next(m.name for m in export.triton_models if m.platform == ONNX_PLATFORM)
    repository = directory / "triton"
    config_path = repository / model_name / "config.pbtxt"
    return Package(
        export_job_id=export_job_id,
        directory=directory,
        onnx_path=directory / "model.onnx",
        metadata=metadata_dict(export.metadata),
        model_name=model_name,
        repository_dir=repository,
        triton_config=triton_config_json(config_path.read_text()) if config_path.exists() else {},
        has_tensorrt=bool(export.tensorrt.key)
        and (repository / f"{model_name}{TENSORRT_SUFFIX}").is_dir(),
    )


def triton_config_json(pbtxt: str) -> dict[str, Any]:
    """A config.pbtxt as the JSON Triton's model-configuration extension answers with."""
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
    return json_format.MessageToDict(config, preserving_proto_field_name=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unzip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for member in bundle.infolist():
            # The export wrote this zip, but a path climbing out must never be extracted.
            path = (target / member.filename).resolve()
            if not path.is_relative_to(target.resolve()):
                raise FailedPrecondition(
                    f"the Triton repository zip holds a path outside it: {member.filename!r}",
                    reason="PACKAGE_CORRUPT",
                )
        bundle.extractall(target)
