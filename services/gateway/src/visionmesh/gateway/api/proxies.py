"""Public RPCs of internal services, served by the gateway so clients need only it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.common.auth import require_principal
from visionmesh.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE, check_batch_spec
from visionmesh.common.specs.embedding import RESOLVED_BACKBONE_SCOPE
from visionmesh.common.specs.export import UNCONFIRMED_CAPABILITIES
from visionmesh.common.specs.training import check_spec
from visionmesh.gateway.core.delegation import DelegatedTokens
from visionmesh.gateway.core.jobs import validate_export_spec_locally
from visionmesh.gateway.core.registry import ResolvedExport

EXPORT_VALIDATE_TIMEOUT_SECONDS = 5.0
"""How long job intake waits for the export service before applying the shared rules."""


class TrainingProxy(training_pb2_grpc.TrainingServiceServicer):
    """TrainingService through the gateway (e.g. a web form listing architectures).

    The caller is authenticated by the gateway; the call goes on with the gateway's own
    service token, and the training service's errors come back with their codes.
    ValidateSpec applies the same shared rules in the gateway when the training service
    cannot be reached, so a client can validate (and submit) while training is down.
    """

    def __init__(self, stub: training_pb2_grpc.TrainingServiceStub) -> None:
        self._stub = stub

    async def GetCapabilities(
        self, request: training_pb2.GetCapabilitiesRequest, context: Any
    ) -> training_pb2.GetCapabilitiesResponse:
        response: training_pb2.GetCapabilitiesResponse = await self._stub.GetCapabilities(request)
        return response

    async def ValidateSpec(
        self, request: training_pb2.ValidateSpecRequest, context: Any
    ) -> training_pb2.ValidateSpecResponse:
        try:
            response: training_pb2.ValidateSpecResponse = await self._stub.ValidateSpec(request)
        except (Unavailable, DeadlineExceeded):
            # The training service is down or starting: the same rules, answered here.
            spec = check_spec(request.spec, dataset_task=request.dataset_task)
            return training_pb2.ValidateSpecResponse(spec=spec)
        return response


class ExportProxy(export_pb2_grpc.ExportServiceServicer):
    """ExportService through the gateway, and the export spec check of job intake.

    Like TrainingProxy: calls go on with the gateway's service token and errors come back
    with their codes. When the export service cannot be reached, both RPCs answer from
    the shared rules with `UNCONFIRMED_CAPABILITIES`: ONNX exports are still accepted,
    TensorRT is refused as unconfirmed (only an export worker knows its GPU).
    """

    def __init__(
        self,
        stub: export_pb2_grpc.ExportServiceStub,
        *,
        timeout: float = EXPORT_VALIDATE_TIMEOUT_SECONDS,
    ) -> None:
        self._stub = stub
        self._timeout = timeout

    async def GetCapabilities(
        self, request: export_pb2.GetCapabilitiesRequest, context: Any
    ) -> export_pb2.GetCapabilitiesResponse:
        try:
            response: export_pb2.GetCapabilitiesResponse = await self._stub.GetCapabilities(
                request, timeout=self._timeout
            )
        except (Unavailable, DeadlineExceeded):
            return UNCONFIRMED_CAPABILITIES.to_proto()
        return response

    async def ValidateSpec(
        self, request: export_pb2.ValidateSpecRequest, context: Any
    ) -> export_pb2.ValidateSpecResponse:
        return export_pb2.ValidateSpecResponse(spec=await self.validate(request))

    async def validate(self, request: export_pb2.ValidateSpecRequest) -> export_pb2.ExportSpec:
        """The spec with defaults filled in, as the export service (or the shared rules)
        checks it: JobsCore's export spec validator."""
        try:
            response: export_pb2.ValidateSpecResponse = await self._stub.ValidateSpec(
                request, timeout=self._timeout
            )
        except (Unavailable, DeadlineExceeded):
            return await validate_export_spec_locally(request)
        return response.spec


ExportResolver = Callable[..., Awaitable[ResolvedExport]]
"""`RegistryCore.resolve_export`: (model_version_id= | export_job_id=, field_prefix=) in the
caller's tenant."""


class InferenceProxy(inference_pb2_grpc.InferenceServiceServicer):
    """InferenceService through the gateway, and the batch spec check of job intake.

    Calls go on with a token delegated from the caller (their tenant, role and subject),
    so the inference service scopes deployments itself. Only the gateway knows the model
    registry: LoadModel's model_version_id or export_job_id, and a batch spec's
    model_version_id, are resolved here within the caller's tenant and forwarded as the
    export itself, under a token with the `RESOLVED_EXPORT_SCOPE` the inference service
    asks of a given export; a client giving `export` itself is refused. There is no local
    fallback: when the inference service is down, calls fail UNAVAILABLE.
    """

    def __init__(
        self,
        stub: inference_pb2_grpc.InferenceServiceStub,
        *,
        tokens: DelegatedTokens,
        resolve_export: ExportResolver,
    ) -> None:
        self._stub = stub
        self._tokens = tokens
        self._resolve_export = resolve_export

    def _resolved_export_call(self) -> tuple[tuple[str, str], ...]:
        return self._tokens.metadata(extra_scopes=(RESOLVED_EXPORT_SCOPE,))

    async def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: Any
    ) -> inference_pb2.LoadModelResponse:
        source = request.WhichOneof("source")
        if source == "export" or request.resolved_export_job_id:
            field = "export" if source == "export" else "resolved_export_job_id"
            raise InvalidArgument.for_field(
                field, "set by the gateway only: give model_version_id or export_job_id"
            )
        resolved = await self._resolve_export(
            model_version_id=request.model_version_id, export_job_id=request.export_job_id
        )
        forwarded = inference_pb2.LoadModelRequest(
            name=request.name,
            export=resolved.result,
            resolved_export_job_id=resolved.job_id,
            backend=request.backend,
            device=request.device,
            replace=request.replace,
        )
        response: inference_pb2.LoadModelResponse = await self._stub.LoadModel(
            forwarded, metadata=self._resolved_export_call()
        )
        return response

    async def UnloadModel(
        self, request: inference_pb2.UnloadModelRequest, context: Any
    ) -> inference_pb2.UnloadModelResponse:
        response: inference_pb2.UnloadModelResponse = await self._stub.UnloadModel(request)
        return response

    async def ListDeployments(
        self, request: inference_pb2.ListDeploymentsRequest, context: Any
    ) -> inference_pb2.ListDeploymentsResponse:
        response: inference_pb2.ListDeploymentsResponse = await self._stub.ListDeployments(request)
        return response

    async def GetDeployment(
        self, request: inference_pb2.GetDeploymentRequest, context: Any
    ) -> inference_pb2.GetDeploymentResponse:
        response: inference_pb2.GetDeploymentResponse = await self._stub.GetDeployment(request)
        return response

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: Any
    ) -> inference_pb2.PredictResponse:
        response: inference_pb2.PredictResponse = await self._stub.Predict(request)
        return response

    async def ValidateBatchSpec(
        self, request: inference_pb2.ValidateBatchSpecRequest, context: Any
    ) -> inference_pb2.ValidateBatchSpecResponse:
        return inference_pb2.ValidateBatchSpecResponse(
            spec=await self.validate_batch_spec(request.spec)
        )

    async def validate_batch_spec(
        self, spec: inference_pb2.BatchInferenceSpec, *, job_id: str = ""
    ) -> inference_pb2.BatchInferenceSpec:
        """The spec as a worker will run it: the shared rules (with `job_id`'s default
        output prefix), spec.model_version_id resolved into spec.export, then the
        inference service's checks (the deployment exists, the inputs hold images).
        JobsCore's batch spec validator."""
        if spec.HasField("export"):
            raise InvalidArgument.for_field(
                "spec.export", "set by the gateway only, from spec.model_version_id"
            )
        checked = check_batch_spec(spec, tenant_id=require_principal().tenant_id, job_id=job_id)
        metadata: tuple[tuple[str, str], ...] | None = None
        if checked.model_version_id:
            resolved = await self._resolve_export(
                model_version_id=checked.model_version_id, field_prefix="spec."
            )
            checked.export.CopyFrom(resolved.result)
            metadata = self._resolved_export_call()
        response: inference_pb2.ValidateBatchSpecResponse = await self._stub.ValidateBatchSpec(
            inference_pb2.ValidateBatchSpecRequest(spec=checked), metadata=metadata
        )
        validated = response.spec
        if checked.HasField("export"):
            # What the gateway resolved is what runs, whatever the service echoes.
            validated.export.CopyFrom(checked.export)
        return validated


BackboneResolver = Callable[..., Awaitable[embedding_pb2.ResolvedBackbone | None]]
"""`RegistryCore.resolve_backbone`: (model, field=) in the caller's tenant; None when the
model names no model version."""

_Metadata = tuple[tuple[str, str], ...]


class EmbeddingProxy(embedding_pb2_grpc.EmbeddingServiceServicer):
    """EmbeddingService through the gateway, and the embedding spec check of job intake.

    Calls go on with a token delegated from the caller, valid for the embedding service
    and for the inference service it calls with that token (Match with a
    detector_deployment). A model "mv-<model_version_id>" (CreateCollectionRequest.model,
    EmbedRequest.model, EmbeddingJobSpec.model) is resolved here within the caller's tenant
    and forwarded as a ResolvedBackbone under a token with `RESOLVED_BACKBONE_SCOPE`; a
    client giving `backbone` itself is refused. No local fallback: when the embedding
    service is down, calls fail UNAVAILABLE.
    """

    def __init__(
        self,
        stub: embedding_pb2_grpc.EmbeddingServiceStub,
        *,
        tokens: DelegatedTokens,
        resolve_backbone: BackboneResolver,
    ) -> None:
        self._stub = stub
        self._tokens = tokens
        self._resolve_backbone = resolve_backbone

    async def _backbone(
        self, model: str, backbone: embedding_pb2.ResolvedBackbone, *, field_prefix: str = ""
    ) -> tuple[embedding_pb2.ResolvedBackbone | None, _Metadata | None]:
        """The backbone `model` names (None for DINOv2 and the like) and the call metadata
        vouching for it; a backbone set by the client is refused."""
        if backbone.ByteSize():
            raise InvalidArgument.for_field(
                f"{field_prefix}backbone",
                f"set by the gateway only, from {field_prefix}model (mv-<model_version_id>)",
            )
        resolved = await self._resolve_backbone(model, field=f"{field_prefix}model")
        if resolved is None:
            return None, None
        return resolved, self._tokens.metadata(extra_scopes=(RESOLVED_BACKBONE_SCOPE,))

    async def GetCapabilities(
        self, request: embedding_pb2.GetCapabilitiesRequest, context: Any
    ) -> embedding_pb2.GetCapabilitiesResponse:
        response: embedding_pb2.GetCapabilitiesResponse = await self._stub.GetCapabilities(request)
        return response

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Any
    ) -> embedding_pb2.EmbedResponse:
        backbone, metadata = await self._backbone(request.model, request.backbone)
        if backbone is not None:
            forwarded = embedding_pb2.EmbedRequest()
            forwarded.CopyFrom(request)
            forwarded.backbone.CopyFrom(backbone)
            request = forwarded
        response: embedding_pb2.EmbedResponse = await self._stub.Embed(request, metadata=metadata)
        return response

    async def CreateCollection(
        self, request: embedding_pb2.CreateCollectionRequest, context: Any
    ) -> embedding_pb2.CreateCollectionResponse:
        backbone, metadata = await self._backbone(request.model, request.backbone)
        if backbone is not None:
            forwarded = embedding_pb2.CreateCollectionRequest()
            forwarded.CopyFrom(request)
            forwarded.backbone.CopyFrom(backbone)
            request = forwarded
        response: embedding_pb2.CreateCollectionResponse = await self._stub.CreateCollection(
            request, metadata=metadata
        )
        return response

    async def GetCollection(
        self, request: embedding_pb2.GetCollectionRequest, context: Any
    ) -> embedding_pb2.GetCollectionResponse:
        response: embedding_pb2.GetCollectionResponse = await self._stub.GetCollection(request)
        return response

    async def ListCollections(
        self, request: embedding_pb2.ListCollectionsRequest, context: Any
    ) -> embedding_pb2.ListCollectionsResponse:
        response: embedding_pb2.ListCollectionsResponse = await self._stub.ListCollections(request)
        return response

    async def DeleteCollection(
        self, request: embedding_pb2.DeleteCollectionRequest, context: Any
    ) -> embedding_pb2.DeleteCollectionResponse:
        response: embedding_pb2.DeleteCollectionResponse = await self._stub.DeleteCollection(
            request
        )
        return response

    async def UpsertImages(
        self, request: embedding_pb2.UpsertImagesRequest, context: Any
    ) -> embedding_pb2.UpsertImagesResponse:
        response: embedding_pb2.UpsertImagesResponse = await self._stub.UpsertImages(request)
        return response

    async def DeletePoints(
        self, request: embedding_pb2.DeletePointsRequest, context: Any
    ) -> embedding_pb2.DeletePointsResponse:
        response: embedding_pb2.DeletePointsResponse = await self._stub.DeletePoints(request)
        return response

    async def Search(
        self, request: embedding_pb2.SearchRequest, context: Any
    ) -> embedding_pb2.SearchResponse:
        response: embedding_pb2.SearchResponse = await self._stub.Search(request)
        return response

    async def Match(
        self, request: embedding_pb2.MatchRequest, context: Any
    ) -> embedding_pb2.MatchResponse:
        response: embedding_pb2.MatchResponse = await self._stub.Match(request)
        return response

    async def ValidateEmbeddingSpec(
        self, request: embedding_pb2.ValidateEmbeddingSpecRequest, context: Any
    ) -> embedding_pb2.ValidateEmbeddingSpecResponse:
        return embedding_pb2.ValidateEmbeddingSpecResponse(
            spec=await self.validate_embedding_spec(request.spec)
        )

    async def validate_embedding_spec(
        self, spec: embedding_pb2.EmbeddingJobSpec
    ) -> embedding_pb2.EmbeddingJobSpec:
        """The spec as a worker will run it: spec.model's backbone resolved here, then the
        embedding service's checks and defaults. JobsCore's embedding spec validator."""
        backbone, metadata = await self._backbone(spec.model, spec.backbone, field_prefix="spec.")
        if backbone is not None:
            checked = embedding_pb2.EmbeddingJobSpec()
            checked.CopyFrom(spec)
            checked.backbone.CopyFrom(backbone)
            spec = checked
        response: embedding_pb2.ValidateEmbeddingSpecResponse = (
            await self._stub.ValidateEmbeddingSpec(
                embedding_pb2.ValidateEmbeddingSpecRequest(spec=spec), metadata=metadata
            )
        )
        validated = response.spec
        if backbone is not None:
            # What the gateway resolved is what runs, whatever the service echoes.
            validated.backbone.CopyFrom(backbone)
        return validated
