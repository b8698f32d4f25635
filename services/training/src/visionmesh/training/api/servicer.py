"""TrainingService: capabilities and spec validation, thin over the core."""

from __future__ import annotations

import asyncio
from typing import Any

from visionmesh.api.training.v1 import training_pb2, training_pb2_grpc
from visionmesh.training.core import capabilities
from visionmesh.training.specs import check_spec


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    async def GetCapabilities(
        self, request: training_pb2.GetCapabilitiesRequest, context: Any
    ) -> training_pb2.GetCapabilitiesResponse:
        caps = await asyncio.to_thread(capabilities)
        return training_pb2.GetCapabilitiesResponse(
            frameworks=[
                training_pb2.Framework(
                    name=framework,
                    tasks=[
                        training_pb2.TaskArchitectures(task=task, architectures=list(names))
                        for task, names in caps.architectures.get(framework, {}).items()
                    ],
                )
                for framework in caps.frameworks
            ],
            devices=[
                training_pb2.Device(
                    name=device.name,
                    description=device.description,
                    memory_bytes=device.total_memory_bytes,
                )
                for device in caps.devices
            ],
        )

    async def ValidateSpec(
        self, request: training_pb2.ValidateSpecRequest, context: Any
    ) -> training_pb2.ValidateSpecResponse:
        spec = check_spec(request.spec, dataset_task=request.dataset_task)
        return training_pb2.ValidateSpecResponse(spec=spec)
