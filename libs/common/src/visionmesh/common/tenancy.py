"""Each tenant's free area of the object store, where its callers name objects by key.

A caller names an object relative to its tenant's area ("inputs/a.jpg"); the store key is
`tenants/<tenant_id>/inputs/a.jpg`. Keys that could climb out ("..", a leading "/", a
backslash, empty segments) are refused, so a key outside the tenant cannot be formed.
"""

from __future__ import annotations

from visionmesh.common.errors import InvalidArgument

TENANTS_PREFIX = "tenants/"


def tenant_root(tenant_id: str) -> str:
    """The store prefix of a tenant's area, ending in "/"."""
    if not tenant_id or "/" in tenant_id:
        raise ValueError(f"not a tenant id: {tenant_id!r}")
    return f"{TENANTS_PREFIX}{tenant_id}/"


def tenant_key(tenant_id: str, key: str, *, field: str, prefix: bool = False) -> str:
    """The store key of `key` in the tenant's area; InvalidArgument naming `field` when
    `key` is not a plain relative key. With `prefix`, a trailing "/" is allowed (and added)."""
    relative = key[:-1] if prefix and key.endswith("/") else key
    if not relative:
        raise InvalidArgument.for_field(field, "must not be empty")
    if relative.startswith("/") or "\\" in relative:
        raise InvalidArgument.for_field(
            field, "must be a key relative to your tenant's area, without a leading '/' or '\\'"
        )
    segments = relative.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidArgument.for_field(
            field, "must not contain empty, '.' or '..' path segments (keys stay in your tenant)"
        )
    full = tenant_root(tenant_id) + relative
    return full + "/" if prefix else full


def relative_key(tenant_id: str, key: str) -> str:
    """`key` as its tenant names it (the inverse of `tenant_key`)."""
    root = tenant_root(tenant_id)
    if not key.startswith(root):
        raise ValueError(f"{key!r} is not in tenant {tenant_id!r}'s area")
    return key[len(root) :]
