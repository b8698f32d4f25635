"""Gateway auth: sign-up rules, login, access tokens, API keys, service tokens, rejections."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import grpc
import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2
from sqlalchemy import select, update
from visionmesh.api.gateway.v1 import auth_pb2, auth_pb2_grpc
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    bind_principal,
    key_id,
    public_key_pem,
)
from visionmesh.common.db import Database
from visionmesh.common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    from_rpc_error,
)
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import ConfigError, ServiceSettings
from visionmesh.gateway.api.auth_servicer import SERVICE_NAME, AuthServicer
from visionmesh.gateway.config import GatewaySettings
from visionmesh.gateway.core.auth import (
    ACCESS_TOKEN_AUDIENCE,
    ACCESS_TOKEN_TYPE,
    BOOTSTRAP_TENANT_ID,
    ISSUER,
    LOGIN_METHOD,
    SIGN_UP_METHOD,
    SIGNING_KEY_FILENAME,
    AuthCore,
    GatewayAuthenticator,
    LoginLimiter,
    PasswordHashPool,
    as_utc,
    client_address,
    load_or_create_signing_key,
)
from visionmesh.gateway.core.convert_auth import api_key_to_proto, get_me_response
from visionmesh.gateway.db.models import ApiKey, Base, Tenant, User

from tests.gateway.conftest import GatewayFactory

# Cheap parameters: the tests exercise the rules, not argon2's cost.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse battery"
GET_ME = "/visionmesh.gateway.v1.AuthService/GetMe"


class Clock:
    """A settable clock for the core and the authenticator."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class CountingHasher(PasswordHasher):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verifications += 1
        return super().verify(hash, password)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.create_all(Base.metadata)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def core(db: Database, signing_key: Ed25519PrivateKey) -> AuthCore:
    return AuthCore(db=db, signing_key=signing_key, password_hasher=FAST_HASHER)


@pytest.fixture
def auth(core: AuthCore) -> GatewayAuthenticator:
    return core.authenticator()


def principal_of(user: User, *, kind: str = "user") -> Principal:
    return Principal(
        subject=user.id,
        tenant_id=user.tenant_id,
        role="admin" if user.role == "admin" else "member",
        kind="api_key" if kind == "api_key" else "user",
    )


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def bootstrap(core: AuthCore, username: str = "root") -> tuple[User, Principal]:
    """The first user of the install (admin of the bootstrap tenant) and its principal."""
    user, _tenant = await core.sign_up(username=username, password=PASSWORD)
    return user, principal_of(user)


async def add_user(
    core: AuthCore,
    admin: Principal,
    username: str,
    *,
    role: str | None = None,
    own_tenant: bool = True,
) -> tuple[User, Principal]:
    """A user created by `admin`: in the admin's tenant, or (own_tenant=False) a new one."""
    with bind_principal(admin):
        user, _ = await core.sign_up(
            username=username,
            password=PASSWORD,
            tenant_id=admin.tenant_id if own_tenant else None,
            role=role,  # type: ignore[arg-type]
        )
    return user, principal_of(user)


async def db_state(db: Database) -> tuple[list[Any], ...]:
    """Everything a rejected request must leave alone."""
    async with db.session() as session:
        tenants = (await session.execute(select(Tenant.id).order_by(Tenant.id))).all()
        users = (
            await session.execute(select(User.id, User.role, User.password_hash).order_by(User.id))
        ).all()
        keys = (
            await session.execute(
                select(ApiKey.id, ApiKey.revoked_at, ApiKey.last_used_at).order_by(ApiKey.id)
            )
        ).all()
    return [tuple(r) for r in tenants], [tuple(r) for r in users], [tuple(r) for r in keys]


async def get_key(db: Database, key_id_: str) -> ApiKey:
    async with db.session() as session:
        key = await session.get(ApiKey, key_id_)
    assert key is not None
    return key


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


# --- sign-up ------------------------------------------------------------------------------


async def test_first_user_becomes_admin_of_a_new_tenant(core: AuthCore, db: Database) -> None:
    user, tenant = await core.sign_up(username="root", password=PASSWORD)

    assert user.role == "admin"
    assert user.tenant_id == tenant.id == BOOTSTRAP_TENANT_ID
    assert tenant.name == "root"
    assert user.password_hash != PASSWORD
    assert FAST_HASHER.verify(user.password_hash, PASSWORD)
    tenants, users, _ = await db_state(db)
    assert len(tenants) == len(users) == 1


async def test_sign_up_is_closed_after_the_first_user(core: AuthCore, db: Database) -> None:
    _, admin = await bootstrap(core)
    _, member = await add_user(core, admin, "member1")
    before = await db_state(db)

    with pytest.raises(PermissionDenied) as anonymous:
        await core.sign_up(username="intruder", password=PASSWORD)
    with bind_principal(member), pytest.raises(PermissionDenied):
        await core.sign_up(username="intruder", password=PASSWORD)

    assert anonymous.value.reason == "SIGN_UP_CLOSED"
    assert await db_state(db) == before


async def test_concurrent_first_sign_ups_make_exactly_one_admin(
    core: AuthCore, db: Database
) -> None:
    results = await asyncio.gather(
        *(core.sign_up(username=f"first{i}", password=PASSWORD) for i in range(6)),
        return_exceptions=True,
    )

    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, PermissionDenied) for r in losers), losers
    tenants, users, _ = await db_state(db)
    assert tenants == [(BOOTSTRAP_TENANT_ID,)]
    assert len(users) == 1


async def test_duplicate_username_is_already_exists(core: AuthCore, db: Database) -> None:
    _, admin = await bootstrap(core)
    before = await db_state(db)

    with bind_principal(admin), pytest.raises(AlreadyExists):
        await core.sign_up(username="root", password=PASSWORD, tenant_id=admin.tenant_id)
    with bind_principal(admin), pytest.raises(AlreadyExists):
        await core.sign_up(username="root", password=PASSWORD)

    assert await db_state(db) == before


async def test_concurrent_open_sign_ups_with_one_username(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    core = AuthCore(db=db, signing_key=signing_key, open_signup=True, password_hasher=FAST_HASHER)

    results = await asyncio.gather(
        *(core.sign_up(username="same", password=PASSWORD) for _ in range(4)),
        return_exceptions=True,
    )

    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, AlreadyExists) for r in results if isinstance(r, BaseException))
    tenants, users, _ = await db_state(db)
    assert len(tenants) == len(users) == 1


async def test_admin_adds_users_to_own_tenant(core: AuthCore) -> None:
    root, admin = await bootstrap(core)

    member, _ = await add_user(core, admin, "member1")
    second_admin, _ = await add_user(core, admin, "admin2", role="admin")

    assert (member.tenant_id, member.role) == (root.tenant_id, "member")
    assert (second_admin.tenant_id, second_admin.role) == (root.tenant_id, "admin")


async def test_admin_without_tenant_creates_a_new_tenant(core: AuthCore) -> None:
    root, admin = await bootstrap(core)

    with bind_principal(admin):
        other, tenant = await core.sign_up(username="other-admin", password=PASSWORD)
        with pytest.raises(InvalidArgument) as member_of_new:
            await core.sign_up(username="orphan", password=PASSWORD, role="member")

    assert tenant.id == other.tenant_id != root.tenant_id
    assert other.role == "admin"
    assert member_of_new.value.field_violations[0].field == "role"


async def test_admin_cannot_sign_up_into_another_tenant(core: AuthCore, db: Database) -> None:
    _, admin_a = await bootstrap(core)
    user_b, admin_b = await add_user(core, admin_a, "admin-b", own_tenant=False)
    before = await db_state(db)

    with bind_principal(admin_a):
        with pytest.raises(NotFound):
            await core.sign_up(username="spy", password=PASSWORD, tenant_id=user_b.tenant_id)
        with pytest.raises(NotFound):
            await core.sign_up(username="spy", password=PASSWORD, tenant_id="no-such-tenant")
    with bind_principal(admin_b), pytest.raises(NotFound):
        await core.sign_up(username="spy", password=PASSWORD, tenant_id=admin_a.tenant_id)

    assert await db_state(db) == before


async def test_only_admins_choose_tenant_or_role(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    core = AuthCore(db=db, signing_key=signing_key, open_signup=True, password_hasher=FAST_HASHER)
    _, admin = await bootstrap(core)
    _, member = await add_user(core, admin, "member1")

    with pytest.raises(PermissionDenied):
        await core.sign_up(username="x1", password=PASSWORD, tenant_id=admin.tenant_id)
    with pytest.raises(PermissionDenied):
        await core.sign_up(username="x2", password=PASSWORD, role="admin")
    with bind_principal(member), pytest.raises(PermissionDenied):
        await core.sign_up(username="x3", password=PASSWORD, tenant_id=member.tenant_id)


async def test_open_sign_up_gives_everyone_a_tenant_of_their_own(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    core = AuthCore(db=db, signing_key=signing_key, open_signup=True, password_hasher=FAST_HASHER)

    alice, alice_tenant = await core.sign_up(username="alice", password=PASSWORD)
    bob, bob_tenant = await core.sign_up(username="bob", password=PASSWORD)

    assert alice.role == bob.role == "admin"
    assert alice_tenant.id != bob_tenant.id
    assert (alice.tenant_id, bob.tenant_id) == (alice_tenant.id, bob_tenant.id)


# --- login and access tokens ----------------------------------------------------------------


async def test_login_issues_an_eddsa_access_token(
    core: AuthCore, auth: GatewayAuthenticator, signing_key: Ed25519PrivateKey
) -> None:
    root, _ = await bootstrap(core)

    token, expires_in = await core.login(username="root", password=PASSWORD)

    assert expires_in == 3600
    header, _ = unverified(token)
    assert header == {
        "alg": "EdDSA",
        "typ": ACCESS_TOKEN_TYPE,
        "kid": key_id(signing_key.public_key()),
    }
    claims = jwt.decode(
        token, signing_key.public_key(), algorithms=["EdDSA"], audience=ACCESS_TOKEN_AUDIENCE
    )
    assert claims["sub"] == root.id
    assert claims["tid"] == root.tenant_id
    assert claims["role"] == "admin"
    assert claims["kind"] == "user"
    assert claims["iss"] == ISSUER
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["jti"]
    principal = await auth.authenticate(method=GET_ME, metadata=bearer(token))
    assert principal == Principal(
        subject=root.id, tenant_id=root.tenant_id, role="admin", kind="user"
    )


async def test_unknown_user_and_wrong_password_are_indistinguishable(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    core = AuthCore(db=db, signing_key=signing_key, password_hasher=hasher)
    await bootstrap(core)

    with pytest.raises(Unauthenticated) as wrong_password:
        await core.login(username="root", password="not the password")
    hasher.verifications = 0
    with pytest.raises(Unauthenticated) as unknown_user:
        await core.login(username="nobody", password=PASSWORD)

    assert wrong_password.value.message == unknown_user.value.message
    assert wrong_password.value.reason == unknown_user.value.reason
    # The unknown user still paid for one argon2 verification.
    assert hasher.verifications == 1


async def test_login_rehashes_outdated_password_hashes(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    await bootstrap(AuthCore(db=db, signing_key=signing_key, password_hasher=FAST_HASHER))
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    core = AuthCore(db=db, signing_key=signing_key, password_hasher=stronger)

    await core.login(username="root", password=PASSWORD)

    async with db.session() as session:
        new_hash = await session.scalar(select(User.password_hash))
    assert new_hash is not None
    assert not stronger.check_needs_rehash(new_hash)
    assert stronger.verify(new_hash, PASSWORD)
    await core.login(username="root", password=PASSWORD)


async def test_get_me_for_a_user(core: AuthCore, auth: GatewayAuthenticator) -> None:
    root, _ = await bootstrap(core)
    token, _ = await core.login(username="root", password=PASSWORD)

    with bind_principal(await auth.authenticate(method=GET_ME, metadata=bearer(token))):
        me = await core.get_me()
    response = get_me_response(me)

    assert me.user is not None and me.user.id == root.id
    assert me.tenant is not None and me.tenant.id == root.tenant_id
    assert response.credential_kind == "user"
    assert response.user.role == auth_pb2.ROLE_ADMIN
    assert response.tenant.id == root.tenant_id


async def test_get_me_without_a_caller_is_unauthenticated(
    core: AuthCore, auth: GatewayAuthenticator
) -> None:
    assert await auth.authenticate(method=GET_ME, metadata={}) is None
    with pytest.raises(Unauthenticated):
        await core.get_me()


# --- rejections -------------------------------------------------------------------------------


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signature)}"


def _hs256_with_public_key(token: str, signing_key: Ed25519PrivateKey) -> str:
    """The key-confusion attack: HMAC keyed with the (public) verification key."""
    header, claims = unverified(token)
    header = {**header, "alg": "HS256"}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    secret = public_key_pem(signing_key.public_key())
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _tampered(token: str) -> str:
    """A member's token whose payload says admin, with the original signature."""
    header_part, _, signature_part = token.split(".")
    _, claims = unverified(token)
    claims["role"] = "admin"
    return f"{header_part}.{b64(json.dumps(claims).encode())}.{signature_part}"


def _signed(
    signing_key: Ed25519PrivateKey, claims: dict[str, Any], *, kid: str | None = None
) -> str:
    return jwt.encode(
        claims,
        signing_key,
        algorithm="EdDSA",
        headers={"typ": ACCESS_TOKEN_TYPE, "kid": kid or key_id(signing_key.public_key())},
    )


REJECTED: dict[str, Callable[[str, Ed25519PrivateKey], str]] = {
    "tampered": lambda token, key: _tampered(token),
    "alg none": lambda token, key: _forge(
        {**unverified(token)[0], "alg": "none"}, {**unverified(token)[1], "role": "admin"}
    ),
    "alg none, no typ": lambda token, key: _forge({"alg": "none"}, unverified(token)[1]),
    "HS256 keyed with the public key": _hs256_with_public_key,
    "wrong audience": lambda token, key: _signed(key, {**unverified(token)[1], "aud": "training"}),
    "wrong issuer": lambda token, key: _signed(key, {**unverified(token)[1], "iss": "evil"}),
    "unknown key": lambda token, key: _signed(Ed25519PrivateKey.generate(), unverified(token)[1]),
    "another key under our kid": lambda token, key: _signed(
        Ed25519PrivateKey.generate(), unverified(token)[1], kid=key_id(key.public_key())
    ),
    "not a user token": lambda token, key: _signed(
        key, {**unverified(token)[1], "kind": "service"}
    ),
    "no jti": lambda token, key: _signed(
        key, {k: v for k, v in unverified(token)[1].items() if k != "jti"}
    ),
    "service token for another service": lambda token, key: ServiceTokenSigner(key).sign(
        audience="training",
        principal=Principal(subject="s", tenant_id="t", role="admin", kind="service"),
    ),
    "service token from another key": lambda token, key: ServiceTokenSigner(
        Ed25519PrivateKey.generate()
    ).sign(
        audience="gateway",
        principal=Principal(subject="s", tenant_id="t", role="admin", kind="service"),
    ),
    "garbage": lambda token, key: "not-a-jwt",
    "truncated": lambda token, key: token.rsplit(".", 1)[0],
}


# JWTs are checked without the database, so one backend is enough for these.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_bad_tokens_are_rejected_and_change_nothing(
    case: str,
    core: AuthCore,
    auth: GatewayAuthenticator,
    db: Database,
    signing_key: Ed25519PrivateKey,
) -> None:
    _, admin = await bootstrap(core)
    await add_user(core, admin, "member1")
    token, _ = await core.login(username="member1", password=PASSWORD)
    bad = REJECTED[case](token, signing_key)
    before = await db_state(db)

    with pytest.raises(Unauthenticated):
        await auth.authenticate(method=GET_ME, metadata=bearer(bad))
    with pytest.raises(Unauthenticated):
        await auth.authenticate(method=SIGN_UP_METHOD, metadata=bearer(bad))

    assert await db_state(db) == before


async def test_expired_access_token_is_rejected(
    db: Database, signing_key: Ed25519PrivateKey, auth: GatewayAuthenticator
) -> None:
    past = Clock(datetime.now(UTC) - timedelta(hours=2))
    core = AuthCore(db=db, signing_key=signing_key, password_hasher=FAST_HASHER, clock=past)
    await bootstrap(core)
    token, _ = await core.login(username="root", password=PASSWORD)

    with pytest.raises(Unauthenticated) as rejected:
        await auth.authenticate(method=GET_ME, metadata=bearer(token))

    assert rejected.value.reason == "TOKEN_EXPIRED"


async def test_malformed_authorization_is_rejected(auth: GatewayAuthenticator) -> None:
    for value in ("Basic dXNlcjpwdw==", "Bearer", "Bearer   "):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(method=GET_ME, metadata={"authorization": value})


async def test_public_methods_authenticate_optionally(
    core: AuthCore, auth: GatewayAuthenticator
) -> None:
    root, _ = await bootstrap(core)
    token, _ = await core.login(username="root", password=PASSWORD)

    assert auth.is_public(SIGN_UP_METHOD) and auth.is_public(LOGIN_METHOD)
    assert not auth.is_public(GET_ME)
    assert await auth.authenticate(method=SIGN_UP_METHOD, metadata={}) is None
    signed_up_by = await auth.authenticate(method=SIGN_UP_METHOD, metadata=bearer(token))
    assert signed_up_by is not None and signed_up_by.subject == root.id
    # Login needs no caller: a stale or broken token must not lock its holder out.
    assert await auth.authenticate(method=LOGIN_METHOD, metadata=bearer("garbage")) is None


# --- API keys ---------------------------------------------------------------------------------


async def test_api_key_is_random_and_stored_hashed(
    core: AuthCore, auth: GatewayAuthenticator, db: Database
) -> None:
    root, admin = await bootstrap(core)

    with bind_principal(admin):
        key, secret = await core.create_api_key(name="ci", ttl_days=30)
        _, other_secret = await core.create_api_key(name="ci")

    assert secret.startswith("vm_") and len(secret) == 3 + 43
    assert secret != other_secret
    stored = await get_key(db, key.id)
    assert stored.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert stored.prefix == secret[:8]
    assert (stored.user_id, stored.tenant_id, stored.name) == (root.id, root.tenant_id, "ci")
    assert stored.expires_at is not None
    assert as_utc(stored.expires_at) - as_utc(stored.created_at) == timedelta(days=30)
    message = api_key_to_proto(stored)
    assert message.prefix == secret[:8] and message.HasField("expire_time")
    assert not message.HasField("revoke_time")

    principal = await auth.authenticate(method=GET_ME, metadata=bearer(secret))
    assert principal == Principal(
        subject=root.id, tenant_id=root.tenant_id, role="admin", kind="api_key"
    )
    with bind_principal(principal):
        assert (await core.get_me()).credential_kind == "api_key"


async def test_list_api_keys_returns_own_keys_newest_first(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    clock = Clock()
    core = AuthCore(db=db, signing_key=signing_key, password_hasher=FAST_HASHER, clock=clock)
    _, admin = await bootstrap(core)
    _, member = await add_user(core, admin, "member1")
    with bind_principal(admin):
        first, _ = await core.create_api_key(name="first")
        clock.advance(seconds=1)
        second, _ = await core.create_api_key(name="second")
    with bind_principal(member):
        await core.create_api_key(name="someone else's")

    with bind_principal(admin):
        keys = await core.list_api_keys()

    assert [k.id for k in keys] == [second.id, first.id]


async def test_last_used_at_is_written_at_most_once_a_minute(
    core: AuthCore, db: Database, signing_key: Ed25519PrivateKey
) -> None:
    _, admin = await bootstrap(core)
    with bind_principal(admin):
        key, secret = await core.create_api_key(name="ci")
    clock = Clock()
    auth = GatewayAuthenticator(db=db, public_key=signing_key.public_key(), clock=clock)
    first_use = clock.now

    await auth.authenticate(method=GET_ME, metadata=bearer(secret))
    assert as_utc((await get_key(db, key.id)).last_used_at or datetime.min) == first_use
    clock.advance(seconds=30)
    await auth.authenticate(method=GET_ME, metadata=bearer(secret))
    assert as_utc((await get_key(db, key.id)).last_used_at or datetime.min) == first_use
    clock.advance(seconds=31)
    await auth.authenticate(method=GET_ME, metadata=bearer(secret))
    assert as_utc((await get_key(db, key.id)).last_used_at or datetime.min) == clock.now


async def test_revoked_api_key_is_rejected_and_changes_nothing(
    core: AuthCore, auth: GatewayAuthenticator, db: Database
) -> None:
    _, admin = await bootstrap(core)
    with bind_principal(admin):
        key, secret = await core.create_api_key(name="ci")
    await auth.authenticate(method=GET_ME, metadata=bearer(secret))

    with bind_principal(admin):
        revoked = await core.revoke_api_key(key.id)
        again = await core.revoke_api_key(key.id)
    before = await db_state(db)
    with pytest.raises(Unauthenticated) as rejected:
        await auth.authenticate(method=GET_ME, metadata=bearer(secret))

    assert revoked.revoked_at is not None and again.revoked_at is not None
    assert as_utc(again.revoked_at) == as_utc(revoked.revoked_at)
    assert rejected.value.reason == "API_KEY_REVOKED"
    assert await db_state(db) == before


async def test_expired_api_key_is_rejected_and_changes_nothing(
    db: Database, signing_key: Ed25519PrivateKey, auth: GatewayAuthenticator
) -> None:
    past = Clock(datetime.now(UTC) - timedelta(days=2))
    core = AuthCore(db=db, signing_key=signing_key, password_hasher=FAST_HASHER, clock=past)
    _, admin = await bootstrap(core)
    with bind_principal(admin):
        _, secret = await core.create_api_key(name="short-lived", ttl_days=1)
    before = await db_state(db)

    with pytest.raises(Unauthenticated) as rejected:
        await auth.authenticate(method=GET_ME, metadata=bearer(secret))

    assert rejected.value.reason == "API_KEY_EXPIRED"
    assert await db_state(db) == before


async def test_unknown_api_key_is_rejected(
    core: AuthCore, auth: GatewayAuthenticator, db: Database
) -> None:
    _, admin = await bootstrap(core)
    with bind_principal(admin):
        _, secret = await core.create_api_key(name="ci")
    before = await db_state(db)

    for bad in ("vm_" + "A" * 43, secret[:-1], secret + "x"):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(method=GET_ME, metadata=bearer(bad))

    assert await db_state(db) == before


async def test_api_key_follows_its_owners_current_role(
    core: AuthCore, auth: GatewayAuthenticator, db: Database
) -> None:
    root, admin = await bootstrap(core)
    with bind_principal(admin):
        _, secret = await core.create_api_key(name="ci")
    async with db.session() as session:
        await session.execute(update(User).where(User.id == root.id).values(role="member"))

    principal = await auth.authenticate(method=GET_ME, metadata=bearer(secret))

    assert principal is not None and principal.role == "member"


async def test_members_revoke_only_their_own_keys(core: AuthCore, db: Database) -> None:
    _, admin = await bootstrap(core)
    _, alice = await add_user(core, admin, "alice")
    _, bob = await add_user(core, admin, "bob")
    with bind_principal(alice):
        alice_key, _ = await core.create_api_key(name="alice's")
    before = await db_state(db)

    with bind_principal(bob), pytest.raises(NotFound):
        await core.revoke_api_key(alice_key.id)
    assert await db_state(db) == before
    with bind_principal(admin):
        revoked = await core.revoke_api_key(alice_key.id)
    assert revoked.revoked_at is not None


async def test_admin_cannot_revoke_another_tenants_key(
    core: AuthCore, auth: GatewayAuthenticator, db: Database
) -> None:
    _, admin_a = await bootstrap(core)
    _, admin_b = await add_user(core, admin_a, "admin-b", own_tenant=False)
    with bind_principal(admin_b):
        key_b, secret_b = await core.create_api_key(name="b's key")
    before = await db_state(db)

    with bind_principal(admin_a), pytest.raises(NotFound):
        await core.revoke_api_key(key_b.id)
    with bind_principal(admin_a), pytest.raises(NotFound):
        await core.revoke_api_key("no-such-key")

    assert await db_state(db) == before
    assert await auth.authenticate(method=GET_ME, metadata=bearer(secret_b)) is not None


# --- service tokens -----------------------------------------------------------------------------


async def test_admin_issues_service_tokens(
    core: AuthCore, auth: GatewayAuthenticator, signing_key: Ed25519PrivateKey
) -> None:
    root, admin = await bootstrap(core)

    with bind_principal(admin):
        for_training, expires_in = await core.issue_service_token(audience="training")
        for_gateway, _ = await core.issue_service_token(audience="gateway", ttl_seconds=60)

    assert expires_in == 300
    training = ServiceTokenVerifier(public_keys=(signing_key.public_key(),), audience="training")
    service = Principal(subject=root.id, tenant_id=root.tenant_id, role="service", kind="service")
    assert training.verify(for_training) == service
    _, claims = unverified(for_gateway)
    assert claims["exp"] - claims["iat"] == 60
    with pytest.raises(Unauthenticated):
        await auth.authenticate(method=GET_ME, metadata=bearer(for_training))
    caller = await auth.authenticate(method=GET_ME, metadata=bearer(for_gateway))
    assert caller == service
    with bind_principal(caller):
        me = await core.get_me()
        with pytest.raises(PermissionDenied):
            await core.issue_service_token(audience="training")
        with pytest.raises(PermissionDenied):
            await core.create_api_key(name="nope")
    assert me.user is None and me.tenant is not None and me.tenant.id == root.tenant_id
    response = get_me_response(me)
    assert (response.user.id, response.credential_kind) == ("", "service")


async def test_only_admins_issue_service_tokens(core: AuthCore) -> None:
    _, admin = await bootstrap(core)
    _, member = await add_user(core, admin, "member1")

    with pytest.raises(Unauthenticated):
        await core.issue_service_token(audience="training")
    with bind_principal(member), pytest.raises(PermissionDenied):
        await core.issue_service_token(audience="training")
    with bind_principal(admin):
        with pytest.raises(InvalidArgument):
            await core.issue_service_token(audience="training", ttl_seconds=3601)
        with pytest.raises(InvalidArgument):
            await core.issue_service_token(audience=ACCESS_TOKEN_AUDIENCE)


# --- signing key --------------------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        data_dir=tmp_path / "data",
        nats_url="nats://127.0.0.1:4222",
        s3_endpoint="127.0.0.1:9000",
        s3_access_key="x",
        s3_secret_key="y",
        training_addr="127.0.0.1:50052",
        **overrides,
    )


def _same_key(a: Ed25519PrivateKey, b: Ed25519PrivateKey) -> bool:
    return public_key_pem(a.public_key()) == public_key_pem(b.public_key())


def test_signing_key_is_created_private_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    created = load_or_create_signing_key(settings)
    loaded = load_or_create_signing_key(settings)

    path = tmp_path / "data" / SIGNING_KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _same_key(created, loaded)
    assert [p.name for p in path.parent.iterdir()] == [SIGNING_KEY_FILENAME]


def test_signing_key_file_setting_and_concurrent_creation(tmp_path: Path) -> None:
    settings = _settings(tmp_path, signing_key_file=tmp_path / "keys" / "gateway.pem")

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: load_or_create_signing_key(settings), range(8)))

    assert all(_same_key(keys[0], key) for key in keys)
    assert (tmp_path / "keys" / "gateway.pem").exists()
    assert not (tmp_path / "data" / SIGNING_KEY_FILENAME).exists()


def test_bad_signing_key_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("not a key")
    os.chmod(path, 0o600)

    with pytest.raises(ConfigError, match="VISIONMESH_SIGNING_KEY_FILE"):
        load_or_create_signing_key(_settings(tmp_path, signing_key_file=path))


# --- through a real gRPC server -----------------------------------------------------------------


async def test_auth_service_over_grpc(core: AuthCore) -> None:
    server = GrpcServer(
        settings=ServiceSettings(service_name="gateway-test", grpc_port=0),
        authenticator=core.authenticator(),
    )
    server.add_service(
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
        AuthServicer(core),
        service_name=SERVICE_NAME,
    )
    async with server, grpc.aio.insecure_channel(server.address) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)

        signed_up = await stub.SignUp(auth_pb2.SignUpRequest(username="root", password=PASSWORD))
        login = await stub.Login(auth_pb2.LoginRequest(username="root", password=PASSWORD))
        as_root = (("authorization", f"Bearer {login.access_token}"),)
        me = await stub.GetMe(auth_pb2.GetMeRequest(), metadata=as_root)

        assert signed_up.user.role == auth_pb2.ROLE_ADMIN
        assert (login.token_type, login.expires_in) == ("Bearer", 3600)
        assert me.user.id == signed_up.user.id
        assert me.tenant.id == signed_up.user.tenant_id
        assert me.credential_kind == "user"

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetMe(auth_pb2.GetMeRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # SignUp is public but still sees the admin behind a token.
        member = await stub.SignUp(
            auth_pb2.SignUpRequest(
                username="member1", password=PASSWORD, tenant_id=signed_up.user.tenant_id
            ),
            metadata=as_root,
        )
        assert (member.user.role, member.user.tenant_id) == (
            auth_pb2.ROLE_MEMBER,
            signed_up.user.tenant_id,
        )
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await stub.SignUp(auth_pb2.SignUpRequest(username="intruder", password=PASSWORD))
        assert closed.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as wrong:
            await stub.Login(auth_pb2.LoginRequest(username="root", password="wrong password"))
        assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

        created = await stub.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(name="ci", ttl_days=7), metadata=as_root
        )
        as_key = (("authorization", f"Bearer {created.secret}"),)
        assert (await stub.GetMe(auth_pb2.GetMeRequest(), metadata=as_key)).credential_kind == (
            "api_key"
        )
        listed = await stub.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=as_root)
        assert [k.id for k in listed.api_keys] == [created.api_key.id]
        revoked = await stub.RevokeApiKey(
            auth_pb2.RevokeApiKeyRequest(id=created.api_key.id), metadata=as_root
        )
        assert revoked.api_key.HasField("revoke_time")
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await stub.GetMe(auth_pb2.GetMeRequest(), metadata=as_key)
        assert rejected.value.code() == grpc.StatusCode.UNAUTHENTICATED

        issued = await stub.IssueServiceToken(
            auth_pb2.IssueServiceTokenRequest(audience="gateway"), metadata=as_root
        )
        as_service = (("authorization", f"Bearer {issued.token}"),)
        service_me = await stub.GetMe(auth_pb2.GetMeRequest(), metadata=as_service)
        assert (service_me.credential_kind, service_me.user.id) == ("service", "")


# --- login under load: its own hashing threads, failed-login limits ----------------------------


class SlowHasher(PasswordHasher):
    """Verification takes `seconds` of a thread (argon2 at production cost is ~0.1 s)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.seconds = seconds

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        time.sleep(self.seconds)
        return super().verify(hash, password)


class BlockedHasher(PasswordHasher):
    """Verification waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.release = threading.Event()

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        assert self.release.wait(30)
        return super().verify(hash, password)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_login_flood_does_not_delay_the_default_executor(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    """S3 calls and readiness checks run on the loop's default executor; 50 logins in flight
    (10 s of hashing) must not queue ahead of them there."""
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=SlowHasher(0.2),
        hash_pool=PasswordHashPool(workers=4, queue=64),
    )
    loop = asyncio.get_running_loop()
    logins = [
        asyncio.create_task(core.login(username=f"nobody-{i}", password="guess-123"))
        for i in range(50)
    ]
    await asyncio.sleep(0.3)  # every login has looked its user up and is hashing or queued

    started = time.perf_counter()
    await loop.run_in_executor(None, lambda: None)
    waited = time.perf_counter() - started

    assert not all(task.done() for task in logins)
    results = await asyncio.gather(*logins, return_exceptions=True)
    assert waited < 0.5, f"a default-executor call waited {waited:.2f}s behind the logins"
    assert all(isinstance(r, Unauthenticated) for r in results), results
    core.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_hashes_beyond_the_pool_queue_are_refused_at_once(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    hasher = BlockedHasher()
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=hasher,
        hash_pool=PasswordHashPool(workers=1, queue=2),
    )
    logins = [
        asyncio.create_task(core.login(username=f"nobody-{i}", password="guess-123"))
        for i in range(5)
    ]
    try:
        # One hash runs and two wait; the other two logins are answered without waiting.
        refused: list[asyncio.Task[tuple[str, int]]] = []
        async with asyncio.timeout(10):
            while len(refused) < 2:
                await asyncio.sleep(0.01)
                refused = [task for task in logins if task.done()]
        await asyncio.sleep(0.1)
        assert len([task for task in logins if task.done()]) == 2
        for task in refused:
            error = task.exception()
            assert isinstance(error, ResourceExhausted), error
            assert error.reason == "PASSWORD_HASHING_BUSY"
            assert error.metadata["retry_after_seconds"] == "1"
    finally:
        hasher.release.set()
    results = await asyncio.gather(*logins, return_exceptions=True)
    assert sum(isinstance(r, Unauthenticated) for r in results) == 3
    # The slots came back: a login is served again.
    with pytest.raises(Unauthenticated):
        await core.login(username="nobody-else", password="guess-123")
    core.close()


def _retry_delay(error: ResourceExhausted) -> int:
    [info] = [d for d in error.detail_messages() if isinstance(d, error_details_pb2.RetryInfo)]
    return int(info.retry_delay.seconds)


async def test_failed_logins_per_user_are_limited_until_the_window_passes(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    """Seen: 40 wrong passwords in a row for one user, all answered 401."""
    clock = Clock()
    hasher = CountingHasher(time_cost=1, memory_cost=8, parallelism=1)
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=hasher,
        login_limiter=LoginLimiter(max_failures_per_user=5, window_seconds=300),
        clock=clock,
    )
    _, admin = await bootstrap(core)
    await add_user(core, admin, "member1")

    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await core.login(username="root", password="wrong", client_address="10.0.0.1")
        clock.advance(seconds=10)
    hasher.verifications = 0
    for password in ("wrong", PASSWORD):  # the right password too: no oracle for a guesser
        with pytest.raises(ResourceExhausted) as throttled:
            await core.login(username="root", password=password, client_address="10.0.0.2")
        assert throttled.value.reason == "LOGIN_THROTTLED"
        # The first failure (50 s ago) leaves the 300 s window in 250 s.
        assert _retry_delay(throttled.value) == 250
        assert throttled.value.metadata["retry_after_seconds"] == "250"
    assert hasher.verifications == 0  # refused before any hashing

    # Another user, from the same address, is not affected.
    await core.login(username="member1", password=PASSWORD, client_address="10.0.0.1")

    clock.advance(seconds=250)
    token, _ = await core.login(username="root", password=PASSWORD, client_address="10.0.0.1")
    assert token
    # Success cleared the username's failures: a typo now is a plain 401 again.
    with pytest.raises(Unauthenticated):
        await core.login(username="root", password="wrong")


async def test_failed_logins_per_address_are_limited(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    clock = Clock()
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=FAST_HASHER,
        login_limiter=LoginLimiter(max_failures_per_address=8, window_seconds=60),
        clock=clock,
    )
    await bootstrap(core)
    # Spraying one guess at many usernames: each username stays under its own limit.
    for i in range(8):
        with pytest.raises(Unauthenticated):
            await core.login(username=f"user{i}", password="guess", client_address="10.0.0.9")

    with pytest.raises(ResourceExhausted) as throttled:
        await core.login(username="root", password=PASSWORD, client_address="10.0.0.9")
    assert throttled.value.reason == "LOGIN_THROTTLED"
    assert _retry_delay(throttled.value) == 60
    await core.login(username="root", password=PASSWORD, client_address="10.0.0.10")
    await core.login(username="root", password=PASSWORD)
    # A valid account does not reset the address's count.
    with pytest.raises(ResourceExhausted):
        await core.login(username="root", password=PASSWORD, client_address="10.0.0.9")

    clock.advance(seconds=61)
    await core.login(username="root", password=PASSWORD, client_address="10.0.0.9")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_concurrent_guesses_cannot_slip_past_the_limit(
    db: Database, signing_key: Ed25519PrivateKey
) -> None:
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=SlowHasher(0.05),
        login_limiter=LoginLimiter(max_failures_per_user=5),
    )
    await bootstrap(core)
    results = await asyncio.gather(
        *(core.login(username="root", password=f"guess-{i}") for i in range(20)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Unauthenticated) for r in results) == 5
    assert sum(isinstance(r, ResourceExhausted) for r in results) == 15
    core.close()


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:5000", "10.1.2.3"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:%5B::1%5D:5000", "::1"),
        ("ipv6:[2001:db8:1:2:a:b:c:d]:443", "2001:db8:1:2::/64"),
        ("ipv6:[::ffff:10.0.0.1]:80", "10.0.0.1"),
        ("unix:/tmp/gateway.sock", None),
        ("unknown", None),
        ("ipv4:not-an-ip:1", None),
    ],
)
def test_client_address_from_a_peer(peer: str, address: str | None) -> None:
    assert client_address(peer) == address


def test_limiter_forgets_the_oldest_keys_beyond_its_bound() -> None:
    limiter = LoginLimiter(max_failures_per_user=1, window_seconds=60, max_tracked=3)
    for name in ("a", "b", "c", "d"):
        keys = limiter.keys(name, None)
        limiter.begin(keys, 0.0)
        limiter.end(keys, 0.0, outcome="failed")
    limiter.begin(limiter.keys("a", None), 1.0)  # forgotten, so admitted again
    with pytest.raises(ResourceExhausted):
        limiter.begin(limiter.keys("d", None), 1.0)


async def test_login_limits_over_grpc(db: Database, signing_key: Ed25519PrivateKey) -> None:
    """Over gRPC the client address is the peer's: 127.0.0.1 and ::1 are two clients."""
    clock = Clock()
    core = AuthCore(
        db=db,
        signing_key=signing_key,
        password_hasher=FAST_HASHER,
        login_limiter=LoginLimiter(
            max_failures_per_user=3, max_failures_per_address=5, window_seconds=60
        ),
        clock=clock,
    )
    _, admin = await bootstrap(core)
    await add_user(core, admin, "member1")
    # "localhost" binds the IPv4 and the IPv6 loopback address.
    server = GrpcServer(
        settings=ServiceSettings(service_name="gateway-test", grpc_port=0, grpc_host="localhost"),
        authenticator=core.authenticator(),
    )
    server.add_service(
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
        AuthServicer(core),
        service_name=SERVICE_NAME,
    )
    async with (
        server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as v4_channel,
        grpc.aio.insecure_channel(f"[::1]:{server.port}") as v6_channel,
    ):
        v4, v6 = (
            auth_pb2_grpc.AuthServiceStub(v4_channel),
            auth_pb2_grpc.AuthServiceStub(v6_channel),
        )

        async def login(stub: Any, username: str, password: str) -> grpc.StatusCode:
            try:
                await stub.Login(auth_pb2.LoginRequest(username=username, password=password))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    error = from_rpc_error(exc)
                    assert error.reason == "LOGIN_THROTTLED"
                    assert any(
                        isinstance(d, error_details_pb2.RetryInfo) and d.retry_delay.seconds > 0
                        for d in error.rpc_details
                    )
                return exc.code()
            return grpc.StatusCode.OK

        for _ in range(3):
            assert await login(v4, "root", "wrong") == grpc.StatusCode.UNAUTHENTICATED
        # The username is limited from every address; other users are not.
        assert await login(v4, "root", PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await login(v6, "root", PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await login(v4, "member1", PASSWORD) == grpc.StatusCode.OK

        # Two more failures from 127.0.0.1 exhaust that address, not ::1.
        for name in ("nobody1", "nobody2"):
            assert await login(v4, name, "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert await login(v4, "member1", PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await login(v6, "member1", PASSWORD) == grpc.StatusCode.OK

        clock.advance(seconds=61)
        assert await login(v4, "root", PASSWORD) == grpc.StatusCode.OK
        assert await login(v4, "member1", PASSWORD) == grpc.StatusCode.OK


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_login_limits_over_rest(
    make_gateway: GatewayFactory, nats_server: Any, database_url: str
) -> None:
    """Over REST the client address is the TCP peer's (127.0.0.1 and 127.0.0.2 here)."""
    harness = await make_gateway(
        nats_url=nats_server.url,
        database_url=database_url,
        open_signup=True,
        login_max_failures_per_user=3,
        login_max_failures_per_address=5,
        login_failure_window_seconds=8,
    )
    for username in ("root", "member1"):
        async with harness.http() as client:
            signed = await client.post(
                "/v1/auth/signup", json={"username": username, "password": PASSWORD}
            )
            assert signed.status_code == 200, signed.text

    def client_from(source: str) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(base_url=harness.rest_url, transport=transport, timeout=30)

    async with client_from("127.0.0.1") as one, client_from("127.0.0.2") as two:

        async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
            return await client.post(
                "/v1/auth/login", json={"username": username, "password": password}
            )

        for _ in range(3):
            assert (await login(one, "root", "wrong")).status_code == 401
        throttled = await login(two, "root", PASSWORD)
        assert throttled.status_code == 429, throttled.text
        body = throttled.json()
        assert body["status"] == "RESOURCE_EXHAUSTED"
        assert 1 <= int(throttled.headers["retry-after"]) <= 8
        assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in body["details"])
        assert (await login(one, "member1", PASSWORD)).status_code == 200

        for name in ("nobody1", "nobody2"):
            assert (await login(one, name, "wrong")).status_code == 401
        by_address = await login(one, "member1", PASSWORD)
        assert by_address.status_code == 429, by_address.text
        assert (await login(two, "member1", PASSWORD)).status_code == 200

        # Once the hinted time has passed, the oldest failure has left the window.
        await asyncio.sleep(int(by_address.headers["retry-after"]) + 0.1)
        assert (await login(one, "root", PASSWORD)).status_code == 200
