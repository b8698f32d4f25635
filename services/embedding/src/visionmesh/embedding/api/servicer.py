"""EmbeddingService over gRPC (and REST through the gateway): messages in, EmbeddingCore out."""

from __future__ import annotations

from typing import Any

from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.embedding.core.service import EmbeddingCore


class EmbeddingServicer(embedding_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, core: EmbeddingCore) -> None:
        self._core = core

    async def GetCapabilities(
        self, request: embedding_pb2.GetCapabilitiesRequest, context: Any
    ) -> embedding_pb2.GetCapabilitiesResponse:
        return await self._core.capabilities()

    async def Embed(
        self, request: embedding_pb2.EmbedRequest, context: Any
    ) -> embedding_pb2.EmbedResponse:
        return await self._core.embed(request)

    async def CreateCollection(
        self, request: embedding_pb2.CreateCollectionRequest, context: Any
    ) -> embedding_pb2.CreateCollectionResponse:
        collection = await self._core.create_collection(request)
        return embedding_pb2.CreateCollectionResponse(collection=collection)

    async def GetCollection(
        self, request: embedding_pb2.GetCollectionRequest, context: Any
    ) -> embedding_pb2.GetCollectionResponse:
        collection = await self._core.get_collection(request.name)
        return embedding_pb2.GetCollectionResponse(collection=collection)

    async def ListCollections(
        self, request: embedding_pb2.ListCollectionsRequest, context: Any
    ) -> embedding_pb2.ListCollectionsResponse:
        collections, token = await self._core.list_collections(
            page_size=request.page_size, page_token=request.page_token
        )
        return embedding_pb2.ListCollectionsResponse(collections=collections, next_page_token=token)

    async def DeleteCollection(
        self, request: embedding_pb2.DeleteCollectionRequest, context: Any
    ) -> embedding_pb2.DeleteCollectionResponse:
        collection = await self._core.delete_collection(request.name)
        return embedding_pb2.DeleteCollectionResponse(collection=collection)

    async def UpsertImages(
        self, request: embedding_pb2.UpsertImagesRequest, context: Any
    ) -> embedding_pb2.UpsertImagesResponse:
        return await self._core.upsert_images(request)

    async def DeletePoints(
        self, request: embedding_pb2.DeletePointsRequest, context: Any
    ) -> embedding_pb2.DeletePointsResponse:
        return await self._core.delete_points(request)

    async def Search(
        self, request: embedding_pb2.SearchRequest, context: Any
    ) -> embedding_pb2.SearchResponse:
        return await self._core.search(request)

    async def Match(
        self, request: embedding_pb2.MatchRequest, context: Any
    ) -> embedding_pb2.MatchResponse:
        return await self._core.match(request)

    async def ValidateEmbeddingSpec(
        self, request: embedding_pb2.ValidateEmbeddingSpecRequest, context: Any
    ) -> embedding_pb2.ValidateEmbeddingSpecResponse:
        spec = await self._core.validate_embedding_spec(request.spec)
        return embedding_pb2.ValidateEmbeddingSpecResponse(spec=spec)
