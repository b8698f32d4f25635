"""The inference service's core: tenant-scoped deployments, Predict, KServe's model view.

Both transports (InferenceService over gRPC and REST through the gateway, KServe v2 on its
own ports) and batch jobs go through this class; the servicers only adapt messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.auth import Principal, require_principal
from visionmesh.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from visionmesh.common.paging import DEFAULT_PAGE_SIZE, name_after, name_page_token
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE, check_batch_spec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.tenancy import tenant_key
from visionmesh.inference.core.deployments import (
    DeploymentManager,
    DeploymentSource,
    DeploymentStore,
    export_of,
)
from visionmesh.inference.core.model import LoadedModel, RepositoryEntry
from visionmesh.inference.core.package import check_export
from visionmesh.inference.core.predictor import ImageInput, Predictor
from visionmesh.inference.db.models import DeploymentRow

LOAD_WAIT_SECONDS = 300.0
"""How long a KServe repository load waits for the model, as Triton's load does."""

_STATES = {
    "LOADING": inference_pb2.DEPLOYMENT_STATE_LOADING,
    "READY": inference_pb2.DEPLOYMENT_STATE_READY,
    "FAILED": inference_pb2.DEPLOYMENT_STATE_FAILED,
    # Unloaded through KServe's repository API: kept, not served.
    "UNAVAILABLE": inference_pb2.DEPLOYMENT_STATE_FAILED,
}


@dataclass(frozen=True)
class ServingLimits:
    max_image_bytes: int
    max_image_pixels: int


@dataclass(frozen=True)
class Backends:
    """What this deployment of the service can run."""

    default: str
    triton: bool
    cuda: bool


class InferenceCore:
    """Deployments of the caller's tenant and the calls that use them."""

    def __init__(
        self,
        *,
        store: DeploymentStore,
        manager: DeploymentManager,
        objects: ObjectStore,
        limits: ServingLimits,
        backends: Backends,
    ) -> None:
        self._store = store
        self._manager = manager
        self._objects = objects
        self._limits = limits
        self._backends = backends
        self._predictors: dict[tuple[str, str], Predictor] = {}

    # --- deployments ----------------------------------------------------------------------

    async def load_model(self, request: inference_pb2.LoadModelRequest) -> inference_pb2.Deployment:
        caller = require_principal()
        source = self._source(request, caller)
        row = await self._store.put(
            tenant_id=caller.tenant_id,
            name=request.name,
            source=source,
            replace=request.replace,
            created_by=caller.subject,
        )
        self._manager.wake()
        return self._deployment(row)

    def _source(
        self, request: inference_pb2.LoadModelRequest, caller: Principal
    ) -> DeploymentSource:
        which = request.WhichOneof("source")
        if which != "export":
            # Only the gateway can resolve registry ids within the caller's tenant.
            raise FailedPrecondition.for_field(
                str(which),
                "is resolved by the gateway; call LoadModel through the gateway",
            )
        if not caller.has_scope(RESOLVED_EXPORT_SCOPE):
            raise PermissionDenied(
                "an export given in full is accepted only from the gateway",
                reason="EXPORT_NOT_RESOLVED",
            )
        if not request.resolved_export_job_id:
            raise InvalidArgument.for_field("resolved_export_job_id", "required with export")
        check_export(request.export)
        backend = request.backend or self._backends.default
        if backend == "triton" and not self._backends.triton:
            raise FailedPrecondition.for_field(
                "backend", "no Triton server is configured here (VISIONMESH_TRITON_URL)"
            )
        device = request.device or "auto"
        if backend == "triton":
            device = ""  # Triton places the model itself (its config's instance groups)
        elif device.startswith("cuda") and not self._backends.cuda:
            raise FailedPrecondition.for_field(
                "device", "ONNX Runtime here has no CUDA execution provider or no GPU"
            )
        return DeploymentSource(
            export=request.export,
            export_job_id=request.resolved_export_job_id,
            backend=backend,
            device=device,
        )

    async def unload_model(self, name: str) -> inference_pb2.Deployment:
        caller = require_principal()
        row = await self._store.delete(caller.tenant_id, name)
        if row is None:
            raise NotFound(resource_type="deployment", resource_id=name)
        self._predictors.pop((caller.tenant_id, name), None)
        self._manager.wake()
        return self._deployment(row)

    async def get_deployment(self, name: str) -> inference_pb2.Deployment:
        return self._deployment(await self._row(require_principal(), name))

    async def list_deployments(
        self, *, page_size: int, page_token: str
    ) -> tuple[list[inference_pb2.Deployment], str]:
        caller = require_principal()
        after = name_after(page_token)
        limit = page_size or DEFAULT_PAGE_SIZE
        rows = await self._store.page(caller.tenant_id, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        token = name_page_token(rows[-1].name) if more else ""
        return [self._deployment(row) for row in rows], token

    async def _row(
        self, caller: Principal, name: str, *, kind: str = "deployment"
    ) -> DeploymentRow:
        row = await self._store.get(caller.tenant_id, name)
        if row is None:
            raise NotFound(resource_type=kind, resource_id=name)
        return row

    def _deployment(self, row: DeploymentRow) -> inference_pb2.Deployment:
        status = self._manager.status(row)
        export = export_of(row)
        deployment = inference_pb2.Deployment(
            name=row.name,
            tenant_id=row.tenant_id,
            model_version_id=row.model_version_id,
            export_job_id=row.export_job_id,
            backend=row.backend,
            device=row.device,
            state=_STATES[status.state],
            failure_reason=status.reason,
            metadata=export.metadata,
        )
        deployment.create_time.FromDatetime(row.create_time)
        if status.load_time is not None:
            deployment.load_time.FromDatetime(status.load_time)
        return deployment

    # --- Predict --------------------------------------------------------------------------

    async def predict(self, request: inference_pb2.PredictRequest) -> inference_pb2.PredictResponse:
        caller = require_principal()
        name = request.deployment
        if not self._manager.knows(caller.tenant_id, name):
            # Not loaded here (yet): NOT_FOUND unless the table has it. A served deployment
            # answers from memory, without a database round trip per call.
            await self._row(caller, name)
        inputs = [
            await self._image(caller, index, image) for index, image in enumerate(request.images)
        ]
        async with self._manager.acquire(caller.tenant_id, name) as model:
            response = await self.predictor(model).predict(inputs, request.options)
        response.deployment = name
        response.model_version_id = model.model_version_id
        return response

    def predictor(self, model: LoadedModel) -> Predictor:
        """The model's Predictor, built (and its metadata checked) once per loaded model,
        not per call; a swapped-in generation gets its own."""
        key = (model.tenant_id, model.name)
        cached = self._predictors.get(key)
        if cached is None or cached.runtime is not model.runtime:
            cached = self._predictors[key] = Predictor(
                model.metadata,
                model.runtime,
                max_image_bytes=self._limits.max_image_bytes,
                max_image_pixels=self._limits.max_image_pixels,
            )
        return cached

    async def _image(self, caller: Principal, index: int, image: image_pb2.Image) -> ImageInput:
        field = f"images[{index}]"
        if image.WhichOneof("source") != "key":
            return ImageInput(field=field, data=image.data)
        try:
            key = tenant_key(caller.tenant_id, image.key, field=f"{field}.key")
        except InvalidArgument as exc:
            return ImageInput(
                field=field,
                key=image.key,
                error=_error(f"{field}.key", "OUTSIDE_TENANT", exc.message),
            )
        return await fetch_image(self._objects, field, image.key, key, self._limits.max_image_bytes)

    # --- batch jobs ------------------------------------------------------------------------

    async def validate_batch_spec(
        self, spec: inference_pb2.BatchInferenceSpec
    ) -> inference_pb2.BatchInferenceSpec:
        caller = require_principal()
        checked = check_batch_spec(spec, tenant_id=caller.tenant_id)
        if checked.deployment:
            await self._row(caller, checked.deployment)
        elif checked.HasField("export"):
            if not caller.has_scope(RESOLVED_EXPORT_SCOPE):
                raise PermissionDenied(
                    "an export given in full is accepted only from the gateway",
                    reason="EXPORT_NOT_RESOLVED",
                )
            check_export(checked.export, field="spec.export")
        if checked.input_prefix:
            prefix = tenant_key(
                caller.tenant_id, checked.input_prefix, field="spec.input_prefix", prefix=True
            )
            extensions = tuple(checked.image_extensions)
            found = await self._objects.list(prefix)
            if not any(info.key.lower().endswith(extensions) for info in found):
                raise InvalidArgument.for_field(
                    "spec.input_prefix", f"holds no images ({', '.join(extensions)})"
                )
        else:
            key = tenant_key(caller.tenant_id, checked.input_zip_key, field="spec.input_zip_key")
            if not await self._objects.exists(key):
                raise InvalidArgument.for_field("spec.input_zip_key", "no such object")
        return checked

    @contextlib.asynccontextmanager
    async def deployed_model(self, tenant_id: str, name: str) -> AsyncIterator[LoadedModel]:
        """A deployment's model for a batch job of `tenant_id` (NotFound naming it)."""
        row = await self._store.get(tenant_id, name)
        if row is None:
            raise NotFound(resource_type="deployment", resource_id=name)
        async with self._manager.acquire(tenant_id, name) as model:
            yield model

    # --- KServe's view ----------------------------------------------------------------------

    def server_ready(self) -> bool:
        return self._manager.ready

    def model(self, principal: Principal, name: str, version: str = "") -> LoadedModel:
        for model in self._manager.served_models(principal.tenant_id):
            if model.name == name:
                if version and version != model.version:
                    raise NotFound(
                        f"model {name!r} has no version {version!r} (serving {model.version})",
                        resource_type="model",
                        resource_id=f"{name}/{version}",
                    )
                return model
        raise NotFound(resource_type="model", resource_id=name)

    def model_ready(self, principal: Principal, name: str, version: str = "") -> bool:
        try:
            self.model(principal, name, version)
        except NotFound:
            return False
        return True

    def index(self, principal: Principal, *, ready_only: bool = False) -> list[RepositoryEntry]:
        entries = self._manager.entries(principal.tenant_id)
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    async def load(self, principal: Principal, name: str) -> None:
        _require_admin(principal)
        await self._store.set_enabled(principal.tenant_id, name, enabled=True)
        # Triton's load returns once the model is loaded (or failed); so does this one.
        await self._manager.reconcile()
        await self._manager.wait(principal.tenant_id, name, seconds=LOAD_WAIT_SECONDS)

    async def unload(self, principal: Principal, name: str) -> None:
        _require_admin(principal)
        await self._store.set_enabled(principal.tenant_id, name, enabled=False)
        await self._manager.reconcile()


async def fetch_image(
    objects: ObjectStore, field: str, relative: str, key: str, max_bytes: int
) -> ImageInput:
    """An image named by key, or the reason it cannot be used (on the input, not raised)."""
    from visionmesh.common.errors import NotFound as Missing

    try:
        info = await objects.stat(key)
    except Missing:
        return ImageInput(
            field=field, key=relative, error=_error(f"{field}.key", "NOT_FOUND", "no such object")
        )
    if info.size > max_bytes:
        return ImageInput(
            field=field,
            key=relative,
            error=_error(
                f"{field}.key", "TOO_LARGE", f"{info.size} bytes, the limit is {max_bytes}"
            ),
        )
    return ImageInput(field=field, key=relative, data=await objects.get_bytes(key))


def _error(field: str, reason: str, message: str) -> inference_pb2.ImageError:
    return inference_pb2.ImageError(field=field, reason=reason, message=message)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied(
            "repository operations are for admins of the tenant", reason="ADMIN_REQUIRED"
        )
