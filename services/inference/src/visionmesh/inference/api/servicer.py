"""InferenceService over gRPC (and REST through the gateway): messages in, InferenceCore out."""

from __future__ import annotations

from typing import Any

from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.inference.core.service import InferenceCore


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore) -> None:
        self._core = core

    async def LoadModel(
        self, request: inference_pb2.LoadModelRequest, context: Any
    ) -> inference_pb2.LoadModelResponse:
        return inference_pb2.LoadModelResponse(deployment=await self._core.load_model(request))

    async def UnloadModel(
        self, request: inference_pb2.UnloadModelRequest, context: Any
    ) -> inference_pb2.UnloadModelResponse:
        deployment = await self._core.unload_model(request.name)
        return inference_pb2.UnloadModelResponse(deployment=deployment)

    async def ListDeployments(
        self, request: inference_pb2.ListDeploymentsRequest, context: Any
    ) -> inference_pb2.ListDeploymentsResponse:
        deployments, token = await self._core.list_deployments(
            page_size=request.page_size, page_token=request.page_token
        )
        return inference_pb2.ListDeploymentsResponse(deployments=deployments, next_page_token=token)

    async def GetDeployment(
        self, request: inference_pb2.GetDeploymentRequest, context: Any
    ) -> inference_pb2.GetDeploymentResponse:
        return inference_pb2.GetDeploymentResponse(
            deployment=await self._core.get_deployment(request.name)
        )

    async def Predict(
        self, request: inference_pb2.PredictRequest, context: Any
    ) -> inference_pb2.PredictResponse:
        return await self._core.predict(request)

    async def ValidateBatchSpec(
        self, request: inference_pb2.ValidateBatchSpecRequest, context: Any
    ) -> inference_pb2.ValidateBatchSpecResponse:
        spec = await self._core.validate_batch_spec(request.spec)
        return inference_pb2.ValidateBatchSpecResponse(spec=spec)
