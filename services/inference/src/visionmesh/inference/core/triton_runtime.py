"""The triton runtime: a deployment's model served by a Triton Inference Server.

visionmesh loads the model into Triton itself, through Triton's repository API: the export's
config (renamed to the deployment's served name) and the model's files travel in the load
request (`load_model(name, config=..., files=...)`) and Triton writes them into a repository
of its own, so visionmesh and Triton share no filesystem. That needs Triton started with
`--model-control-mode=explicit`. One Triton holds every tenant's deployments, so each loads
under a name of its own (`served_model_name`).

The client is tritonclient's gRPC asyncio client rather than its HTTP one: the deployment
setting is Triton's gRPC address (host:8001); gRPC carries tensors and model files as raw
bytes (HTTP's JSON would base64 the model files of a load request), and it needs no extra
dependency (tritonclient[grpc] is the service's; the HTTP asyncio client needs aiohttp).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException
from visionmesh.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    VisionMeshError,
)
from visionmesh.common.logging import get_logger
from visionmesh.inference.core.model import Tensor, TensorSpec, Timing, kserve_datatype
from visionmesh.inference.core.package import TENSORRT_PLATFORM, TENSORRT_SUFFIX

__all__ = [
    "TENSORRT_PLATFORM",
    "TritonModelFiles",
    "TritonRuntime",
    "load_into_triton",
    "read_repository_model",
    "served_model_name",
]

_log = get_logger(__name__)

# Triton writes a loaded model's files under a directory of its name: no path separators.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# gRPC messages are capped at 2 GiB - 1; a load request carries every file of the model.
_MAX_LOAD_REQUEST_BYTES = 2**31 - 1 - 1024 * 1024
_READY_POLL_S = 0.05
_UNLOAD_TIMEOUT_S = 30.0


def served_model_name(tenant_id: str, deployment: str, generation: int) -> str:
    """The name a deployment's model has in the shared Triton: `<tenant>--<name>--<gen>`.

    The generation makes a redeployed model a new Triton model, so the old one can keep
    serving until the new one is ready and then be unloaded without touching it.
    """
    name = f"{tenant_id}--{deployment}--{generation}"
    if not _MODEL_NAME.match(name):
        raise ValueError(f"{name!r} is not a Triton model name (letters, digits, '.', '_', '-')")
    return name


@dataclass(frozen=True)
class TritonModelFiles:
    """One model of an export's Triton repository, ready to send in a load request."""

    directory: str
    """The model's directory in the repository, e.g. "shapes-v3" or "shapes-v3-trt"."""
    config: model_config_pb2.ModelConfig
    files: dict[str, bytes]
    """Triton's override files: "file:<path under the model directory>" -> contents."""

    @property
    def platform(self) -> str:
        """Triton's platform ("onnxruntime_onnx", "tensorrt_plan"), else the backend name."""
        return self.config.platform or self.config.backend


def read_repository_model(
    repository_dir: Path, model_name: str, *, tensorrt: bool = False
) -> TritonModelFiles:
    """Read `<model_name>` (or, with `tensorrt`, its engine `<model_name>-trt`) from an
    unzipped export repository.

    Raises FailedPrecondition when the repository lacks the model (an export without a
    TensorRT engine, asked for one) or its config.pbtxt is not a Triton model config.
    """
    directory = f"{model_name}{TENSORRT_SUFFIX}" if tensorrt else model_name
    model_dir = repository_dir / directory
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        if tensorrt:
            raise FailedPrecondition.for_field(
                "tensorrt",
                f"the export has no TensorRT engine ({directory}/config.pbtxt is missing); "
                "export it with TensorRT on a GPU worker, or serve the ONNX model",
                reason="NO_TENSORRT_ENGINE",
            )
        raise FailedPrecondition(
            f"the export's Triton repository has no model {model_name!r} "
            f"({directory}/config.pbtxt is missing)",
            reason="MODEL_NOT_IN_REPOSITORY",
        )
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(
            f"{directory}/config.pbtxt is not a Triton model config: {exc}",
            reason="BAD_MODEL_CONFIG",
        ) from exc
    if tensorrt and config.platform != TENSORRT_PLATFORM:
        raise FailedPrecondition.for_field(
            "tensorrt",
            f"{directory} is a {config.platform or config.backend!r} model, not a TensorRT "
            f"engine ({TENSORRT_PLATFORM})",
            reason="NO_TENSORRT_ENGINE",
        )
    files = {
        f"file:{path.relative_to(model_dir).as_posix()}": path.read_bytes()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path != config_path
    }
    if not files:
        raise FailedPrecondition(
            f"{directory} has no model files beside its config.pbtxt", reason="BAD_MODEL_CONFIG"
        )
    size = sum(len(content) for content in files.values())
    if size > _MAX_LOAD_REQUEST_BYTES:
        raise FailedPrecondition(
            f"{directory}'s files are {size} bytes: more than one gRPC load request carries",
            reason="MODEL_TOO_LARGE",
        )
    return TritonModelFiles(directory=directory, config=config, files=files)


async def load_into_triton(
    url: str,
    *,
    repository_dir: Path,
    model_name: str,
    served_name: str,
    timeout_s: float,
    tensorrt: bool = False,
) -> TritonRuntime:
    """Load `<model_name>` of an export's Triton repository into the Triton at `url`
    (gRPC host:port) as `served_name`, and wait until it is ready.

    With `tensorrt`, the export's TensorRT engine (`<model_name>-trt`) is loaded instead;
    Triton refuses it without a GPU and the TensorRT backend. A model already loaded under
    `served_name` is replaced, and every runtime of that name then serves the new one and
    unloads it on close: a name is one load (`served_model_name` counts generations).

    Raises Unavailable when Triton cannot be reached or did not answer in `timeout_s`,
    FailedPrecondition with Triton's reason when it cannot load the model.
    """
    if not _MODEL_NAME.match(served_name):
        raise ValueError(f"{served_name!r} is not a Triton model name")
    model = read_repository_model(repository_dir, model_name, tensorrt=tensorrt)
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(model.config)
    config.name = served_name
    config_json = json_format.MessageToJson(config, preserving_proto_field_name=True)

    client = triton_grpc.InferenceServerClient(url=url)
    loading = False
    try:
        # Liveness, not readiness: with --strict-readiness (Triton's default) a server is
        # "not ready" while any of its models is unavailable, such as another deployment's
        # that failed to load or was just unloaded, which says nothing about loading ours.
        try:
            live = await client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise Unavailable(f"Triton at {url} is unreachable: {exc.message()}") from exc
        if not live:
            raise Unavailable(f"Triton at {url} is not live")
        deadline = time.monotonic() + timeout_s
        loading = True
        try:
            await client.load_model(
                served_name, config=config_json, files=model.files, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            raise _load_error(exc, url=url, model=model, served_name=served_name) from exc
        await _wait_ready(client, url, served_name, deadline)
        runtime = await TritonRuntime.attach(client, url=url, served_name=served_name)
    except BaseException:
        if loading:
            # A load the client gave up on may still finish in Triton; leave nothing behind.
            await _unload_quietly(client, url, served_name)
        await client.close()
        raise
    _log.info("loaded into Triton", served_name=served_name, model=model.directory, url=url)
    return runtime


class TritonRuntime:
    """A model loaded in a Triton server, served through its gRPC API (KServe v2).

    Use `load_into_triton` to load one. `infer` may be called concurrently (one gRPC
    channel multiplexes the calls); Triton's own scheduler batches them when the model's
    config asks for dynamic batching. `close` unloads the model from Triton.
    """

    def __init__(
        self,
        client: triton_grpc.InferenceServerClient,
        *,
        url: str,
        served_name: str,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        config: model_config_pb2.ModelConfig,
    ) -> None:
        self._client = client
        self._url = url
        self._served_name = served_name
        self._inputs = inputs
        self._outputs = outputs
        self._config = config
        self._requested_outputs = [triton_grpc.InferRequestedOutput(o.name) for o in outputs]
        self._closed = False

    @classmethod
    async def attach(
        cls, client: triton_grpc.InferenceServerClient, *, url: str, served_name: str
    ) -> TritonRuntime:
        """A runtime over a model already loaded and ready in the Triton `client` talks to."""
        try:
            metadata = await client.get_model_metadata(served_name)
            config = (await client.get_model_config(served_name)).config
        except InferenceServerException as exc:
            raise _call_error(exc, url=url, served_name=served_name, doing="describe") from exc
        return cls(
            client,
            url=url,
            served_name=served_name,
            inputs=tuple(_tensor_spec(t) for t in metadata.inputs),
            outputs=tuple(_tensor_spec(t) for t in metadata.outputs),
            config=config,
        )

    @property
    def url(self) -> str:
        return self._url

    @property
    def served_name(self) -> str:
        """The model's name in Triton."""
        return self._served_name

    @property
    def platform(self) -> str:
        """Triton's platform of the loaded model ("onnxruntime_onnx", "tensorrt_plan"), or
        its backend where the config names one instead (the tests' "python" stand-in)."""
        return self._config.platform or self._config.backend

    @property
    def config(self) -> dict[str, Any]:
        """The model's config as Triton serves it (model-config JSON, proto field names)."""
        as_dict: dict[str, Any] = json_format.MessageToDict(
            self._config, preserving_proto_field_name=True
        )
        return as_dict

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def max_batch_size(self) -> int:
        if self._config.max_batch_size > 0:
            return int(self._config.max_batch_size)
        # No Triton batching: the graph's batch is whatever its first dimension is fixed at.
        first = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else -1
        return first if first > 0 else 1

    async def infer(
        self, inputs: Mapping[str, Tensor], *, timing: Timing | None = None
    ) -> dict[str, Tensor]:
        """Run one batch in Triton; Triton checks the tensors against the model's config."""
        if self._closed:
            raise Unavailable(f"model {self._served_name} was unloaded from Triton")
        requests = []
        for name, array in inputs.items():
            try:
                datatype = kserve_datatype(array.dtype)
            except ValueError as exc:
                raise InvalidArgument.for_field(name, str(exc)) from exc
            tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            requests.append(tensor)
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                self._served_name, requests, outputs=self._requested_outputs
            )
        except InferenceServerException as exc:
            raise _call_error(
                exc, url=self._url, served_name=self._served_name, doing="infer"
            ) from exc
        finally:
            if timing is not None:
                # The round trip: Triton's own queueing, which no response reports per
                # request, counts as compute here; a batcher in front fills `queue`.
                timing.compute += time.perf_counter() - started
        outputs: dict[str, Tensor] = {}
        for spec in self._outputs:
            array = result.as_numpy(spec.name)
            if array is None:
                raise Internal(f"Triton's response for {self._served_name} lacks {spec.name}")
            # as_numpy views the response's bytes read-only; callers may work in place.
            outputs[spec.name] = np.array(array)
        return outputs

    async def close(self) -> None:
        """Unload the model from Triton and wait until it is gone; close the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            await _unload_quietly(self._client, self._url, self._served_name)
        finally:
            await self._client.close()


async def _wait_ready(
    client: triton_grpc.InferenceServerClient, url: str, served_name: str, deadline: float
) -> None:
    # Triton answers a load once the model is loaded; readiness is checked, not assumed.
    while True:
        try:
            if await client.is_model_ready(served_name):
                return
        except InferenceServerException as exc:
            raise _call_error(exc, url=url, served_name=served_name, doing="check") from exc
        if time.monotonic() > deadline:
            raise Unavailable(f"Triton at {url} loaded {served_name} but it is not ready")
        await asyncio.sleep(_READY_POLL_S)


async def _unload_quietly(
    client: triton_grpc.InferenceServerClient, url: str, served_name: str
) -> None:
    """Unload and wait until Triton no longer serves the model; log instead of raising.

    A Triton that cannot be reached has no model to unload either, and a failed unload must
    not keep a deployment from closing the rest of what it holds.
    """
    try:
        await client.unload_model(served_name, client_timeout=_UNLOAD_TIMEOUT_S)
        # Triton may answer before the model's instances have ended.
        deadline = time.monotonic() + _UNLOAD_TIMEOUT_S
        while await client.is_model_ready(served_name, client_timeout=_UNLOAD_TIMEOUT_S):
            if time.monotonic() > deadline:
                _log.warning(
                    "Triton still serves the model after unloading",
                    url=url,
                    served_name=served_name,
                )
                return
            await asyncio.sleep(_READY_POLL_S)
    except InferenceServerException as exc:
        _log.warning(
            "could not unload from Triton", served_name=served_name, url=url, error=str(exc)
        )


def _tensor_spec(tensor: Any) -> TensorSpec:
    return TensorSpec(
        name=str(tensor.name),
        datatype=str(tensor.datatype),
        shape=tuple(int(d) for d in tensor.shape),
    )


def _status(exc: InferenceServerException) -> str:
    # The gRPC client reports str(grpc.StatusCode), e.g. "StatusCode.UNAVAILABLE".
    return (exc.status() or "").removeprefix("StatusCode.")


def _load_error(
    exc: InferenceServerException, *, url: str, model: TritonModelFiles, served_name: str
) -> VisionMeshError:
    status = _status(exc)
    if status == "UNAVAILABLE":
        return Unavailable(f"Triton at {url} is unreachable: {exc.message()}")
    if status == "DEADLINE_EXCEEDED":
        return Unavailable(f"Triton at {url} did not finish loading {served_name} in time")
    if model.platform == TENSORRT_PLATFORM:
        return FailedPrecondition.for_field(
            "tensorrt",
            f"Triton at {url} cannot load the TensorRT engine {model.directory} "
            f"(it needs a GPU and Triton's TensorRT backend): {exc.message()}",
            reason="TENSORRT_UNAVAILABLE",
        )
    return FailedPrecondition(
        f"Triton at {url} cannot load {model.directory} as {served_name}: {exc.message()}",
        reason="TRITON_LOAD_FAILED",
    )


def _call_error(
    exc: InferenceServerException, *, url: str, served_name: str, doing: str
) -> VisionMeshError:
    status = _status(exc)
    message = f"Triton at {url}, {doing} {served_name}: {exc.message()}"
    if status == "INVALID_ARGUMENT":
        return InvalidArgument(message)
    # NOT_FOUND: the model left Triton underneath us (unloaded, server restarted); the
    # deployment's reconcile loads it again, so callers retry as for an unreachable server.
    if status in ("UNAVAILABLE", "NOT_FOUND"):
        return Unavailable(message)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(message)
    if status == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(message)
    return Internal(message)
