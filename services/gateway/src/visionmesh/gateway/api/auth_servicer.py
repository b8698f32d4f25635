"""gRPC adapter of visionmesh.gateway.v1.AuthService over AuthCore."""

from __future__ import annotations

from typing import Any

import grpc
from visionmesh.api.gateway.v1 import auth_pb2, auth_pb2_grpc
from visionmesh.gateway.core.auth import AuthCore, client_address
from visionmesh.gateway.core.convert_auth import (
    api_key_to_proto,
    get_me_response,
    role_from_proto,
    user_to_proto,
)

__all__ = ["SERVICE_NAME", "AuthServicer"]

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):  # type: ignore[misc]
    """Converts requests, calls AuthCore, converts back; requests arrive validated."""

    def __init__(self, core: AuthCore) -> None:
        self._core = core

    async def SignUp(
        self, request: auth_pb2.SignUpRequest, context: Context
    ) -> auth_pb2.SignUpResponse:
        user, _tenant = await self._core.sign_up(
            username=request.username,
            password=request.password,
            tenant_id=request.tenant_id or None,
            role=role_from_proto(request.role),
        )
        return auth_pb2.SignUpResponse(user=user_to_proto(user))

    async def Login(
        self, request: auth_pb2.LoginRequest, context: Context
    ) -> auth_pb2.LoginResponse:
        token, expires_in = await self._core.login(
            username=request.username,
            password=request.password,
            client_address=client_address(context.peer()),
        )
        return auth_pb2.LoginResponse(
            access_token=token, expires_in=expires_in, token_type="Bearer"
        )

    async def GetMe(
        self, request: auth_pb2.GetMeRequest, context: Context
    ) -> auth_pb2.GetMeResponse:
        return get_me_response(await self._core.get_me())

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Context
    ) -> auth_pb2.CreateApiKeyResponse:
        key, secret = await self._core.create_api_key(name=request.name, ttl_days=request.ttl_days)
        return auth_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(key), secret=secret)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Context
    ) -> auth_pb2.ListApiKeysResponse:
        keys = await self._core.list_api_keys()
        return auth_pb2.ListApiKeysResponse(api_keys=[api_key_to_proto(key) for key in keys])

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Context
    ) -> auth_pb2.RevokeApiKeyResponse:
        key = await self._core.revoke_api_key(request.id)
        return auth_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(key))

    async def IssueServiceToken(
        self, request: auth_pb2.IssueServiceTokenRequest, context: Context
    ) -> auth_pb2.IssueServiceTokenResponse:
        token, expires_in = await self._core.issue_service_token(
            audience=request.audience, ttl_seconds=request.ttl_seconds or None
        )
        return auth_pb2.IssueServiceTokenResponse(token=token, expires_in=expires_in)
