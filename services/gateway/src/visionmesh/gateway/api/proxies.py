"""Public RPCs of internal services, served by the gateway so clients need only it."""

from __future__ import annotations

from typing import Any

from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.common.errors import DeadlineExceeded, Unavailable
from visionmesh.common.specs.export import UNCONFIRMED_CAPABILITIES
from visionmesh.common.specs.training import check_spec
from visionmesh.gateway.core.jobs import validate_export_spec_locally

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
