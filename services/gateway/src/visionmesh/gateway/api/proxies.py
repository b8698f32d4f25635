"""Public RPCs of internal services, served by the gateway so clients need only it."""

from __future__ import annotations

from typing import Any

from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.common.errors import DeadlineExceeded, Unavailable
from visionmesh.common.specs.training import check_spec


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
