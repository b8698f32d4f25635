"""Principals, the principal contextvar, and Ed25519 service-token signing and verification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from visionmesh.common.auth import (
    Authenticator,
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    bearer_token,
    bind_principal,
    current_principal,
    generate_signing_key,
    is_always_public,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_pem,
    require_principal,
)
from visionmesh.common.errors import Unauthenticated

AUDIENCE = "visionmesh.training"
USER = Principal(
    subject="user-1", tenant_id="t-1", role="admin", kind="user", scopes=("a:read", "b:write")
)


@pytest.fixture
def signer() -> ServiceTokenSigner:
    return ServiceTokenSigner(private_key=generate_signing_key())


@pytest.fixture
def verifier(signer: ServiceTokenSigner) -> ServiceTokenVerifier:
    return ServiceTokenVerifier(public_keys=(signer.public_key,), audience=AUDIENCE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _decode_segment(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def test_valid_token_yields_principal(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    assert verifier.verify(signer.sign(audience=AUDIENCE, principal=USER)) == USER


def test_token_is_short_lived_eddsa(signer: ServiceTokenSigner) -> None:
    token = signer.sign(audience=AUDIENCE, principal=USER, now=1_000)
    header, claims = (_decode_segment(part) for part in token.split(".")[:2])
    assert header["alg"] == "EdDSA" and header["kid"] == key_id(signer.public_key)
    assert claims["exp"] - claims["iat"] == 60
    assert (claims["iss"], claims["aud"], claims["sub"]) == (
        "visionmesh-gateway",
        AUDIENCE,
        "user-1",
    )


def _expect_rejected(verifier: ServiceTokenVerifier, token: str, reason: str, text: str) -> None:
    with pytest.raises(Unauthenticated) as excinfo:
        verifier.verify(token)
    assert excinfo.value.reason == reason
    assert text in excinfo.value.message


def test_expired_token_is_rejected(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    token = signer.sign(audience=AUDIENCE, principal=USER, ttl_seconds=60, now=time.time() - 600)
    _expect_rejected(verifier, token, "TOKEN_EXPIRED", "expired")


def test_clock_skew_within_leeway_is_accepted(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    token = signer.sign(audience=AUDIENCE, principal=USER, ttl_seconds=60, now=time.time() - 62)
    assert verifier.verify(token) == USER


def test_wrong_audience_is_rejected(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    token = signer.sign(audience="visionmesh.export", principal=USER)
    _expect_rejected(verifier, token, "TOKEN_WRONG_AUDIENCE", "visionmesh.training")


def test_wrong_issuer_is_rejected(signer: ServiceTokenSigner) -> None:
    verifier = ServiceTokenVerifier(
        public_keys=(signer.public_key,), audience=AUDIENCE, issuer="someone-else"
    )
    _expect_rejected(
        verifier, signer.sign(audience=AUDIENCE, principal=USER), "TOKEN_INVALID", "issuer"
    )


def test_tampered_claims_are_rejected(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    header, payload, signature = signer.sign(audience=AUDIENCE, principal=USER).split(".")
    claims = _decode_segment(payload)
    claims["tenant_id"] = "t-2"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    _expect_rejected(verifier, forged, "TOKEN_INVALID", "signature")


def test_alg_none_is_rejected(signer: ServiceTokenSigner, verifier: ServiceTokenVerifier) -> None:
    payload = signer.sign(audience=AUDIENCE, principal=USER).split(".")[1]
    header = _b64(json.dumps({"alg": "none", "kid": key_id(signer.public_key)}).encode())
    _expect_rejected(verifier, f"{header}.{payload}.", "TOKEN_INVALID", "'none'")


def test_hmac_with_public_key_is_rejected(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    """The classic algorithm-confusion attack: HS256 keyed with the (public) verification key."""
    payload = signer.sign(audience=AUDIENCE, principal=USER).split(".")[1]
    header = _b64(json.dumps({"alg": "HS256", "kid": key_id(signer.public_key)}).encode())
    secret = public_key_pem(signer.public_key)
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    _expect_rejected(verifier, f"{header}.{payload}.{_b64(mac)}", "TOKEN_INVALID", "HS256")


def test_foreign_key_and_garbage_are_rejected(verifier: ServiceTokenVerifier) -> None:
    other = ServiceTokenSigner(private_key=generate_signing_key())
    _expect_rejected(
        verifier, other.sign(audience=AUDIENCE, principal=USER), "TOKEN_INVALID", "unknown key"
    )
    _expect_rejected(verifier, "not-a-jwt", "TOKEN_MALFORMED", "malformed")


def test_invalid_role_claim_is_rejected(signer: ServiceTokenSigner) -> None:
    verifier = ServiceTokenVerifier(public_keys=(signer.public_key,), audience=AUDIENCE)
    claims = {
        "iss": "visionmesh-gateway",
        "aud": AUDIENCE,
        "sub": "x",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
        "role": "superuser",
        "kind": "user",
    }
    token = jwt.encode(
        claims, signer.private_key, algorithm="EdDSA", headers={"kid": key_id(signer.public_key)}
    )
    _expect_rejected(verifier, token, "TOKEN_INVALID", "role")


def test_key_rotation_accepts_old_and_new_keys(signer: ServiceTokenSigner) -> None:
    new = ServiceTokenSigner(private_key=generate_signing_key())
    verifier = ServiceTokenVerifier.from_pem(
        [public_key_pem(signer.public_key), public_key_pem(new.public_key).decode()],
        audience=AUDIENCE,
    )
    for minting in (signer, new):
        assert verifier.verify(minting.sign(audience=AUDIENCE, principal=USER)) == USER


def test_private_key_pem_round_trip(signer: ServiceTokenSigner) -> None:
    loaded = load_private_key(private_key_pem(signer.private_key))
    assert key_id(loaded.public_key()) == key_id(signer.public_key)
    with pytest.raises(ValueError):
        ServiceTokenVerifier(public_keys=(), audience=AUDIENCE)


async def test_authenticate_reads_bearer_metadata(
    signer: ServiceTokenSigner, verifier: ServiceTokenVerifier
) -> None:
    assert isinstance(verifier, Authenticator)
    token = signer.sign(audience=AUDIENCE, principal=USER)
    principal = await verifier.authenticate(
        method="/x.Y/Z", metadata={"authorization": f"Bearer {token}"}
    )
    assert principal == USER
    assert await verifier.authenticate(method="/x.Y/Z", metadata={}) is None
    with pytest.raises(Unauthenticated, match="Bearer"):
        await verifier.authenticate(method="/x.Y/Z", metadata={"authorization": "Basic abc"})


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert bearer_token({}) is None
    with pytest.raises(Unauthenticated):
        bearer_token({"authorization": "Bearer"})


def test_public_methods() -> None:
    assert is_always_public("/grpc.health.v1.Health/Check")
    assert is_always_public("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_always_public("/visionmesh.training.v1.TrainingService/CreateJob")
    verifier = ServiceTokenVerifier(
        public_keys=(generate_signing_key().public_key(),),
        audience=AUDIENCE,
        public_methods=frozenset({"/visionmesh.gateway.v1.Auth/Login"}),
    )
    assert verifier.is_public("/visionmesh.gateway.v1.Auth/Login")
    assert not verifier.is_public("/visionmesh.gateway.v1.Auth/Logout")


def test_principal_contextvar() -> None:
    assert current_principal() is None
    with pytest.raises(Unauthenticated):
        require_principal()
    with bind_principal(USER):
        assert require_principal() is USER
        assert USER.has_scope("a:read") and not USER.has_scope("c")
        assert USER.is_admin
    assert current_principal() is None


async def test_principal_is_isolated_per_task() -> None:
    other = Principal(subject="svc", tenant_id="", role="service", kind="service")

    async def run_as(principal: Principal) -> str:
        with bind_principal(principal):
            await asyncio.sleep(0.01)
            return require_principal().subject

    assert await asyncio.gather(run_as(USER), run_as(other)) == ["user-1", "svc"]
