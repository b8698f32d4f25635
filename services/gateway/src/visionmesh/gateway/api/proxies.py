"""Public RPCs of internal services, served by the gateway so clients need only it."""

from __future__ import annotations

from typing import Any

from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc


class TrainingProxy(training_pb2_grpc.TrainingServiceServicer):
    """TrainingService through the gateway (e.g. a web form listing architectures).

    The caller is authenticated by the gateway; the call goes on with the gateway's own
    service token, and the training service's errors come back with their codes.
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
        response: training_pb2.ValidateSpecResponse = await self._stub.ValidateSpec(request)
        return response
