"""Conversions between the auth core's rows and visionmesh.gateway.v1 auth messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.gateway.v1 import auth_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.gateway.core.auth import Me, UserRole, as_utc
from visionmesh.gateway.db.models import ApiKey, Tenant, User

__all__ = [
    "api_key_to_proto",
    "get_me_response",
    "role_from_proto",
    "role_to_proto",
    "tenant_to_proto",
    "timestamp",
    "user_to_proto",
]

_ROLE_TO_PROTO: dict[str, auth_pb2.Role] = {
    "admin": auth_pb2.ROLE_ADMIN,
    "member": auth_pb2.ROLE_MEMBER,
}
_ROLE_FROM_PROTO: dict[auth_pb2.Role, UserRole] = {
    auth_pb2.ROLE_ADMIN: "admin",
    auth_pb2.ROLE_MEMBER: "member",
}


def role_from_proto(value: auth_pb2.Role) -> UserRole | None:
    """None for ROLE_UNSPECIFIED (the core picks the default); unknown numbers are invalid."""
    if value == auth_pb2.ROLE_UNSPECIFIED:
        return None
    try:
        return _ROLE_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument.for_field("role", f"unknown role {value}") from None


def role_to_proto(role: str) -> auth_pb2.Role:
    return _ROLE_TO_PROTO.get(role, auth_pb2.ROLE_UNSPECIFIED)


def timestamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(as_utc(value))
    return result


def user_to_proto(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=user.id,
        username=user.username,
        tenant_id=user.tenant_id,
        role=role_to_proto(user.role),
        create_time=timestamp(user.created_at),
    )


def tenant_to_proto(tenant: Tenant) -> auth_pb2.Tenant:
    return auth_pb2.Tenant(id=tenant.id, name=tenant.name, create_time=timestamp(tenant.created_at))


def api_key_to_proto(key: ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        user_id=key.user_id,
        create_time=timestamp(key.created_at),
    )
    if key.expires_at is not None:
        message.expire_time.CopyFrom(timestamp(key.expires_at))
    if key.revoked_at is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoked_at))
    if key.last_used_at is not None:
        message.last_used_time.CopyFrom(timestamp(key.last_used_at))
    return message


def get_me_response(me: Me) -> auth_pb2.GetMeResponse:
    """A service token's caller is a User with an empty id in the token's tenant."""
    if me.user is not None:
        user = user_to_proto(me.user)
    else:
        user = auth_pb2.User(tenant_id=me.principal.tenant_id)
    response = auth_pb2.GetMeResponse(user=user, credential_kind=me.credential_kind)
    if me.tenant is not None:
        response.tenant.CopyFrom(tenant_to_proto(me.tenant))
    return response
