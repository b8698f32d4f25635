"""GrpcClient: an aio channel with UNAVAILABLE retries, default deadlines, auth, domain errors."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
from visionmesh.common.auth import AUTHORIZATION_METADATA_KEY
from visionmesh.common.errors import from_rpc_error
from visionmesh.common.logging import current_request_id
from visionmesh.common.rpc.interceptors import REQUEST_ID_METADATA_KEY

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "CallPolicy",
    "GrpcClient",
    "RetryPolicy",
    "TokenProvider",
    "client_interceptors",
    "connect",
]

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

TokenProvider = Callable[[], "str | Awaitable[str | None] | None"]
"""Returns the bearer token for the next call (sync or async), None to send none."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC-native retry (service config) for transient failures; applies to every method."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.1
    max_backoff_seconds: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def service_config(self) -> str:
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_seconds}s",
                            "maxBackoff": f"{self.max_backoff_seconds}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": list(self.retryable_codes),
                        },
                    }
                ]
            }
        )


class _ErrorConvertingCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc,type-arg]
    """A unary-response call whose `await` raises VisionMeshError instead of AioRpcError.

    Everything else (metadata, code, cancel) is the underlying call, so callers that
    keep the call object lose nothing.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Any:
        # Private attributes grpc reads on stream-request calls (e.g. _done_writing_flag).
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def done(self) -> bool:
        return bool(self._call.done())

    def time_remaining(self) -> float | None:
        remaining: float | None = self._call.time_remaining()
        return remaining

    def cancel(self) -> bool:
        return bool(self._call.cancel())

    def add_done_callback(self, callback: Any) -> None:
        self._call.add_done_callback(callback)

    async def initial_metadata(self) -> Any:
        return await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        return await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        code: grpc.StatusCode = await self._call.code()
        return code

    async def details(self) -> str:
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._call.wait_for_connection()

    async def write(self, request: Any) -> None:
        await self._call.write(request)

    async def done_writing(self) -> None:
        await self._call.done_writing()


async def _converting_iterator(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from exc


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """What the client interceptors add to every call.

    Fills in the default deadline, static metadata, the bearer token and x-request-id;
    with `convert_errors`, failures surface as VisionMeshError subclasses (field
    violations and all) instead of AioRpcError.
    """

    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS
    metadata: tuple[tuple[str, str], ...] = ()
    token_provider: TokenProvider | None = None
    convert_errors: bool = True

    async def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for key, value in self.metadata:
            if key not in metadata:
                metadata.add(key, value)
        if self.token_provider is not None and AUTHORIZATION_METADATA_KEY not in metadata:
            token = self.token_provider()
            if inspect.isawaitable(token):
                token = await token
            if token:
                metadata.add(AUTHORIZATION_METADATA_KEY, f"Bearer {token}")
        request_id = current_request_id()
        if request_id is not None and REQUEST_ID_METADATA_KEY not in metadata:
            # Carry the caller's request id downstream so one id spans the whole call tree.
            metadata.add(REQUEST_ID_METADATA_KEY, request_id)
        timeout = details.timeout if details.timeout is not None else self.default_timeout
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )

    def unary_response(self, call: Any) -> Any:
        return _ErrorConvertingCall(call) if self.convert_errors else call

    def stream_response(self, call: Any) -> Any:
        return _converting_iterator(call) if self.convert_errors else call


# grpc.aio files each interceptor under the first arity it implements, so one class per arity.
class _UnaryUnaryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(await self._policy.details(client_call_details), request)
        return self._policy.unary_response(call)


class _UnaryStreamInterceptor(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(await self._policy.details(client_call_details), request)
        return self._policy.stream_response(call)


class _StreamUnaryInterceptor(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        call = await continuation(await self._policy.details(client_call_details), requests)
        return self._policy.unary_response(call)


class _StreamStreamInterceptor(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, policy: CallPolicy) -> None:
        self._policy = policy

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, requests: Any
    ) -> Any:
        call = await continuation(await self._policy.details(client_call_details), requests)
        return self._policy.stream_response(call)


def client_interceptors(policy: CallPolicy) -> list[Any]:
    """The aio client interceptors applying `policy`, one per call arity."""
    return [
        _UnaryUnaryInterceptor(policy),
        _UnaryStreamInterceptor(policy),
        _StreamUnaryInterceptor(policy),
        _StreamStreamInterceptor(policy),
    ]


class GrpcClient:
    """An aio channel to one service; build stubs on `.channel`. Use as `async with`.

    Every call gets `default_timeout` unless it passes its own `timeout=`, is retried
    by gRPC on UNAVAILABLE per `retry`, carries `metadata`, the current request id and
    (with `token_provider`) `authorization: Bearer <token>`; failures raise
    VisionMeshError subclasses unless `convert_errors=False`.
    """

    def __init__(
        self,
        target: str,
        *,
        default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        metadata: Sequence[tuple[str, str]] = (),
        token_provider: TokenProvider | None = None,
        retry: RetryPolicy | None = RetryPolicy(),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        convert_errors: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retry is not None else 0),
        ]
        if retry is not None:
            channel_options.append(("grpc.service_config", retry.service_config()))
        channel_options.extend(options)
        interceptors = client_interceptors(
            CallPolicy(
                default_timeout=default_timeout,
                metadata=tuple(metadata),
                token_provider=token_provider,
                convert_errors=convert_errors,
            )
        )
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        else:
            self.channel = grpc.aio.secure_channel(
                target, credentials, options=channel_options, interceptors=interceptors
            )

    async def wait_ready(self, *, within_seconds: float) -> None:
        """Block until the channel connects; raises TimeoutError after `within_seconds`."""
        async with asyncio.timeout(within_seconds):
            await self.channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def connect(
    target: str,
    *,
    default_timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    metadata: Sequence[tuple[str, str]] = (),
    token_provider: TokenProvider | None = None,
    retry: RetryPolicy | None = RetryPolicy(),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    convert_errors: bool = True,
) -> GrpcClient:
    """`async with connect("host:port") as client: stub = XStub(client.channel)`."""
    return GrpcClient(
        target,
        default_timeout=default_timeout,
        metadata=metadata,
        token_provider=token_provider,
        retry=retry,
        max_message_bytes=max_message_bytes,
        convert_errors=convert_errors,
    )
