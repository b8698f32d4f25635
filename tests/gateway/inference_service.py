"""A stand-in InferenceService for the gateway's tests while none is wired in: a small
gRPC servicer behind the real server stack (token verification for audience "inference",
validation, error mapping) that records what the gateway forwards and keeps deployments per
tenant, as the real service does. Exports are made the way the export tests make them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.auth import Principal, ServiceTokenVerifier, require_principal
from visionmesh.common.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE
from visionmesh.inference.config import InferenceSettings

from tests.gateway.conftest import GatewayHarness
from tests.gateway.test_export_jobs import (
    apply_exported,
    create_export,
    export_result,
    register_version,
    tenant_of,
)

JPEG = b"\xff\xd8\xff\xe0 not really a jpeg"
PNG = b"\x89PNG\r\n\x1a\n not really a png"


@dataclass
class Call:
    method: str
    request: Any
    principal: Principal


@dataclass
class RecordingInference(inference_pb2_grpc.InferenceServiceServicer):
    """Deployments per tenant; a given export only with the gateway's scope."""

    calls: list[Call] = field(default_factory=list)
    deployments: dict[tuple[str, str], inference_pb2.Deployment] = field(default_factory=dict)

    def _record(self, method: str, request: Any) -> Principal:
        principal = require_principal()
        self.calls.append(Call(method, request, principal))
        return principal

    def last(self, method: str) -> Call:
        return [c for c in self.calls if c.method == method][-1]

    def _deployment(self, tenant_id: str, name: str, field: str) -> inference_pb2.Deployment:
        found = self.deployments.get((tenant_id, name))
        if found is None:
            raise NotFound(f"{field}: no deployment {name!r}", resource_type="Deployment")
        return found

    async def LoadModel(self, request: Any, context: Any) -> inference_pb2.LoadModelResponse:
        principal = self._record("LoadModel", request)
        if request.HasField("export") and not principal.has_scope(RESOLVED_EXPORT_SCOPE):
            raise PermissionDenied("export is accepted from the gateway only")
        deployment = inference_pb2.Deployment(
            name=request.name,
            tenant_id=principal.tenant_id,
            model_version_id=request.export.model_version_id,
            export_job_id=request.resolved_export_job_id,
            backend=request.backend or "onnxruntime",
            state=inference_pb2.DEPLOYMENT_STATE_LOADING,
        )
        self.deployments[(principal.tenant_id, request.name)] = deployment
        return inference_pb2.LoadModelResponse(deployment=deployment)

    async def UnloadModel(self, request: Any, context: Any) -> inference_pb2.UnloadModelResponse:
        principal = self._record("UnloadModel", request)
        deployment = self._deployment(principal.tenant_id, request.name, "name")
        del self.deployments[(principal.tenant_id, request.name)]
        return inference_pb2.UnloadModelResponse(deployment=deployment)

    async def ListDeployments(
        self, request: Any, context: Any
    ) -> inference_pb2.ListDeploymentsResponse:
        principal = self._record("ListDeployments", request)
        mine = [d for (t, _), d in sorted(self.deployments.items()) if t == principal.tenant_id]
        return inference_pb2.ListDeploymentsResponse(deployments=mine)

    async def GetDeployment(
        self, request: Any, context: Any
    ) -> inference_pb2.GetDeploymentResponse:
        principal = self._record("GetDeployment", request)
        deployment = self._deployment(principal.tenant_id, request.name, "name")
        answer = inference_pb2.GetDeploymentResponse(deployment=deployment)
        # Loading takes one look: the next GetDeployment finds it READY.
        deployment.state = inference_pb2.DEPLOYMENT_STATE_READY
        return answer

    async def Predict(self, request: Any, context: Any) -> inference_pb2.PredictResponse:
        principal = self._record("Predict", request)
        self._deployment(principal.tenant_id, request.deployment, "deployment")
        return inference_pb2.PredictResponse(
            deployment=request.deployment,
            task="detect",
            # The image's size stands in for its decoded width: the bytes arrived whole.
            results=[
                inference_pb2.ImageResult(
                    width=len(i.data),
                    detections=[
                        inference_pb2.Detection(
                            class_id=1,
                            class_name="square",
                            score=0.875,
                            box=inference_pb2.Box(x1=2, y1=3, x2=12, y2=14),
                        )
                    ],
                )
                for i in request.images
            ],
        )

    async def ValidateBatchSpec(
        self, request: Any, context: Any
    ) -> inference_pb2.ValidateBatchSpecResponse:
        principal = self._record("ValidateBatchSpec", request)
        spec = request.spec
        if spec.deployment:
            self._deployment(principal.tenant_id, spec.deployment, "spec.deployment")
        elif not principal.has_scope(RESOLVED_EXPORT_SCOPE) or not spec.HasField("export"):
            raise InvalidArgument(
                "spec.export: missing", field_violations=[FieldViolation("spec.export", "missing")]
            )
        return inference_pb2.ValidateBatchSpecResponse(spec=spec)


@dataclass
class InferenceHarness:
    gateway: GatewayHarness
    service: RecordingInference


async def start_inference_server(
    tmp: Path, public_pem: bytes, service: RecordingInference
) -> GrpcServer:
    settings = InferenceSettings(
        grpc_port=0,
        nats_url="nats://unused:4222",
        s3_endpoint="unused:9000",
        s3_access_key="unused",
        s3_secret_key="unused",
        data_dir=tmp,
    )
    server = GrpcServer(
        settings=settings,
        authenticator=ServiceTokenVerifier.from_pem([public_pem], audience="inference"),
    )
    server.add_service(
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
        service,
        service_name="visionmesh.inference.v1.InferenceService",
    )
    await server.start()
    return server


async def exported_version(harness: GatewayHarness, token: str) -> tuple[str, list[str]]:
    """A model version with two successful exports; its id and the export job ids, oldest
    first."""
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        jobs = []
        for _ in range(2):
            job = await create_export(client, version_id)
            assert await apply_exported(harness, job, export_result(job["id"], version_id))
            jobs.append(job["id"])
    return version_id, jobs
