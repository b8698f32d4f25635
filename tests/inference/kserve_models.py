"""What the KServe transport tests serve: tiny real ONNX models behind ONNX Runtime and the
dynamic batcher, a tenant-scoped `KServeModels`, tokens, and a loop thread for the servers.

The servers run on an event loop of their own thread so that blocking clients
(tritonclient.http and .grpc, Ultralytics' TritonRemoteModel) can call them from the test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import onnx
import torch
from onnx import TensorProto, helper
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    generate_signing_key,
)
from visionmesh.common.errors import FailedPrecondition, NotFound, PermissionDenied
from visionmesh.inference.api.kserve import KSERVE_PUBLIC_METHODS
from visionmesh.inference.core.batcher import DynamicBatcher
from visionmesh.inference.core.model import InferenceStats, LoadedModel, RepositoryEntry
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel

T = TypeVar("T")

AUDIENCE = "inference"
TENANT = "tenant-a"
ADMIN = Principal(subject="admin-1", tenant_id=TENANT, role="admin", kind="user")
MEMBER = Principal(subject="member-1", tenant_id=TENANT, role="member", kind="user")
OUTSIDER = Principal(subject="member-9", tenant_id="tenant-b", role="member", kind="user")

IMGSZ = 8
# What Ultralytics' exporter writes into parameters["metadata"] (a Python literal).
ULTRALYTICS_METADATA: dict[str, Any] = {
    "description": "tiny",
    "stride": 32,
    "task": "detect",
    "batch": 1,
    "imgsz": [IMGSZ, IMGSZ],
    "names": {0: "cat", 1: "dog"},
}


class TinyNet(torch.nn.Module):
    """output0 = 2 x the per-channel mean, output1 = the sum of every pixel."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images.mean(dim=(2, 3)) * 2, images.flatten(1).sum(dim=1, keepdim=True)


def export_tiny(path: Path) -> Path:
    batch = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            TinyNet().eval(),
            (torch.zeros(1, 3, IMGSZ, IMGSZ),),
            str(path),
            input_names=["images"],
            output_names=["output0", "output1"],
            dynamic_axes={"images": batch, "output0": batch, "output1": batch},
            opset_version=17,
            dynamo=False,
        )
    return path


def export_echo(path: Path) -> Path:
    """A string model (KServe BYTES): text_out = text."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])
    out = helper.make_tensor_value_info("text_out", TensorProto.STRING, ["batch"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"])], "echo", [text], [out]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tiny_triton_config() -> dict[str, Any]:
    """The Triton config the export writes for the tiny model (as JSON, int64 as strings)."""
    return {
        "name": "tiny-export",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 8,
        "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": ["3", "8", "8"]}],
        "output": [
            {"name": "output0", "data_type": "TYPE_FP32", "dims": ["3"]},
            {"name": "output1", "data_type": "TYPE_FP32", "dims": ["1"]},
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": "500"},
        "instance_group": [{"count": 1, "kind": "KIND_AUTO"}],
        "parameters": {"metadata": {"string_value": repr(ULTRALYTICS_METADATA)}},
    }


def loaded(
    tenant_id: str,
    name: str,
    version: str,
    onnx_path: Path,
    *,
    triton_config: dict[str, Any] | None = None,
) -> LoadedModel:
    """A model served as the inference service serves it: ONNX Runtime behind the batcher."""
    stats = InferenceStats()
    runtime = DynamicBatcher(
        OnnxRuntimeModel(onnx_path, device="cpu", threads=1, max_batch_size=8),
        max_batch_size=8,
        queue_delay_s=0.001,
        deployment=name,
        stats=stats,
    )
    return LoadedModel(
        tenant_id=tenant_id,
        name=name,
        version=version,
        metadata={},
        runtime=runtime,
        platform="onnxruntime_onnx",
        triton_config=triton_config or {},
        stats=stats,
    )


@dataclass
class TenantModels:
    """KServeModels over a fixed set of models, with states the repository calls change."""

    models: dict[tuple[str, str], LoadedModel] = field(default_factory=dict)
    states: dict[tuple[str, str], str] = field(default_factory=dict)
    ready: bool = True

    def add(self, model: LoadedModel, state: str = "READY") -> None:
        key = (model.tenant_id, model.name)
        self.models[key] = model
        self.states[key] = state

    def server_ready(self) -> bool:
        return self.ready

    def _key(self, principal: Principal, name: str) -> tuple[str, str]:
        key = (principal.tenant_id, name)
        if key not in self.models:
            raise NotFound(resource_type="model", resource_id=name)
        return key

    def model(self, principal: Principal, name: str, version: str = "") -> LoadedModel:
        key = self._key(principal, name)
        model = self.models[key]
        if version and version != model.version:
            raise NotFound(resource_type="model", resource_id=f"{name}/{version}")
        if self.states[key] != "READY":
            raise FailedPrecondition(f"model {name!r} is {self.states[key]}")
        return model

    def model_ready(self, principal: Principal, name: str, version: str = "") -> bool:
        try:
            self.model(principal, name, version)
        except FailedPrecondition:
            return False
        return True

    def index(self, principal: Principal, *, ready_only: bool = False) -> list[RepositoryEntry]:
        return [
            RepositoryEntry(name=name, version=model.version, state=self.states[(tenant, name)])
            for (tenant, name), model in sorted(self.models.items())
            if tenant == principal.tenant_id
            and (self.states[(tenant, name)] == "READY" or not ready_only)
        ]

    async def load(self, principal: Principal, name: str) -> None:
        self._admin(principal)
        self.states[self._key(principal, name)] = "READY"

    async def unload(self, principal: Principal, name: str) -> None:
        self._admin(principal)
        self.states[self._key(principal, name)] = "UNAVAILABLE"

    async def close(self) -> None:
        for model in self.models.values():
            await model.runtime.close()

    @staticmethod
    def _admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise PermissionDenied("the model repository is for admins")


def build_models(root: Path) -> TenantModels:
    tiny = export_tiny(root / "tiny.onnx")
    models = TenantModels()
    models.add(loaded(TENANT, "tiny", "3", tiny, triton_config=tiny_triton_config()))
    models.add(loaded(TENANT, "echo", "1", export_echo(root / "echo.onnx")))
    models.add(loaded(TENANT, "warming", "1", tiny), state="LOADING")
    models.add(loaded(OUTSIDER.tenant_id, "secret", "1", tiny))
    return models


@dataclass(frozen=True)
class Tokens:
    signer: ServiceTokenSigner = field(
        default_factory=lambda: ServiceTokenSigner(private_key=generate_signing_key())
    )

    def verifier(self) -> ServiceTokenVerifier:
        return ServiceTokenVerifier(
            public_keys=(self.signer.public_key,),
            audience=AUDIENCE,
            public_methods=KSERVE_PUBLIC_METHODS,
        )

    def headers(self, principal: Principal) -> dict[str, str]:
        token = self.signer.sign(audience=AUDIENCE, principal=principal, ttl_seconds=600)
        return {"authorization": f"Bearer {token}"}


class BearerPlugin:
    """A tritonclient plugin adding the authorization header to every request: how a
    client that builds its own tritonclient (Ultralytics' TritonRemoteModel) gets a token."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: Any) -> None:
        request.headers = {**(request.headers or {}), **self.headers}


class LoopThread:
    """An asyncio loop on its own thread; `run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
