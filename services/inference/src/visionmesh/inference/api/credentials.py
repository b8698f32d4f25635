"""Who may call the inference service: gateway service tokens, and users' own credentials.

The gateway forwards InferenceService calls with service tokens it mints (audience
"inference"); those are verified here with its public key. Clients built for Triton call the
KServe ports directly, with what they already hold: an API key (`vm_...`), an access token
from login, or an issued service token. Credentials that are not a service token for this
service are checked by the gateway itself (`AuthService.GetMe` with that credential), and
the answer is cached briefly, so a revoked key stops working within `cache_seconds`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Mapping
from typing import cast

from visionmesh.api.gateway.v1 import auth_pb2, auth_pb2_grpc
from visionmesh.common.auth import (
    AUTHORIZATION_METADATA_KEY,
    Principal,
    PrincipalKind,
    Role,
    ServiceTokenVerifier,
    bearer_token,
)
from visionmesh.common.errors import Unauthenticated, Unavailable
from visionmesh.common.rpc import GrpcClient

_KINDS = frozenset({"user", "api_key", "service"})
_CACHE_LIMIT = 10_000


class GatewayCredentials:
    """An Authenticator: service tokens for this service, else whatever the gateway accepts."""

    def __init__(
        self,
        tokens: ServiceTokenVerifier,
        gateway: GrpcClient | None,
        *,
        public_methods: Collection[str] = (),
        cache_seconds: float = 30.0,
    ) -> None:
        self._tokens = tokens
        self._gateway = gateway
        self._stub = auth_pb2_grpc.AuthServiceStub(gateway.channel) if gateway else None
        self._public = frozenset(public_methods)
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[float, Principal]] = {}

    def is_public(self, method: str) -> bool:
        return method in self._public or self._tokens.is_public(method)

    async def authenticate(self, *, method: str, metadata: Mapping[str, str]) -> Principal | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        try:
            return self._tokens.verify(token)
        except Unauthenticated:
            if self._stub is None:
                raise
        return await self._from_gateway(token)

    async def _from_gateway(self, token: str) -> Principal:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        assert self._stub is not None
        try:
            me: auth_pb2.GetMeResponse = await self._stub.GetMe(
                auth_pb2.GetMeRequest(),
                metadata=((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"),),
            )
        except Unauthenticated:
            raise
        except Unavailable as exc:
            raise Unavailable(
                f"the gateway, which checks these credentials, cannot be reached: {exc.message}"
            ) from None
        principal = _principal(me)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (now + self._ttl, principal)
        return principal


def _principal(me: auth_pb2.GetMeResponse) -> Principal:
    if me.credential_kind not in _KINDS or not me.tenant.id:
        raise Unauthenticated("these credentials do not belong to a tenant", reason="NO_TENANT")
    if me.credential_kind == "service":
        # A service token for another service: not for this one.
        raise Unauthenticated(
            "service token is not for this service (audience must be 'inference')",
            reason="TOKEN_WRONG_AUDIENCE",
        )
    role: Role = "admin" if me.user.role == auth_pb2.ROLE_ADMIN else "member"
    return Principal(
        subject=me.user.id,
        tenant_id=me.tenant.id,
        role=role,
        kind=cast(PrincipalKind, me.credential_kind),
    )
