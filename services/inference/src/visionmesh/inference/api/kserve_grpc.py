"""KServe v2 over gRPC: `inference.GRPCInferenceService` as Triton serves it, over the dataplane.

Built on tritonclient's generated classes: our protos/inference/*.proto only document the
contract (tests/contracts/test_kserve_wire.py), since generating Python from them would put
a second `inference` package into the descriptor pool next to tritonclient's.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2, service_pb2_grpc
from visionmesh.common.auth import require_principal
from visionmesh.common.rpc.server import GrpcServer
from visionmesh.inference.api.kserve import (
    KSERVE_PUBLIC_METHODS,
    KSERVE_SERVICE_NAME,
    KServeDataplane,
    decode_grpc_request,
    encode_grpc_response,
)

__all__ = ["KSERVE_PUBLIC_METHODS", "KSERVE_SERVICE_NAME", "KServeServicer", "add_kserve_service"]


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 gRPC API; every RPC but ServerLive and ServerReady needs a principal.

    RPCs not overridden here (streaming, shared memory, trace and log settings) answer
    UNIMPLEMENTED through the generated base class.
    """

    def __init__(self, dataplane: KServeDataplane) -> None:
        self.dataplane = dataplane

    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: Any
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: Any
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.dataplane.ready())

    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: Any
    ) -> service_pb2.ServerMetadataResponse:
        require_principal()
        return self.dataplane.server_metadata()

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: Any
    ) -> service_pb2.ModelReadyResponse:
        ready = self.dataplane.model_ready(require_principal(), request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: Any
    ) -> service_pb2.ModelMetadataResponse:
        return self.dataplane.model_metadata(require_principal(), request.name, request.version)

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: Any
    ) -> service_pb2.ModelConfigResponse:
        config = self.dataplane.model_config(require_principal(), request.name, request.version)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: Any
    ) -> service_pb2.ModelStatisticsResponse:
        return self.dataplane.model_statistics(require_principal(), request.name, request.version)

    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: Any
    ) -> service_pb2.ModelInferResponse:
        principal = require_principal()
        response = await self.dataplane.infer(principal, decode_grpc_request(request))
        return encode_grpc_response(response)

    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: Any
    ) -> service_pb2.RepositoryIndexResponse:
        return self.dataplane.repository_index(
            require_principal(), repository=request.repository_name, ready_only=request.ready
        )

    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: Any
    ) -> service_pb2.RepositoryModelLoadResponse:
        await self.dataplane.load(
            require_principal(),
            request.model_name,
            repository=request.repository_name,
            parameters=list(request.parameters),
        )
        return service_pb2.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: Any
    ) -> service_pb2.RepositoryModelUnloadResponse:
        await self.dataplane.unload(
            require_principal(),
            request.model_name,
            repository=request.repository_name,
            parameters=list(request.parameters),
        )
        return service_pb2.RepositoryModelUnloadResponse()


def add_kserve_service(server: GrpcServer, dataplane: KServeDataplane) -> KServeServicer:
    """Register the KServe servicer on `server` (before it starts); returns the servicer.

    The server's authenticator must treat `KSERVE_PUBLIC_METHODS` as public, so probes
    reach ServerLive and ServerReady without a token.
    """
    servicer = KServeServicer(dataplane)
    server.add_service(
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
        servicer,
        service_name=KSERVE_SERVICE_NAME,
    )
    return servicer
