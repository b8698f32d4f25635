"""GrpcServer, its interceptor and GrpcClient, exercised over a real in-process channel."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import grpc
import pytest
import structlog
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    generate_signing_key,
    key_id,
    require_principal,
)
from visionmesh.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from visionmesh.common.logging import bind_request_id, configure_logging, current_request_id
from visionmesh.common.rpc import GrpcClient, GrpcServer, RetryPolicy, ServerInterceptor, connect
from visionmesh.common.settings import ServiceSettings

pytestmark = pytest.mark.timeout(20)

PROBE = "visionmesh.tests.v1.Probe"
AUDIENCE = "visionmesh.training"
StringValue = wrappers_pb2.StringValue
BytesValue = wrappers_pb2.BytesValue
SECRET = "postgres://admin:hunter2@db"  # must never reach a client


class Probe:
    """A servicer with one method per behaviour under test."""

    def __init__(self) -> None:
        self.flaky_failures = 0
        self.attempts = 0
        self.fail_calls = 0

    async def echo(self, request: StringValue, context: Any) -> StringValue:
        return StringValue(value=request.value)

    async def fail(self, request: StringValue, context: Any) -> StringValue:
        self.fail_calls += 1
        if request.value == "invalid":
            raise InvalidArgument.for_field("spec.epochs", "must be > 0")
        if request.value == "missing":
            raise NotFound(resource_type="job", resource_id="job-42")
        if request.value == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "handler aborted")
        raise ValueError(f"cannot connect to {SECRET}")

    async def stream(self, request: StringValue, context: Any) -> AsyncIterator[StringValue]:
        for i in range(3):
            yield StringValue(value=str(i))
        if request.value == "invalid":
            raise InvalidArgument.for_field("items[3]", "too many")

    async def write_stream(self, request: StringValue, context: Any) -> None:
        # The reader/writer style: health's Watch is written this way.
        for i in range(2):
            await context.write(StringValue(value=f"w{i}"))
        if request.value == "missing":
            raise NotFound(resource_type="model", resource_id="m-1")

    async def collect(self, requests: AsyncIterator[StringValue], context: Any) -> StringValue:
        values = [request.value async for request in requests]
        if "missing" in values:
            raise NotFound(resource_type="dataset", resource_id="d-1")
        return StringValue(value=",".join(values))

    async def chat(
        self, requests: AsyncIterator[StringValue], context: Any
    ) -> AsyncIterator[StringValue]:
        async for request in requests:
            if request.value == "invalid":
                raise InvalidArgument.for_field("message", "must not be 'invalid'")
            yield StringValue(value=request.value.upper())

    async def whoami(self, request: StringValue, context: Any) -> StringValue:
        principal = require_principal()
        return StringValue(
            value=json.dumps(
                {
                    "subject": principal.subject,
                    "tenant_id": principal.tenant_id,
                    "role": principal.role,
                    "kind": principal.kind,
                    "scopes": list(principal.scopes),
                }
            )
        )

    async def request_id(self, request: StringValue, context: Any) -> StringValue:
        return StringValue(value=current_request_id() or "")

    async def flaky(self, request: StringValue, context: Any) -> StringValue:
        self.attempts += 1
        if self.attempts <= self.flaky_failures:
            raise Unavailable("warming up")
        return StringValue(value=f"attempt {self.attempts}")

    async def set_code(self, request: StringValue, context: Any) -> StringValue:
        # Sets a status and returns, as generated servicer bases do, instead of raising.
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        context.set_details("not ready")
        return StringValue()

    async def slow(self, request: StringValue, context: Any) -> StringValue:
        await asyncio.sleep(float(request.value))
        return StringValue(value="done")

    async def size(self, request: BytesValue, context: Any) -> BytesValue:
        return BytesValue(value=request.value)

    async def big(self, request: StringValue, context: Any) -> BytesValue:
        return BytesValue(value=b"x" * int(request.value))

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: Any, req: Any = StringValue, resp: Any = StringValue) -> Any:
            return grpc.unary_unary_rpc_method_handler(fn, req.FromString, resp.SerializeToString)

        ser = {"request_deserializer": StringValue.FromString}
        out = {"response_serializer": StringValue.SerializeToString}
        return grpc.method_handlers_generic_handler(
            PROBE,
            {
                "Echo": unary(self.echo),
                "Fail": unary(self.fail),
                "WhoAmI": unary(self.whoami),
                "RequestId": unary(self.request_id),
                "Flaky": unary(self.flaky),
                "Slow": unary(self.slow),
                "SetCode": unary(self.set_code),
                "Size": unary(self.size, BytesValue, BytesValue),
                "Big": unary(self.big, StringValue, BytesValue),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream, **ser, **out),
                "WriteStream": grpc.unary_stream_rpc_method_handler(
                    self.write_stream, **ser, **out
                ),
                "Collect": grpc.stream_unary_rpc_method_handler(self.collect, **ser, **out),
                "Chat": grpc.stream_stream_rpc_method_handler(self.chat, **ser, **out),
            },
        )


def settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": "probe",
        "grpc_port": 0,
        "shutdown_grace_seconds": 1.0,
    }
    return ServiceSettings(**(values | overrides))


@asynccontextmanager
async def running(
    probe: Probe, *, authenticator: Any = None, **overrides: Any
) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(settings=settings(**overrides), authenticator=authenticator)
    server.add_generic_handler(probe.handler(), service_name=PROBE)
    async with server:
        yield server


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(probe: Probe) -> AsyncIterator[GrpcServer]:
    async with running(probe) as server:
        yield server


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    """A bare channel: what any gRPC client (grpcurl, another language) sees."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def unary(channel: grpc.aio.Channel, method: str, message: Any = StringValue) -> Any:
    return channel.unary_unary(
        f"/{PROBE}/{method}",
        request_serializer=message.SerializeToString,
        response_deserializer=message.FromString,
    )


def unary_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_stream(
        f"/{PROBE}/{method}",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )


def stream_unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.stream_unary(
        f"/{PROBE}/{method}",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )


def stream_stream(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.stream_stream(
        f"/{PROBE}/{method}",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )


def details_of(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    """The rich status details of a failed call, keyed by message type name."""
    status = rpc_status.from_call(cast(Any, error))
    assert status is not None, "no grpc-status-details-bin trailer"
    found: dict[str, Any] = {}
    for packed in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.RequestInfo,
        ):
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                found[cls.DESCRIPTOR.name] = message
    return found


async def collect_stream(call: Any) -> list[str]:
    return [response.value async for response in call]


async def requests(*values: str) -> AsyncIterator[StringValue]:
    for value in values:
        yield StringValue(value=value)


# --- health, reflection, lifecycle --------------------------------------------------------


async def test_health_reports_serving_then_not_serving_when_stopping(
    server: GrpcServer, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", PROBE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    watch = health.Watch(health_pb2.HealthCheckRequest(service=PROBE))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    stopping = asyncio.create_task(server.stop(grace=2.0))
    second = await asyncio.wait_for(watch.read(), timeout=2)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    await stopping


async def test_reflection_lists_registered_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    response = await call.read()
    call.cancel()
    names = {service.name for service in response.list_services_response.service}
    assert {PROBE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_port_zero_binds_a_real_port_and_two_servers_coexist(probe: Probe) -> None:
    async with running(probe) as first, running(Probe()) as second:
        assert first.port > 0 and second.port > 0 and first.port != second.port
        # Each server has its own registry, so metrics do not collide.
        assert first.registry is not second.registry


async def test_fixed_port_in_use_fails_loudly(server: GrpcServer) -> None:
    second = GrpcServer(settings=settings(grpc_port=server.port))
    with pytest.raises(RuntimeError, match="cannot bind"):
        await second.start()


async def test_registering_after_start_is_rejected(server: GrpcServer, probe: Probe) -> None:
    with pytest.raises(RuntimeError, match="before"):
        server.add_generic_handler(probe.handler(), service_name=PROBE)


async def test_serve_forever_drains_in_flight_calls_on_shutdown_request(probe: Probe) -> None:
    server = GrpcServer(settings=settings(shutdown_grace_seconds=5.0))
    server.add_generic_handler(probe.handler(), service_name=PROBE)
    await server.start()
    serving = asyncio.create_task(server.serve_forever())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        in_flight = asyncio.ensure_future(unary(channel, "Slow")(StringValue(value="0.3")))
        await asyncio.sleep(0.1)
        # What the SIGTERM/SIGINT handler calls.
        server.request_shutdown()
        assert (await in_flight).value == "done"
        await asyncio.wait_for(serving, timeout=5)

        check = await server.health.Check(health_pb2.HealthCheckRequest(service=PROBE), None)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await unary(channel, "Echo")(StringValue(value="late"), timeout=1)
        assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_sigterm_triggers_graceful_shutdown(probe: Probe) -> None:
    stray: list[int] = []
    # A harmless fallback, so a missing handler fails this test instead of killing pytest.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stray.append(signum))
    try:
        server = GrpcServer(settings=settings())
        server.add_generic_handler(probe.handler(), service_name=PROBE)
        await server.start()
        serving = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.05)
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(serving, timeout=5)
        assert stray == []
        check = await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        signal.signal(signal.SIGTERM, previous)


async def test_stop_is_idempotent(server: GrpcServer) -> None:
    await server.stop(grace=0)
    await server.stop(grace=0)


# --- error mapping --------------------------------------------------------------------------


async def test_invalid_argument_carries_field_violation(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "Fail")(
            StringValue(value="invalid"), metadata=(("x-request-id", "req-abc.1"),)
        )
    error = excinfo.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "spec.epochs: must be > 0"
    details = details_of(error)
    [violation] = details["BadRequest"].field_violations
    assert (violation.field, violation.description) == ("spec.epochs", "must be > 0")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert details["RequestInfo"].request_id == "req-abc.1"


async def test_not_found_carries_resource_info(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "Fail")(StringValue(value="missing"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    info = details_of(excinfo.value)["ResourceInfo"]
    assert (info.resource_type, info.resource_name) == ("job", "job-42")


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    configure_logging(service="probe", level="INFO", json=True, stream=stream)
    yield stream
    for handler in list(root.handlers):
        if handler.get_name() == "visionmesh":
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


async def test_unknown_exception_is_internal_without_leaking(
    channel: grpc.aio.Channel, log_output: io.StringIO
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "Fail")(StringValue(value="boom"))
    error = excinfo.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    trailers = repr(list(error.trailing_metadata() or ()))
    assert "hunter2" not in trailers and "ValueError" not in trailers
    # The traceback goes to the server log instead.
    [entry] = [
        json.loads(line)
        for line in log_output.getvalue().splitlines()
        if "unhandled exception" in line
    ]
    assert "ValueError" in entry["exception"] and entry["method"] == f"/{PROBE}/Fail"


async def test_handler_abort_keeps_its_own_status(
    server: GrpcServer, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "Fail")(StringValue(value="abort"))
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert excinfo.value.details() == "handler aborted"
    labels = {
        "grpc_service": PROBE,
        "grpc_method": "Fail",
        "grpc_type": "unary",
        "transport": "grpc",
    }
    labels |= {"grpc_code": "FAILED_PRECONDITION"}
    # context.abort() sends the status itself, before the interceptor sees AbortError:
    # the caller can have it a moment before the call is recorded.
    for _ in range(100):
        if server.registry.get_sample_value("grpc_server_handled_total", labels) is not None:
            break
        await asyncio.sleep(0.01)
    assert server.registry.get_sample_value("grpc_server_handled_total", labels) == 1


async def test_server_stream_delivers_then_maps_error(channel: grpc.aio.Channel) -> None:
    assert await collect_stream(unary_stream(channel, "Stream")(StringValue())) == ["0", "1", "2"]

    call = unary_stream(channel, "Stream")(StringValue(value="invalid"))
    received = [await call.read() for _ in range(3)]
    assert [r.value for r in received] == ["0", "1", "2"]
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call.read()
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = details_of(excinfo.value)["BadRequest"].field_violations
    assert violation.field == "items[3]"


async def test_writer_style_stream_maps_error(channel: grpc.aio.Channel) -> None:
    assert await collect_stream(unary_stream(channel, "WriteStream")(StringValue())) == [
        "w0",
        "w1",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await collect_stream(unary_stream(channel, "WriteStream")(StringValue(value="missing")))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_stream_and_bidi_stream_map_errors(channel: grpc.aio.Channel) -> None:
    collect = stream_unary(channel, "Collect")
    assert (await collect(requests("a", "b"))).value == "a,b"
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await collect(requests("a", "missing"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND

    chat = stream_stream(channel, "Chat")
    assert await collect_stream(chat(requests("hi", "there"))) == ["HI", "THERE"]
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await collect_stream(chat(requests("hi", "invalid")))
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details_of(excinfo.value)["BadRequest"].field_violations[0].field == "message"


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "NoSuchMethod")(StringValue())
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_untrusted_request_id_is_replaced(channel: grpc.aio.Channel) -> None:
    echo_id = unary(channel, "RequestId")
    assert (await echo_id(StringValue(), metadata=(("x-request-id", "ok-1"),))).value == "ok-1"
    forged = (await echo_id(StringValue(), metadata=(("x-request-id", 'x" level=error'),))).value
    assert forged and forged != 'x" level=error'


# --- message size ---------------------------------------------------------------------------


async def test_ten_megabyte_payload_round_trips(server: GrpcServer) -> None:
    payload = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    async with connect(f"127.0.0.1:{server.port}") as client:
        response = await unary(client.channel, "Size", BytesValue)(BytesValue(value=payload))
    assert response.value == payload


async def test_message_limit_comes_from_settings(probe: Probe) -> None:
    async with (
        running(probe, grpc_max_message_bytes=1024 * 1024) as server,
        connect(f"127.0.0.1:{server.port}", convert_errors=False) as client,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as received:
            await unary(client.channel, "Size", BytesValue)(BytesValue(value=b"x" * 2_000_000))
        assert received.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        big = client.channel.unary_unary(
            f"/{PROBE}/Big",
            request_serializer=StringValue.SerializeToString,
            response_deserializer=BytesValue.FromString,
        )
        assert len((await big(StringValue(value="1000"))).value) == 1000
        with pytest.raises(grpc.aio.AioRpcError) as sent:
            await big(StringValue(value="2000000"))
        assert sent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# --- authentication -------------------------------------------------------------------------


@pytest.fixture
def signer() -> ServiceTokenSigner:
    return ServiceTokenSigner(private_key=generate_signing_key())


@pytest.fixture
async def auth_server(probe: Probe, signer: ServiceTokenSigner) -> AsyncIterator[GrpcServer]:
    verifier = ServiceTokenVerifier(
        public_keys=(signer.public_key,),
        audience=AUDIENCE,
        public_methods=frozenset({f"/{PROBE}/Echo"}),
    )
    async with running(probe, authenticator=verifier) as server:
        yield server


USER = Principal(
    subject="user-7", tenant_id="tenant-1", role="member", kind="user", scopes=("jobs:write",)
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _tampered(signer: ServiceTokenSigner) -> str:
    header, _, signature = signer.sign(audience=AUDIENCE, principal=USER).split(".")
    claims = _claims(signer.sign(audience=AUDIENCE, principal=USER))
    claims["role"] = "admin"
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _alg_none(signer: ServiceTokenSigner) -> str:
    claims = _claims(signer.sign(audience=AUDIENCE, principal=USER))
    header = {"alg": "none", "typ": "JWT", "kid": key_id(signer.public_key)}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


BAD_TOKENS: dict[str, Callable[[ServiceTokenSigner], str | None]] = {
    "missing": lambda signer: None,
    "expired": lambda signer: signer.sign(
        audience=AUDIENCE, principal=USER, ttl_seconds=60, now=time.time() - 3600
    ),
    "tampered": _tampered,
    "wrong-audience": lambda signer: signer.sign(audience="visionmesh.export", principal=USER),
    "alg-none": _alg_none,
    "foreign-key": lambda signer: ServiceTokenSigner(private_key=generate_signing_key()).sign(
        audience=AUDIENCE, principal=USER
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_auth_rejects_bad_tokens(
    auth_server: GrpcServer, signer: ServiceTokenSigner, case: str
) -> None:
    token = BAD_TOKENS[case](signer)
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await unary(channel, "WhoAmI")(StringValue(), metadata=metadata)
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "token" in (excinfo.value.details() or "")
    assert details_of(excinfo.value)["ErrorInfo"].reason.startswith("TOKEN_")


async def test_auth_passes_principal_to_handler(
    auth_server: GrpcServer, signer: ServiceTokenSigner
) -> None:
    token = signer.sign(audience=AUDIENCE, principal=USER)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        response = await unary(channel, "WhoAmI")(
            StringValue(), metadata=(("authorization", f"Bearer {token}"),)
        )
    assert json.loads(response.value) == {
        "subject": "user-7",
        "tenant_id": "tenant-1",
        "role": "member",
        "kind": "user",
        "scopes": ["jobs:write"],
    }


async def test_auth_lets_health_and_public_methods_through(auth_server: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{auth_server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=PROBE))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        assert (await unary(channel, "Echo")(StringValue(value="hi"))).value == "hi"


async def test_client_token_provider_sends_bearer_token(
    auth_server: GrpcServer, signer: ServiceTokenSigner
) -> None:
    minted: list[str] = []

    async def token_provider() -> str:
        minted.append(signer.sign(audience=AUDIENCE, principal=USER))
        return minted[-1]

    async with connect(f"127.0.0.1:{auth_server.port}", token_provider=token_provider) as client:
        whoami = unary(client.channel, "WhoAmI")
        assert json.loads((await whoami(StringValue())).value)["subject"] == "user-7"
        assert json.loads((await whoami(StringValue())).value)["tenant_id"] == "tenant-1"
    assert len(minted) == 2  # a fresh token per call

    async with connect(f"127.0.0.1:{auth_server.port}") as anonymous:
        with pytest.raises(Unauthenticated) as excinfo:
            await unary(anonymous.channel, "WhoAmI")(StringValue())
    assert excinfo.value.reason == "TOKEN_MISSING"


# --- client ---------------------------------------------------------------------------------


FAST_RETRY = RetryPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.2)


async def test_client_retries_unavailable(server: GrpcServer, probe: Probe) -> None:
    probe.flaky_failures = 2
    async with GrpcClient(f"127.0.0.1:{server.port}", retry=FAST_RETRY) as client:
        response = await unary(client.channel, "Flaky")(StringValue())
    assert response.value == "attempt 3"
    assert probe.attempts == 3


async def test_client_without_retry_policy_fails_fast(server: GrpcServer, probe: Probe) -> None:
    probe.flaky_failures = 2
    async with GrpcClient(f"127.0.0.1:{server.port}", retry=None) as client:
        with pytest.raises(Unavailable, match="warming up"):
            await unary(client.channel, "Flaky")(StringValue())
    assert probe.attempts == 1


async def test_client_does_not_retry_invalid_argument(server: GrpcServer, probe: Probe) -> None:
    async with GrpcClient(f"127.0.0.1:{server.port}", retry=FAST_RETRY) as client:
        with pytest.raises(InvalidArgument):
            await unary(client.channel, "Fail")(StringValue(value="invalid"))
    assert probe.fail_calls == 1


async def test_client_applies_default_deadline(server: GrpcServer) -> None:
    async with GrpcClient(f"127.0.0.1:{server.port}", default_timeout=0.2) as client:
        slow = unary(client.channel, "Slow")
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await slow(StringValue(value="5"))
        assert time.monotonic() - started < 2
        # An explicit per-call timeout wins over the default.
        assert (await slow(StringValue(value="0.3"), timeout=3)).value == "done"


async def test_client_converts_errors_to_domain_exceptions(server: GrpcServer) -> None:
    async with connect(f"127.0.0.1:{server.port}") as client:
        fail = unary(client.channel, "Fail")
        with pytest.raises(InvalidArgument) as invalid:
            await fail(StringValue(value="invalid"))
        assert [(v.field, v.description) for v in invalid.value.field_violations] == [
            ("spec.epochs", "must be > 0")
        ]
        with pytest.raises(NotFound) as missing:
            await fail(StringValue(value="missing"))
        assert (missing.value.resource_type, missing.value.resource_id) == ("job", "job-42")

        call = unary_stream(client.channel, "Stream")(StringValue(value="invalid"))
        received: list[str] = []
        with pytest.raises(InvalidArgument) as streamed:
            async for response in call:
                received.append(response.value)
        assert received == ["0", "1", "2"]
        assert streamed.value.field_violations[0].field == "items[3]"

        with pytest.raises(NotFound):
            await stream_unary(client.channel, "Collect")(requests("missing"))
        with pytest.raises(InvalidArgument):
            await collect_stream(stream_stream(client.channel, "Chat")(requests("invalid")))

        # The wrapped unary call still exposes status and metadata.
        ok = unary(client.channel, "Echo")(StringValue(value="hi"))
        assert (await ok).value == "hi"
        assert await ok.code() == grpc.StatusCode.OK


async def test_client_can_keep_raw_rpc_errors(server: GrpcServer) -> None:
    async with connect(f"127.0.0.1:{server.port}", convert_errors=False) as client:
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await unary(client.channel, "Fail")(StringValue(value="missing"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND


async def test_client_propagates_request_id_and_metadata(server: GrpcServer) -> None:
    async with connect(f"127.0.0.1:{server.port}") as client:
        echo_id = unary(client.channel, "RequestId")
        with bind_request_id("trace-123"):
            assert (await echo_id(StringValue())).value == "trace-123"
        generated = (await echo_id(StringValue())).value
        assert generated and generated != "trace-123"


@pytest.mark.parametrize("convert_errors", [True, False])
async def test_downstream_error_passes_through_a_relaying_service(
    server: GrpcServer, convert_errors: bool
) -> None:
    """Service A calls B; B's NotFound reaches A's caller as NOT_FOUND, not INTERNAL."""
    downstream = connect(f"127.0.0.1:{server.port}", convert_errors=convert_errors)

    class Relay(Probe):
        async def echo(self, request: StringValue, context: Any) -> StringValue:
            result: StringValue = await unary(downstream.channel, "Fail")(request)
            return result

    async with running(Relay()) as relay, downstream, connect(f"127.0.0.1:{relay.port}") as client:
        with pytest.raises(NotFound) as excinfo:
            await unary(client.channel, "Echo")(StringValue(value="missing"))
    assert excinfo.value.resource_id == "job-42"


async def test_wait_ready(server: GrpcServer) -> None:
    async with connect(f"127.0.0.1:{server.port}") as client:
        await client.wait_ready(within_seconds=2)


# --- per-method handler cache ---------------------------------------------------------------


async def test_wrapped_handlers_are_built_once_per_method(
    channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio asks the interceptor on every call; wrapping is done once per method."""
    built: list[str] = []
    wrap = ServerInterceptor._wrap

    def counting(self: ServerInterceptor, method: str, handler: Any) -> Any:
        built.append(method)
        return wrap(self, method, handler)

    monkeypatch.setattr(ServerInterceptor, "_wrap", counting)
    echo = unary(channel, "Echo")
    request_id = unary(channel, "RequestId")
    for i in range(5):
        assert (await echo(StringValue(value=str(i)))).value == str(i)
        # Per-call data still comes from each call, not from the first one.
        ids = (("x-request-id", f"call-{i}"),)
        assert (await request_id(StringValue(), metadata=ids)).value == f"call-{i}"
    assert built == [f"/{PROBE}/Echo", f"/{PROBE}/RequestId"]


async def test_status_set_without_raising_is_sent_with_details(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await unary(channel, "SetCode")(StringValue(), metadata=(("x-request-id", "set-1"),))
    assert excinfo.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert excinfo.value.details() == "not ready"
    assert details_of(excinfo.value)["RequestInfo"].request_id == "set-1"


async def test_services_are_served_by_generic_handlers_only(
    probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio waits on one pending accept per registered method for every call it
    accepts; the generic handlers serve the same methods, so only they are registered."""
    registered: list[str] = []
    monkeypatch.setattr(
        grpc.aio._server.Server,
        "add_registered_method_handlers",
        lambda self, service, handlers: registered.append(service),
    )
    async with (
        running(probe) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=PROBE)
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        assert (await unary(channel, "Echo")(StringValue(value="hi"))).value == "hi"
    assert registered == []
