"""Delegated service tokens: the gateway calls a peer on behalf of the authenticated caller."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from visionmesh.common.auth import Principal, ServiceTokenSigner, current_principal
from visionmesh.common.errors import Unauthenticated

__all__ = ["GATEWAY_SCOPE_PREFIX", "DelegatedTokens"]

GATEWAY_SCOPE_PREFIX = "gateway:"
"""Scopes only the gateway grants (e.g. "gateway:resolved-export"); never passed on from a
caller, so no client can claim what the gateway vouches for."""

_CacheKey = tuple[str, str, str, str, tuple[str, ...]]


class DelegatedTokens:
    """Short-lived tokens for `audience` speaking for the current caller.

    `audience` may name several services: the token is then valid at each of them, for a
    peer that calls another on the caller's behalf (the embedding service's scene matching
    calls the inference service with the token it was given).

    A token carries the caller's subject, tenant, role, kind and scopes (less any
    "gateway:" scope), plus `extra_scopes` the gateway adds for one call. Tokens are cached
    per principal and renewed once less than `renew_before_seconds` of their life is left,
    so a busy caller costs one signature per few minutes, not one per call.

    As a `token_provider` of `visionmesh.common.rpc.connect` it is called inside the
    caller's task, where `current_principal()` is the caller; with no caller it raises
    Unauthenticated (the gateway never calls a delegated peer anonymously).
    """

    def __init__(
        self,
        signer: ServiceTokenSigner,
        *,
        audience: str | tuple[str, ...],
        ttl_seconds: float = 300.0,
        renew_before_seconds: float = 60.0,
        max_cached: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if renew_before_seconds >= ttl_seconds:
            raise ValueError("renew_before_seconds must be shorter than ttl_seconds")
        self._signer = signer
        self.audience = audience
        self._ttl = ttl_seconds
        self._renew_before = renew_before_seconds
        self._max_cached = max_cached
        self._clock = clock
        self._cache: OrderedDict[_CacheKey, tuple[str, float]] = OrderedDict()

    def __call__(self) -> str:
        return self.token()

    def token(self, *, extra_scopes: Sequence[str] = ()) -> str:
        """A token for the current caller, with `extra_scopes` granted by the gateway."""
        caller = current_principal()
        if caller is None:
            raise Unauthenticated("a delegated call needs an authenticated caller")
        return self.token_for(caller, extra_scopes=extra_scopes)

    def token_for(self, caller: Principal, *, extra_scopes: Sequence[str] = ()) -> str:
        scopes = tuple(
            sorted(
                {s for s in caller.scopes if not s.startswith(GATEWAY_SCOPE_PREFIX)}
                | set(extra_scopes)
            )
        )
        key: _CacheKey = (caller.subject, caller.tenant_id, caller.role, caller.kind, scopes)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now < cached[1]:
            self._cache.move_to_end(key)
            return cached[0]
        delegate = Principal(
            subject=caller.subject,
            tenant_id=caller.tenant_id,
            role=caller.role,
            kind=caller.kind,
            scopes=scopes,
        )
        token = self._signer.sign(
            audience=self.audience, principal=delegate, ttl_seconds=self._ttl, now=now
        )
        self._cache[key] = (token, now + self._ttl - self._renew_before)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return token

    def metadata(self, *, extra_scopes: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
        """Call metadata with the caller's token and `extra_scopes`: the client's token
        provider then stays out of the call."""
        return (("authorization", f"Bearer {self.token(extra_scopes=extra_scopes)}"),)
