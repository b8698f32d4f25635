"""The `grpc.aio.ServicerContext` a servicer gets when it is called over REST."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import Message
from visionmesh.common.errors import VisionMeshError, error_class_for_code

__all__ = ["RestCallContext"]


class RestCallContext(grpc.aio.ServicerContext[Message, Message]):
    """The subset of a gRPC servicer context that makes sense for one HTTP request.

    Servicers are transport adapters shared by both transports, so they get the same
    surface: metadata (the HTTP headers, lower-cased), `peer()`, `abort()` (raises the
    matching VisionMeshError, which the REST layer renders with its HTTP status),
    `set_code`/`set_details`, `cancelled()` (the client went away; tracked for streams) and
    `time_remaining()` (None: REST requests carry no deadline). Trailing metadata and
    compression settings are accepted and ignored. `read`/`write` are for streaming
    handlers written against the context instead of a generator; they are not supported.
    """

    __slots__ = (
        "_cancelled",
        "_code",
        "_details",
        "_done",
        "_headers",
        "_metadata",
        "_peer",
        "_started",
        "_trailing",
    )

    def __init__(self, *, headers: Sequence[tuple[bytes, bytes]], client: Any) -> None:
        self._headers = headers
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._peer = client
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        self._cancelled = False
        self._done = False
        self._started = time.monotonic()

    # --- what servicers read -----------------------------------------------------------

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        if self._metadata is None:
            self._metadata = tuple(
                (key.decode("latin-1"), value.decode("latin-1")) for key, value in self._headers
            )
        return self._metadata

    def peer(self) -> str:
        """`ipv4:127.0.0.1:5000` (gRPC's spelling), `ipv6:[::1]:5000`, or `unknown`."""
        if not self._peer:
            return "unknown"
        host, port = self._peer[0], self._peer[1]
        return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return {}

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return None

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    @property
    def elapsed_seconds(self) -> float:
        return time.monotonic() - self._started

    # --- what servicers set ------------------------------------------------------------

    async def abort(  # type: ignore[override]
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Any = (),
    ) -> NoReturn:
        raise self._error(code, details)

    async def abort_with_status(self, status: Any) -> NoReturn:
        raise self._error(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        return None

    def set_compression(self, compression: grpc.Compression) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    def add_done_callback(self, callback: Callable[..., Any]) -> None:
        raise NotImplementedError("done callbacks are not supported over REST")

    async def read(self) -> Message:
        raise NotImplementedError("REST calls have no request stream")

    async def write(self, message: Message) -> None:
        raise NotImplementedError("stream responses by yielding from the servicer method")

    # --- used by the transcoder ----------------------------------------------------------

    def status_error(self) -> VisionMeshError | None:
        """The error a servicer signalled with `set_code` (and returned), None when OK."""
        if self._code == grpc.StatusCode.OK:
            return None
        return self._error(self._code, self._details)

    def _error(self, code: grpc.StatusCode, details: str) -> VisionMeshError:
        error_class = error_class_for_code(code)
        return error_class(details or code.name.lower().replace("_", " "))

    def _mark_cancelled(self) -> None:
        self._cancelled = True

    def _mark_done(self) -> None:
        self._done = True
