"""Who is calling: the Principal, its per-request contextvar, and gateway-minted service tokens."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast, get_args, runtime_checkable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from visionmesh.common.errors import Unauthenticated

__all__ = [
    "ALWAYS_PUBLIC_SERVICES",
    "AUTHORIZATION_METADATA_KEY",
    "Authenticator",
    "Principal",
    "PrincipalKind",
    "Role",
    "ServiceTokenSigner",
    "ServiceTokenVerifier",
    "bearer_token",
    "bind_principal",
    "current_principal",
    "generate_signing_key",
    "is_always_public",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "require_principal",
]

Role = Literal["admin", "member", "service"]
PrincipalKind = Literal["user", "api_key", "service"]

AUTHORIZATION_METADATA_KEY = "authorization"

# Probes and tooling must work without credentials: kubelet health checks, grpcurl.
ALWAYS_PUBLIC_SERVICES: frozenset[str] = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_ALGORITHM = "EdDSA"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller; every resource access is scoped to `tenant_id`."""

    subject: str
    tenant_id: str
    role: Role
    kind: PrincipalKind
    scopes: tuple[str, ...] = ()

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


_principal: ContextVar[Principal | None] = ContextVar("visionmesh_principal", default=None)


def current_principal() -> Principal | None:
    """The caller of the RPC being handled, or None when anonymous (public method, no auth)."""
    return _principal.get()


def require_principal() -> Principal:
    """The caller of the RPC being handled; raises Unauthenticated when there is none."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this operation requires an authenticated caller")
    return principal


@contextmanager
def bind_principal(principal: Principal | None) -> Iterator[Principal | None]:
    """Make `principal` the current caller inside the block (the auth interceptor uses this)."""
    token = _principal.set(principal)
    try:
        yield principal
    finally:
        _principal.reset(token)


def is_always_public(method: str) -> bool:
    """Health and reflection RPCs (`/grpc.health.v1.Health/Check`) never require credentials."""
    service = method.lstrip("/").partition("/")[0]
    return service in ALWAYS_PUBLIC_SERVICES


@runtime_checkable
class Authenticator(Protocol):
    """Turns request metadata into a Principal; plugged into the server's auth interceptor.

    `authenticate` raises Unauthenticated to reject bad credentials and returns None when
    none were sent. The interceptor then rejects the call unless `is_public(method)`.
    """

    def is_public(self, method: str) -> bool: ...

    async def authenticate(
        self, *, method: str, metadata: Mapping[str, str]
    ) -> Principal | None: ...


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, None when absent."""
    value = metadata.get(AUTHORIZATION_METADATA_KEY)
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "malformed authorization metadata: expected 'Bearer <token>'",
            reason="TOKEN_MALFORMED",
        )
    return token.strip()


# --- keys -------------------------------------------------------------------------------


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes | str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_as_bytes(pem), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("service token signing key must be an Ed25519 private key")
    return key


def load_public_key(pem: bytes | str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(_as_bytes(pem))
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("service token verification key must be an Ed25519 public key")
    return key


def _as_bytes(pem: bytes | str) -> bytes:
    return pem.encode() if isinstance(pem, str) else pem


def key_id(key: Ed25519PublicKey) -> str:
    """A stable short id (`kid` header) so verifiers can hold several keys during rotation."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


# --- service tokens -----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceTokenSigner:
    """Mints short-lived EdDSA JWTs for service-to-service calls.

    Only the gateway is configured with the private key; every other service holds the
    public key in a ServiceTokenVerifier. Tests use this class to mint tokens too.
    """

    private_key: Ed25519PrivateKey
    issuer: str = "visionmesh-gateway"
    default_ttl_seconds: float = 60.0

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    def sign(
        self,
        *,
        audience: str | Sequence[str],
        principal: Principal,
        ttl_seconds: float | None = None,
        now: float | None = None,
    ) -> str:
        """A token for calling the service named `audience` on behalf of `principal`.

        Several audiences make one token valid for each of those services: a call that
        goes on to a second service with the caller's token (embedding -> inference).
        """
        issued_at = int(now if now is not None else time.time())
        ttl = self.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience if isinstance(audience, str) else list(audience),
            "sub": principal.subject,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + int(ttl),
            "jti": uuid.uuid4().hex,
            "tenant_id": principal.tenant_id,
            "role": principal.role,
            "kind": principal.kind,
            "scope": " ".join(principal.scopes),
        }
        return jwt.encode(
            claims,
            self.private_key,
            algorithm=_ALGORITHM,
            headers={"kid": key_id(self.public_key)},
        )


@dataclass(frozen=True)
class ServiceTokenVerifier:
    """Authenticator for internal services: verifies gateway-minted tokens for `audience`.

    Checks the EdDSA signature against the configured public keys (several during key
    rotation, picked by `kid`), `aud`, `iss`, `exp`/`nbf` (with `leeway_seconds` for clock
    skew); anything else is rejected as Unauthenticated, including `alg: none`.
    """

    public_keys: tuple[Ed25519PublicKey, ...]
    audience: str
    issuer: str = "visionmesh-gateway"
    leeway_seconds: float = 5.0
    public_methods: frozenset[str] = field(default_factory=frozenset)
    """Full method names (`/pkg.Service/Method`) callable without a token."""
    _keys_by_id: Mapping[str, Ed25519PublicKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.public_keys:
            raise ValueError("ServiceTokenVerifier needs at least one public key")
        keys = {key_id(key): key for key in self.public_keys}
        object.__setattr__(self, "_keys_by_id", keys)

    @classmethod
    def from_pem(
        cls,
        pems: Iterable[bytes | str],
        *,
        audience: str,
        issuer: str = "visionmesh-gateway",
        public_methods: Collection[str] = (),
    ) -> ServiceTokenVerifier:
        return cls(
            public_keys=tuple(load_public_key(pem) for pem in pems),
            audience=audience,
            issuer=issuer,
            public_methods=frozenset(public_methods),
        )

    def is_public(self, method: str) -> bool:
        return method in self.public_methods

    async def authenticate(self, *, method: str, metadata: Mapping[str, str]) -> Principal | None:
        token = bearer_token(metadata)
        return None if token is None else self.verify(token)

    def verify(self, token: str) -> Principal:
        """The Principal a valid token speaks for; raises Unauthenticated otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated("malformed service token", reason="TOKEN_MALFORMED") from None
        if header.get("alg") != _ALGORITHM:
            raise Unauthenticated(
                f"service token algorithm {header.get('alg')!r} is not allowed; "
                f"tokens must be signed with {_ALGORITHM}",
                reason="TOKEN_INVALID",
            )
        key = self._keys_by_id.get(str(header.get("kid")))
        if key is None:
            raise Unauthenticated(
                "service token is signed by an unknown key", reason="TOKEN_INVALID"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("service token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"service token is not for this service (audience must be {self.audience!r})",
                reason="TOKEN_WRONG_AUDIENCE",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"service token issuer must be {self.issuer!r}", reason="TOKEN_INVALID"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated(
                "service token is not valid yet", reason="TOKEN_INVALID"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"service token lacks the {exc.claim!r} claim", reason="TOKEN_INVALID"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "service token signature is invalid", reason="TOKEN_INVALID"
            ) from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed service token", reason="TOKEN_MALFORMED") from None
        return _principal_from_claims(claims)


def _principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    role = claims.get("role")
    kind = claims.get("kind")
    if role not in get_args(Role) or kind not in get_args(PrincipalKind):
        raise Unauthenticated(
            "service token has an invalid role or kind claim", reason="TOKEN_INVALID"
        )
    tenant_id = claims.get("tenant_id", "")
    scope = claims.get("scope", "")
    if not isinstance(tenant_id, str) or not isinstance(scope, str):
        raise Unauthenticated(
            "service token has an invalid tenant_id or scope claim", reason="TOKEN_INVALID"
        )
    return Principal(
        subject=str(claims["sub"]),
        tenant_id=tenant_id,
        role=cast(Role, role),
        kind=cast(PrincipalKind, kind),
        scopes=tuple(scope.split()),
    )
