"""gRPC servicers of the gateway's jobs, datasets and registry: thin adapters over the core."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from visionmesh.api.gateway.v1 import (
    datasets_pb2,
    datasets_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from visionmesh.gateway.core.datasets import DatasetsCore
from visionmesh.gateway.core.jobs import JobsCore
from visionmesh.gateway.core.registry import RegistryCore

# Requests arrive validated (protovalidate rules, in the RPC layer) with the caller's
# principal bound; servicers only convert and delegate.


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, core: JobsCore) -> None:
        self._core = core

    async def CreateTrainingJob(
        self, request: jobs_pb2.CreateTrainingJobRequest, context: Any
    ) -> jobs_pb2.CreateTrainingJobResponse:
        return jobs_pb2.CreateTrainingJobResponse(job=await self._core.create_training_job(request))

    async def CreateExportJob(
        self, request: jobs_pb2.CreateExportJobRequest, context: Any
    ) -> jobs_pb2.CreateExportJobResponse:
        return jobs_pb2.CreateExportJobResponse(job=await self._core.create_export_job(request))

    async def CreateBatchInputUpload(
        self, request: jobs_pb2.CreateBatchInputUploadRequest, context: Any
    ) -> jobs_pb2.CreateBatchInputUploadResponse:
        return await self._core.create_batch_input_upload(request)

    async def CreateBatchInferenceJob(
        self, request: jobs_pb2.CreateBatchInferenceJobRequest, context: Any
    ) -> jobs_pb2.CreateBatchInferenceJobResponse:
        return jobs_pb2.CreateBatchInferenceJobResponse(
            job=await self._core.create_batch_inference_job(request)
        )

    async def CreateEmbeddingJob(
        self, request: jobs_pb2.CreateEmbeddingJobRequest, context: Any
    ) -> jobs_pb2.CreateEmbeddingJobResponse:
        return jobs_pb2.CreateEmbeddingJobResponse(
            job=await self._core.create_embedding_job(request)
        )

    async def ListBatchInferenceResults(
        self, request: jobs_pb2.ListBatchInferenceResultsRequest, context: Any
    ) -> jobs_pb2.ListBatchInferenceResultsResponse:
        return await self._core.list_batch_inference_results(request)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: Any
    ) -> jobs_pb2.GetJobResponse:
        return jobs_pb2.GetJobResponse(job=await self._core.get_job(request.id))

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: Any
    ) -> jobs_pb2.ListJobsResponse:
        jobs, token = await self._core.list_jobs(request)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: Any
    ) -> jobs_pb2.CancelJobResponse:
        return jobs_pb2.CancelJobResponse(job=await self._core.cancel_job(request.id))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        async for event in self._core.watch(request.id, request.after_sequence):
            yield event

    async def ListJobMetrics(
        self, request: jobs_pb2.ListJobMetricsRequest, context: Any
    ) -> jobs_pb2.ListJobMetricsResponse:
        points = await self._core.list_metrics(request.id, request.name)
        return jobs_pb2.ListJobMetricsResponse(points=points)

    async def ListJobArtifacts(
        self, request: jobs_pb2.ListJobArtifactsRequest, context: Any
    ) -> jobs_pb2.ListJobArtifactsResponse:
        artifacts = await self._core.list_artifacts(request.id)
        return jobs_pb2.ListJobArtifactsResponse(artifacts=artifacts)

    async def GetArtifactDownloadUrl(
        self, request: jobs_pb2.GetArtifactDownloadUrlRequest, context: Any
    ) -> jobs_pb2.GetArtifactDownloadUrlResponse:
        url, expires_in, artifact = await self._core.artifact_download_url(request.id)
        return jobs_pb2.GetArtifactDownloadUrlResponse(
            url=url, expires_in=expires_in, artifact=artifact
        )


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, core: DatasetsCore) -> None:
        self._core = core

    async def CreateDataset(
        self, request: datasets_pb2.CreateDatasetRequest, context: Any
    ) -> datasets_pb2.CreateDatasetResponse:
        dataset, url, expires_in = await self._core.create(
            name=request.name, description=request.description
        )
        return datasets_pb2.CreateDatasetResponse(
            dataset=dataset, upload_url=url, upload_expires_in=expires_in
        )

    async def FinalizeDataset(
        self, request: datasets_pb2.FinalizeDatasetRequest, context: Any
    ) -> datasets_pb2.FinalizeDatasetResponse:
        return datasets_pb2.FinalizeDatasetResponse(dataset=await self._core.finalize(request.id))

    async def ListDatasets(
        self, request: datasets_pb2.ListDatasetsRequest, context: Any
    ) -> datasets_pb2.ListDatasetsResponse:
        datasets, token = await self._core.list_datasets(
            size=request.page_size, token=request.page_token
        )
        return datasets_pb2.ListDatasetsResponse(datasets=datasets, next_page_token=token)

    async def GetDataset(
        self, request: datasets_pb2.GetDatasetRequest, context: Any
    ) -> datasets_pb2.GetDatasetResponse:
        return datasets_pb2.GetDatasetResponse(dataset=await self._core.get(request.id))

    async def CreateSnapshot(
        self, request: datasets_pb2.CreateSnapshotRequest, context: Any
    ) -> datasets_pb2.CreateSnapshotResponse:
        snapshot = await self._core.create_snapshot(request.id, description=request.description)
        return datasets_pb2.CreateSnapshotResponse(snapshot=snapshot)

    async def ListSnapshots(
        self, request: datasets_pb2.ListSnapshotsRequest, context: Any
    ) -> datasets_pb2.ListSnapshotsResponse:
        return datasets_pb2.ListSnapshotsResponse(
            snapshots=await self._core.list_snapshots(request.id)
        )

    async def GetSnapshot(
        self, request: datasets_pb2.GetSnapshotRequest, context: Any
    ) -> datasets_pb2.GetSnapshotResponse:
        return datasets_pb2.GetSnapshotResponse(snapshot=await self._core.get_snapshot(request.id))


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: RegistryCore) -> None:
        self._core = core

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: Any
    ) -> models_pb2.ListModelsResponse:
        models, token = await self._core.list_models(
            size=request.page_size, token=request.page_token
        )
        return models_pb2.ListModelsResponse(models=models, next_page_token=token)

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: Any
    ) -> models_pb2.GetModelResponse:
        return models_pb2.GetModelResponse(model=await self._core.get_model(request.id))

    async def GetModelVersion(
        self, request: models_pb2.GetModelVersionRequest, context: Any
    ) -> models_pb2.GetModelVersionResponse:
        return models_pb2.GetModelVersionResponse(
            model_version=await self._core.get_version(request.id)
        )

    async def GetExport(
        self, request: models_pb2.GetExportRequest, context: Any
    ) -> models_pb2.GetExportResponse:
        return models_pb2.GetExportResponse(export=await self._core.get_export(request.id))

    async def GetExportDownloadUrl(
        self, request: models_pb2.GetExportDownloadUrlRequest, context: Any
    ) -> models_pb2.GetExportDownloadUrlResponse:
        url, expires_in, artifact = await self._core.export_download_url(request.id, request.file)
        return models_pb2.GetExportDownloadUrlResponse(
            url=url, expires_in=expires_in, artifact=artifact
        )
