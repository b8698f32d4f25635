"""Users, tenants, API keys and tokens: the gateway's auth core and its Authenticator."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import os
import secrets
import stat
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    bearer_token,
    current_principal,
    generate_signing_key,
    key_id,
    load_private_key,
    private_key_pem,
    require_principal,
)
from visionmesh.common.db import Database
from visionmesh.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from visionmesh.common.logging import get_logger
from visionmesh.common.settings import ConfigError
from visionmesh.gateway.config import GatewaySettings
from visionmesh.gateway.db.models import ApiKey, Tenant, User, new_id

__all__ = [
    "ACCESS_TOKEN_AUDIENCE",
    "ACCESS_TOKEN_TYPE",
    "API_KEY_PREFIX",
    "BOOTSTRAP_TENANT_ID",
    "ISSUER",
    "LOGIN_METHOD",
    "PUBLIC_METHODS",
    "SERVICE_TOKEN_AUDIENCE",
    "SIGNING_KEY_FILENAME",
    "SIGN_UP_METHOD",
    "AuthCore",
    "GatewayAuthenticator",
    "LoginLimiter",
    "Me",
    "PasswordHashPool",
    "RetryLater",
    "UserRole",
    "as_utc",
    "client_address",
    "hash_api_key",
    "load_or_create_signing_key",
]

UserRole = Literal["admin", "member"]

ISSUER: Final = "visionmesh-gateway"
ACCESS_TOKEN_AUDIENCE: Final = "visionmesh-gateway"
# RFC 9068's media type for JWT access tokens; it tells them apart from service tokens,
# which share the signing key, and is covered by the signature like the rest of the header.
ACCESS_TOKEN_TYPE: Final = "at+jwt"
SERVICE_TOKEN_AUDIENCE: Final = "gateway"
API_KEY_PREFIX: Final = "vm_"
API_KEY_SHOWN_CHARS: Final = 8
SIGNING_KEY_FILENAME: Final = "gateway-signing-key.pem"
DEFAULT_SERVICE_TOKEN_TTL_SECONDS: Final = 300
MAX_SERVICE_TOKEN_TTL_SECONDS: Final = 3600
MAX_API_KEY_TTL_DAYS: Final = 3650
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)

# The first user's tenant always gets this id. Its primary key is what makes the
# first-user sign-up race-safe: of two concurrent sign-ups on a fresh install both
# insert this row, and the database lets exactly one commit (see AuthCore.sign_up).
BOOTSTRAP_TENANT_ID: Final = str(uuid.UUID(int=1))

SIGN_UP_METHOD: Final = "/visionmesh.gateway.v1.AuthService/SignUp"
LOGIN_METHOD: Final = "/visionmesh.gateway.v1.AuthService/Login"
PUBLIC_METHODS: Final = frozenset({SIGN_UP_METHOD, LOGIN_METHOD})

_ALGORITHM = "EdDSA"
_VERIFIED_CACHE_SIZE = 10_000
_BAD_LOGIN = "invalid username or password"

_log = get_logger("visionmesh.gateway.auth")

_T = TypeVar("_T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; SQLite hands stored (UTC) times back naive."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def hash_api_key(secret: str) -> str:
    """The stored form of an API key secret (sha256 hex; the secret is 256-bit random)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _user_role(stored: str) -> UserRole:
    # Fail closed: anything but a stored "admin" grants member rights only.
    return "admin" if stored == "admin" else "member"


@dataclass(frozen=True, slots=True)
class Me:
    """The caller as GetMe describes it; `user` is None for service tokens."""

    principal: Principal
    user: User | None
    tenant: Tenant | None

    @property
    def credential_kind(self) -> str:
        return self.principal.kind


class RetryLater(ResourceExhausted):
    """RESOURCE_EXHAUSTED (HTTP 429) with a hint when to try again.

    The hint travels as a `google.rpc.RetryInfo` detail and as the ErrorInfo metadata
    `retry_after_seconds` (which the REST layer also sends as a `Retry-After` header).
    """

    def __init__(self, message: str, *, retry_after_seconds: float, reason: str) -> None:
        seconds = max(1, math.ceil(retry_after_seconds))
        super().__init__(
            f"{message}; retry in {seconds}s",
            reason=reason,
            metadata={"retry_after_seconds": str(seconds)},
        )
        self.retry_after_seconds = seconds

    def _extra_details(self) -> list[Message]:
        return [error_details_pb2.RetryInfo(retry_delay=Duration(seconds=self.retry_after_seconds))]


class PasswordHashPool:
    """Argon2 on a few threads of its own, with a bounded number of hashes waiting.

    Hashing is slow and memory-hard by design. On the event loop's default executor (which
    every S3 call and `asyncio.to_thread` use) a flood of logins would queue ahead of them
    and starve storage and readiness checks. Here at most `workers` hashes run at a time
    and at most `queue` more wait; beyond that a call is refused with RESOURCE_EXHAUSTED
    at once instead of queueing without bound.
    """

    def __init__(self, *, workers: int = 2, queue: int = 32) -> None:
        if workers <= 0 or queue < 0:
            raise ValueError("workers must be positive and queue non-negative")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password-hash")
        # Released when the hash is done (or cancelled before it started), not when the
        # awaiting coroutine goes away: a cancelled request's hash still occupies a thread.
        self._slots = threading.BoundedSemaphore(workers + queue)

    async def run(self, function: Callable[..., _T], *args: Any) -> _T:
        if not self._slots.acquire(blocking=False):
            raise RetryLater(
                "too many logins and sign-ups in progress",
                retry_after_seconds=1,
                reason="PASSWORD_HASHING_BUSY",
            )
        try:
            future = self._executor.submit(function, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stops the threads once running hashes finish; waiting ones are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class _Attempts:
    failures: deque[float] = field(default_factory=deque)
    in_flight: int = 0


_LimitKey = tuple[Literal["user", "address"], str]


class LoginLimiter:
    """Counts failed logins per username and per client address over a sliding window.

    A key with `max_failures` failures (plus attempts still being checked, so that a burst
    of concurrent guesses cannot slip past the count) within `window_seconds` is refused
    with RESOURCE_EXHAUSTED before its password is even hashed, the right password too,
    until its oldest counted failure leaves the window. A successful login clears the
    username's failures (not the address's: one valid account must not reset the count of
    an address guessing at others). State is per process and bounded: at most
    `max_tracked` keys, the least recently used ones are forgotten first.
    """

    def __init__(
        self,
        *,
        max_failures_per_user: int = 5,
        max_failures_per_address: int = 30,
        window_seconds: float = 300.0,
        max_tracked: int = 100_000,
    ) -> None:
        if min(max_failures_per_user, max_failures_per_address) <= 0 or window_seconds <= 0:
            raise ValueError("login limits and window must be positive")
        self._limits = {"user": max_failures_per_user, "address": max_failures_per_address}
        self._window = window_seconds
        self._max_tracked = max_tracked
        self._entries: OrderedDict[_LimitKey, _Attempts] = OrderedDict()

    @staticmethod
    def keys(username: str, address: str | None) -> list[_LimitKey]:
        # Usernames longer than any valid one (64) cannot exist: no need to keep them whole.
        keys: list[_LimitKey] = [("user", username[:65])]
        if address:
            keys.append(("address", address))
        return keys

    def begin(self, keys: list[_LimitKey], now: float) -> None:
        """Admits one attempt for every key, or raises RetryLater naming the wait."""
        wait = 0.0
        blocked: str | None = None
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            self._expire(entry, now)
            limit = self._limits[key[0]]
            if len(entry.failures) >= limit:
                # Admitted again once enough failures have left the window.
                until = entry.failures[len(entry.failures) - limit] + self._window - now
            elif len(entry.failures) + entry.in_flight >= limit:
                until = 1.0
            else:
                continue
            if until > wait:
                wait, blocked = until, key[0]
        if blocked is not None:
            _log.warning("login throttled", by=blocked, retry_after_seconds=math.ceil(wait))
            raise RetryLater(
                f"too many failed logins for this {'username' if blocked == 'user' else 'address'}",
                retry_after_seconds=wait,
                reason="LOGIN_THROTTLED",
            )
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Attempts()
                while len(self._entries) > self._max_tracked:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            entry.in_flight += 1

    def end(
        self, keys: list[_LimitKey], now: float, *, outcome: Literal["failed", "ok", "none"]
    ) -> None:
        """Ends an attempt `begin` admitted; "none" (e.g. refused as busy) counts nothing."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:  # forgotten meanwhile (max_tracked)
                continue
            entry.in_flight = max(0, entry.in_flight - 1)
            if outcome == "failed":
                entry.failures.append(now)
            elif outcome == "ok" and key[0] == "user":
                entry.failures.clear()
            self._expire(entry, now)
            if not entry.failures and not entry.in_flight:
                del self._entries[key]

    def _expire(self, entry: _Attempts, now: float) -> None:
        horizon = now - self._window
        while entry.failures and entry.failures[0] <= horizon:
            entry.failures.popleft()


def client_address(peer: str) -> str | None:
    """The client's address from a gRPC peer string, for per-address login limits.

    `ipv4:10.0.0.7:5000` -> `10.0.0.7`; IPv6 clients by their /64 (one host usually holds
    a whole /64), `ipv6:[2001:db8::1]:5000` -> `2001:db8::/64`; IPv4-mapped IPv6 as IPv4;
    loopback `::1` as itself. None for unix sockets and unknown peers.
    """
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        host = rest.rpartition(":")[0]
    elif kind == "ipv6":
        host = rest.rpartition(":")[0].strip("[]").split("%")[0]
    else:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if not ip.is_loopback:
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthCore:
    """Sign-up, login, API keys and service tokens, independent of any transport.

    Callers are read from `visionmesh.common.auth.current_principal()`, which the RPC
    interceptor binds from the request's credentials (see GatewayAuthenticator).
    """

    def __init__(
        self,
        *,
        db: Database,
        signing_key: Ed25519PrivateKey,
        access_token_ttl_seconds: int = 3600,
        open_signup: bool = False,
        issuer: str = ISSUER,
        password_hasher: PasswordHasher | None = None,
        hash_pool: PasswordHashPool | None = None,
        login_limiter: LoginLimiter | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if access_token_ttl_seconds <= 0:
            raise ValueError("access_token_ttl_seconds must be positive")
        self._db = db
        self._signing_key = signing_key
        self._key_id = key_id(signing_key.public_key())
        self._access_token_ttl = access_token_ttl_seconds
        self._open_signup = open_signup
        self._issuer = issuer
        self._hasher = password_hasher if password_hasher is not None else PasswordHasher()
        self._hash_pool = hash_pool if hash_pool is not None else PasswordHashPool()
        self._limiter = login_limiter if login_limiter is not None else LoginLimiter()
        self._clock = clock
        self._signer = ServiceTokenSigner(private_key=signing_key, issuer=issuer)
        # Verified against for unknown usernames so that they cost what a wrong password
        # costs and response times do not reveal which usernames exist.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    @classmethod
    def from_settings(
        cls,
        settings: GatewaySettings,
        *,
        db: Database,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> AuthCore:
        """The core as configured; `signing_key` defaults to `load_or_create_signing_key`."""
        return cls(
            db=db,
            signing_key=signing_key or load_or_create_signing_key(settings),
            access_token_ttl_seconds=settings.access_token_ttl_seconds,
            open_signup=settings.open_signup,
            hash_pool=PasswordHashPool(
                workers=settings.password_hash_workers, queue=settings.password_hash_queue
            ),
            login_limiter=LoginLimiter(
                max_failures_per_user=settings.login_max_failures_per_user,
                max_failures_per_address=settings.login_max_failures_per_address,
                window_seconds=settings.login_failure_window_seconds,
            ),
        )

    def close(self) -> None:
        """Releases the password-hashing threads."""
        self._hash_pool.close()

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._signing_key.public_key()

    def authenticator(self) -> GatewayAuthenticator:
        """The Authenticator accepting this core's access tokens, API keys and service tokens."""
        return GatewayAuthenticator(
            db=self._db, public_key=self.public_key, issuer=self._issuer, clock=self._clock
        )

    # --- users ------------------------------------------------------------------------

    async def sign_up(
        self,
        *,
        username: str,
        password: str,
        tenant_id: str | None = None,
        role: UserRole | None = None,
    ) -> tuple[User, Tenant]:
        """Creates a user; who may, and into which tenant, depends on the caller.

        - An admin may name their own tenant (`role` defaults to member) or none, which
          creates a tenant with the new user as its admin; another tenant is NOT_FOUND.
        - Anyone else (anonymous, or a member) gets a new tenant of their own as its admin,
          either when `open_signup` is set or as the very first user of a fresh install;
          otherwise sign-up is closed (PERMISSION_DENIED). Only admins pick tenant or role.

        The first-user check is race-safe without locks: the first user's tenant has the
        fixed id BOOTSTRAP_TENANT_ID, inserted in the same transaction as the user. Two
        concurrent first sign-ups both insert it; the primary key lets one commit, and the
        other (blocked on that row in PostgreSQL, on the write lock in SQLite) fails and is
        answered PERMISSION_DENIED. A duplicate username is caught the same way by the
        unique index, even between a check and the insert.
        """
        caller = current_principal()
        join_tenant_id: str | None = None
        bootstrap = False
        if caller is not None and caller.is_admin:
            if tenant_id:
                if tenant_id != caller.tenant_id:
                    raise NotFound(resource_type="tenant", resource_id=tenant_id)
                join_tenant_id = tenant_id
                new_role: UserRole = role or "member"
            else:
                if role == "member":
                    raise InvalidArgument.for_field(
                        "role", "the first user of a new tenant must be its admin"
                    )
                new_role = "admin"
        else:
            if tenant_id or role is not None:
                raise PermissionDenied(
                    "only admins may choose the tenant or role of a new user",
                    reason="ADMIN_REQUIRED",
                )
            new_role = "admin"
            bootstrap = not self._open_signup
            if bootstrap and await self._has_users():
                raise _sign_up_closed()

        password_hash = await self._hash_pool.run(self._hasher.hash, password)
        now = self._clock()
        async with self._db.session() as session:
            taken = await session.scalar(select(User.id).where(User.username == username))
            if taken is not None:
                raise _username_taken(username)
            if join_tenant_id is not None:
                tenant = await session.get(Tenant, join_tenant_id)
                if tenant is None:
                    raise NotFound(resource_type="tenant", resource_id=join_tenant_id)
            else:
                if bootstrap and await session.scalar(select(User.id).limit(1)) is not None:
                    raise _sign_up_closed()
                tenant = Tenant(
                    id=BOOTSTRAP_TENANT_ID if bootstrap else new_id(), name=username, created_at=now
                )
                session.add(tenant)
                try:
                    await session.flush()
                except IntegrityError:
                    if bootstrap:
                        raise _sign_up_closed() from None
                    raise
            user = User(
                tenant_id=tenant.id,
                username=username,
                password_hash=password_hash,
                role=new_role,
                created_at=now,
            )
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise _username_taken(username) from None
        _log.info(
            "user signed up",
            user_id=user.id,
            tenant_id=tenant.id,
            role=new_role,
            new_tenant=join_tenant_id is None,
            by=caller.subject if caller is not None else None,
        )
        return user, tenant

    async def _has_users(self) -> bool:
        async with self._db.session() as session:
            return await session.scalar(select(User.id).limit(1)) is not None

    async def login(
        self, *, username: str, password: str, client_address: str | None = None
    ) -> tuple[str, int]:
        """An access JWT and its lifetime in seconds; UNAUTHENTICATED on any mismatch.

        RESOURCE_EXHAUSTED (with a retry delay) after too many failed logins for the
        username or from `client_address` (see LoginLimiter), and when too many password
        hashes are in progress already (see PasswordHashPool).
        """
        keys = self._limiter.keys(username, client_address)
        self._limiter.begin(keys, self._clock().timestamp())
        outcome: Literal["failed", "ok", "none"] = "none"
        try:
            user = await self._check_password(username, password)
            outcome = "ok" if user is not None else "failed"
        finally:
            self._limiter.end(keys, self._clock().timestamp(), outcome=outcome)
        if user is None:
            raise Unauthenticated(_BAD_LOGIN, reason="INVALID_CREDENTIALS")
        return self._access_token(user), self._access_token_ttl

    async def _check_password(self, username: str, password: str) -> User | None:
        """The user when the password is theirs; None for an unknown user or a wrong one."""
        async with self._db.session() as session:
            user = await session.scalar(select(User).where(User.username == username))
        # Argon2 runs outside the transaction, on its own threads: it is slow by design.
        if user is None:
            await self._hash_pool.run(self._verify, self._dummy_hash, password)
            return None
        if not await self._hash_pool.run(self._verify, user.password_hash, password):
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            try:
                new_hash = await self._hash_pool.run(self._hasher.hash, password)
            except RetryLater:
                return user  # busy: the next login rehashes
            async with self._db.session() as session:
                # Conditional, so a password changed meanwhile is never overwritten.
                await session.execute(
                    update(User)
                    .where(User.id == user.id, User.password_hash == user.password_hash)
                    .values(password_hash=new_hash)
                )
        return user

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _access_token(self, user: User) -> str:
        issued_at = int(self._clock().timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": ACCESS_TOKEN_AUDIENCE,
            "sub": user.id,
            "tid": user.tenant_id,
            "role": _user_role(user.role),
            "kind": "user",
            "iat": issued_at,
            "exp": issued_at + self._access_token_ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            claims,
            self._signing_key,
            algorithm=_ALGORITHM,
            headers={"kid": self._key_id, "typ": ACCESS_TOKEN_TYPE},
        )

    async def get_me(self) -> Me:
        """The caller with their user row (None for a service token) and tenant."""
        caller = require_principal()
        async with self._db.session() as session:
            user: User | None = None
            if caller.kind != "service":
                user = await session.get(User, caller.subject)
                if user is None or user.tenant_id != caller.tenant_id:
                    raise Unauthenticated(
                        "the account these credentials belong to no longer exists",
                        reason="ACCOUNT_GONE",
                    )
            tenant = await session.get(Tenant, caller.tenant_id) if caller.tenant_id else None
        return Me(principal=caller, user=user, tenant=tenant)

    # --- API keys ---------------------------------------------------------------------

    async def create_api_key(self, *, name: str, ttl_days: int = 0) -> tuple[ApiKey, str]:
        """A new key of the caller and its secret, which is returned only here."""
        caller = _require_user()
        if not 0 <= ttl_days <= MAX_API_KEY_TTL_DAYS:
            raise InvalidArgument.for_field(
                "ttl_days", f"must be between 0 (never expires) and {MAX_API_KEY_TTL_DAYS}"
            )
        secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        key = ApiKey(
            tenant_id=caller.tenant_id,
            user_id=caller.subject,
            name=name,
            prefix=secret[:API_KEY_SHOWN_CHARS],
            secret_hash=hash_api_key(secret),
            created_at=now,
            expires_at=now + timedelta(days=ttl_days) if ttl_days else None,
        )
        async with self._db.session() as session:
            owner = await session.get(User, caller.subject)
            if owner is None or owner.tenant_id != caller.tenant_id:
                raise Unauthenticated(
                    "the account these credentials belong to no longer exists",
                    reason="ACCOUNT_GONE",
                )
            session.add(key)
        _log.info("api key created", api_key_id=key.id, user_id=caller.subject)
        return key, secret

    async def list_api_keys(self) -> list[ApiKey]:
        """The caller's own keys, newest first, revoked and expired ones included."""
        caller = _require_user()
        async with self._db.session() as session:
            keys = await session.scalars(
                select(ApiKey)
                .where(ApiKey.user_id == caller.subject, ApiKey.tenant_id == caller.tenant_id)
                .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
            )
            return list(keys)

    async def revoke_api_key(self, api_key_id: str) -> ApiKey:
        """Revokes one of the caller's keys (admins: any key of their tenant); idempotent.

        Another user's key (for non-admins) or another tenant's is NOT_FOUND.
        """
        caller = _require_user()
        async with self._db.session() as session:
            key = await session.scalar(
                select(ApiKey).where(ApiKey.id == api_key_id, ApiKey.tenant_id == caller.tenant_id)
            )
            if key is None or (key.user_id != caller.subject and not caller.is_admin):
                raise NotFound(resource_type="api_key", resource_id=api_key_id)
            if key.revoked_at is None:
                key.revoked_at = self._clock()
                _log.info("api key revoked", api_key_id=key.id, by=caller.subject)
        return key

    # --- service tokens ---------------------------------------------------------------

    async def issue_service_token(
        self, *, audience: str, ttl_seconds: int | None = None
    ) -> tuple[str, int]:
        """A service token for `audience` in the caller's tenant, and its lifetime; admins only.

        The token carries role and kind "service", never the admin's role, so it cannot
        mint further tokens or act as an admin at the gateway.
        """
        caller = require_principal()
        if not caller.is_admin or caller.kind == "service":
            raise PermissionDenied("only admins may issue service tokens", reason="ADMIN_REQUIRED")
        ttl = ttl_seconds or DEFAULT_SERVICE_TOKEN_TTL_SECONDS
        if not 0 < ttl <= MAX_SERVICE_TOKEN_TTL_SECONDS:
            raise InvalidArgument.for_field(
                "ttl_seconds", f"must be between 0 (default) and {MAX_SERVICE_TOKEN_TTL_SECONDS}"
            )
        if not audience or audience == ACCESS_TOKEN_AUDIENCE:
            raise InvalidArgument.for_field("audience", "must name a service, e.g. 'training'")
        principal = Principal(
            subject=caller.subject, tenant_id=caller.tenant_id, role="service", kind="service"
        )
        token = self._signer.sign(
            audience=audience, principal=principal, ttl_seconds=ttl, now=self._clock().timestamp()
        )
        _log.info("service token issued", audience=audience, ttl_seconds=ttl, by=caller.subject)
        return token, ttl


def _require_user() -> Principal:
    caller = require_principal()
    if caller.kind == "service":
        raise PermissionDenied(
            "API keys belong to users; a service token cannot manage them",
            reason="USER_REQUIRED",
        )
    return caller


def _sign_up_closed() -> PermissionDenied:
    return PermissionDenied(
        "sign-up is closed: ask an admin of your tenant to create your account",
        reason="SIGN_UP_CLOSED",
    )


def _username_taken(username: str) -> AlreadyExists:
    return AlreadyExists(
        f"username {username!r} is taken", resource_type="user", resource_id=username
    )


class GatewayAuthenticator:
    """The gateway's Authenticator: access JWTs, API keys and gateway-audience service tokens.

    `authorization: Bearer <x>` where x is an access JWT from Login (`typ: at+jwt`), an
    API key (`vm_...`), or a service token for audience "gateway". Bad credentials raise
    Unauthenticated and change nothing; no credentials give None.

    SignUp and Login are public, which the interceptor treats as optional authentication:
    it calls `authenticate` on every method and rejects a None principal only on
    non-public ones. So SignUp sees an admin caller when a token is sent (and a bad token
    is rejected rather than silently downgraded to an anonymous sign-up); Login never
    needs a caller, so its credentials are not even looked at (a client holding an
    expired token can still log in).

    Caching: a verified access token is remembered until its `exp` (at most
    `_VERIFIED_CACHE_SIZE` of them, the oldest-inserted dropped first), so a repeat request
    skips the EdDSA check; access tokens cannot be revoked before they expire anyway.
    Service tokens are verified on every request. API keys are never cached: each is looked
    up, so a revocation takes effect at once.
    """

    def __init__(
        self,
        *,
        db: Database,
        public_key: Ed25519PublicKey,
        issuer: str = ISSUER,
        service_audience: str = SERVICE_TOKEN_AUDIENCE,
        leeway_seconds: float = 5.0,
        last_used_resolution: timedelta = LAST_USED_RESOLUTION,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._db = db
        self._public_key = public_key
        self._key_id = key_id(public_key)
        self._issuer = issuer
        self._leeway = leeway_seconds
        self._last_used_resolution = last_used_resolution
        self._clock = clock
        # Access tokens are stateless until they expire, so a verified one is remembered
        # until then: an EdDSA verification per request was the gateway's largest
        # per-request cost. (API keys are looked up every time: revocation is immediate.)
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._service_tokens = ServiceTokenVerifier(
            public_keys=(public_key,),
            audience=service_audience,
            issuer=issuer,
            leeway_seconds=leeway_seconds,
        )

    def is_public(self, method: str) -> bool:
        return method in PUBLIC_METHODS

    async def authenticate(self, *, method: str, metadata: Mapping[str, str]) -> Principal | None:
        if method == LOGIN_METHOD:
            return None
        token = bearer_token(metadata)
        if token is None:
            return None
        if token.startswith(API_KEY_PREFIX):
            return await self.verify_api_key(token)
        return self.verify_token(token)

    def verify_token(self, token: str) -> Principal:
        """The Principal of an access JWT or a gateway-audience service token."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthenticated(
                "malformed bearer token: expected an access token, API key or service token",
                reason="TOKEN_MALFORMED",
            ) from None
        if header.get("typ") == ACCESS_TOKEN_TYPE:
            cached = self._verified.get(token)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            principal, expires_at = self._verify_access_token(token, header)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (principal, expires_at)
            return principal
        return self._service_tokens.verify(token)

    def _verify_access_token(
        self, token: str, header: Mapping[str, Any]
    ) -> tuple[Principal, float]:
        if header.get("alg") != _ALGORITHM:
            raise Unauthenticated(
                f"access token algorithm {header.get('alg')!r} is not allowed; "
                f"tokens must be signed with {_ALGORITHM}",
                reason="TOKEN_INVALID",
            )
        if header.get("kid") != self._key_id:
            raise Unauthenticated(
                "access token is signed by an unknown key; log in again", reason="TOKEN_INVALID"
            )
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=[_ALGORITHM],
                audience=ACCESS_TOKEN_AUDIENCE,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated(
                "access token has expired; log in again", reason="TOKEN_EXPIRED"
            ) from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(
                f"access token is not for the gateway (audience must be {ACCESS_TOKEN_AUDIENCE!r})",
                reason="TOKEN_WRONG_AUDIENCE",
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                f"access token issuer must be {self._issuer!r}", reason="TOKEN_INVALID"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"access token lacks the {exc.claim!r} claim", reason="TOKEN_INVALID"
            ) from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated(
                "access token signature is invalid", reason="TOKEN_INVALID"
            ) from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("access token is not valid yet", reason="TOKEN_INVALID") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed access token", reason="TOKEN_MALFORMED") from None
        tenant_id, role = claims.get("tid"), claims.get("role")
        if (
            claims.get("kind") != "user"
            or role not in ("admin", "member")
            or not isinstance(tenant_id, str)
            or not tenant_id
        ):
            raise Unauthenticated(
                "access token has invalid kind, role or tid claims", reason="TOKEN_INVALID"
            )
        principal = Principal(
            subject=str(claims["sub"]), tenant_id=tenant_id, role=_user_role(role), kind="user"
        )
        return principal, float(claims["exp"])

    async def verify_api_key(self, secret: str) -> Principal:
        """The Principal of a live API key; its owner's current role applies.

        `last_used_at` is written at most once per `last_used_resolution`, so a busy key
        does not turn every request into a write.
        """
        now = self._clock()
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(ApiKey, User.role)
                    .join(User, User.id == ApiKey.user_id)
                    .where(ApiKey.secret_hash == hash_api_key(secret))
                )
            ).first()
            if row is None:
                raise Unauthenticated("API key is not valid", reason="API_KEY_INVALID")
            key, role = row
            if key.revoked_at is not None:
                raise Unauthenticated("API key has been revoked", reason="API_KEY_REVOKED")
            if key.expires_at is not None and as_utc(key.expires_at) <= now:
                raise Unauthenticated("API key has expired", reason="API_KEY_EXPIRED")
            last_used = key.last_used_at
            if last_used is None or now - as_utc(last_used) >= self._last_used_resolution:
                key.last_used_at = now
            return Principal(
                subject=key.user_id, tenant_id=key.tenant_id, role=_user_role(role), kind="api_key"
            )


# --- signing key --------------------------------------------------------------------------


def load_or_create_signing_key(settings: GatewaySettings) -> Ed25519PrivateKey:
    """The gateway's Ed25519 key from `signing_key_file` (default: data dir), made if missing.

    A new key is written with mode 0600 and linked into place atomically, so processes
    starting together end up with the same key and never read a half-written file.
    """
    path = settings.signing_key_file or settings.data_dir / SIGNING_KEY_FILENAME
    variable = "VISIONMESH_SIGNING_KEY_FILE"
    try:
        return _read_signing_key(path, variable)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_signing_key()
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(private_key_pem(key))
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            # Another process created it first: sign with its key, not a second one.
            return _read_signing_key(path, variable)
    finally:
        temporary.unlink(missing_ok=True)
    _log.info("generated a new token signing key", path=str(path))
    return key


def _read_signing_key(path: os.PathLike[str], variable: str) -> Ed25519PrivateKey:
    with open(path, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        pem = file.read()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning(
            "token signing key is readable by other users; chmod 600 it", path=os.fspath(path)
        )
    try:
        return load_private_key(pem)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            [f"{variable} ({os.fspath(path)}) is not an Ed25519 private key in PEM: {exc}"]
        ) from None
