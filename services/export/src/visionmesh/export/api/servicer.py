"""ExportService: what this deployment can export, and spec checks against it."""

from __future__ import annotations

import asyncio
from typing import Any

from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.common.specs.export import check_export_spec
from visionmesh.export.core.capabilities import export_capabilities


class ExportServicer(export_pb2_grpc.ExportServiceServicer):
    async def GetCapabilities(
        self, request: export_pb2.GetCapabilitiesRequest, context: Any
    ) -> export_pb2.GetCapabilitiesResponse:
        return (await asyncio.to_thread(export_capabilities)).to_proto()

    async def ValidateSpec(
        self, request: export_pb2.ValidateSpecRequest, context: Any
    ) -> export_pb2.ValidateSpecResponse:
        capabilities = await asyncio.to_thread(export_capabilities)
        spec = check_export_spec(
            request.spec,
            framework=request.model_framework,
            task=request.model_task,
            model_imgsz=request.model_imgsz,
            capabilities=capabilities,
        )
        return export_pb2.ValidateSpecResponse(spec=spec)
