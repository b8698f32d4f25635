"""NATS JetStream: streams, protobuf publishing with dedupe, pull consumers, ordered watchers.

Stream names and subjects belong to the callers (each service's contract module), not here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Literal, Self, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from visionmesh.common.logging import get_logger

__all__ = [
    "CONTENT_TYPE_HEADER",
    "MSG_ID_HEADER",
    "PROTOBUF_CONTENT_TYPE",
    "PROTO_TYPE_HEADER",
    "Delivery",
    "EventBus",
    "OrderedSubscription",
    "PublishAck",
    "PullConsumer",
]

MSG_ID_HEADER = "Nats-Msg-Id"
CONTENT_TYPE_HEADER = "Content-Type"
PROTO_TYPE_HEADER = "Proto-Type"
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"

# JetStream API error code for "stream name already in use with a different configuration".
_ERR_STREAM_NAME_IN_USE = 10058

M = TypeVar("M", bound=Message)

# Unsubscribing after the connection or subscription is already gone is not a failure.
_GONE = (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError)

Retention = Literal["limits", "workqueue", "interest"]
DeliverPolicy = Literal["all", "new", "last", "last_per_subject"]

_RETENTION = {
    "limits": api.RetentionPolicy.LIMITS,
    "workqueue": api.RetentionPolicy.WORK_QUEUE,
    "interest": api.RetentionPolicy.INTEREST,
}
_DELIVER_POLICY = {
    "all": api.DeliverPolicy.ALL,
    "new": api.DeliverPolicy.NEW,
    "last": api.DeliverPolicy.LAST,
    "last_per_subject": api.DeliverPolicy.LAST_PER_SUBJECT,
}


@dataclass(frozen=True, kw_only=True)
class PublishAck:
    """The stream's receipt: `duplicate` is True when the msg id was seen within the window."""

    stream: str
    sequence: int
    duplicate: bool


class Delivery:
    """One message from a JetStream consumer, with its delivery metadata and ack verbs."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def raw(self) -> Msg:
        """The underlying nats-py message, for what this wrapper does not cover."""
        return self._msg

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def headers(self) -> Mapping[str, str]:
        return self._msg.headers or {}

    @property
    def msg_id(self) -> str | None:
        return self.headers.get(MSG_ID_HEADER)

    @property
    def proto_type(self) -> str | None:
        return self.headers.get(PROTO_TYPE_HEADER)

    @property
    def num_delivered(self) -> int:
        """1 on first delivery; more means redelivery (ack_wait expired, nak, or a crash)."""
        return self._msg.metadata.num_delivered

    @property
    def stream_sequence(self) -> int:
        return self._msg.metadata.sequence.stream

    @property
    def consumer_sequence(self) -> int:
        return self._msg.metadata.sequence.consumer

    @property
    def num_pending(self) -> int:
        return self._msg.metadata.num_pending

    @property
    def timestamp(self) -> datetime:
        """When the message was stored in the stream."""
        return self._msg.metadata.timestamp

    def decode(self, message_type: type[M]) -> M:
        """Parses the payload; `InvalidArgument` if the Proto-Type header names another type."""
        expected = message_type.DESCRIPTOR.full_name
        if self.proto_type is not None and self.proto_type != expected:
            raise InvalidArgument(
                f"message on {self.subject!r} is {self.proto_type}, not {expected}",
                reason="EVENT_TYPE_MISMATCH",
            )
        message = message_type()
        try:
            message.ParseFromString(self.data)
        except DecodeError as exc:
            raise InvalidArgument(
                f"undecodable {expected} on {self.subject!r}: {exc}", reason="EVENT_DECODE_FAILED"
            ) from exc
        return message

    async def ack(self, *, confirm: bool = False) -> None:
        """Done with it. `confirm=True` waits until the server has recorded the ack."""
        if confirm:
            await self._msg.ack_sync(timeout=5.0)
        else:
            await self._msg.ack()

    async def in_progress(self) -> None:
        """Still working: restarts the ack_wait clock (send it more often than ack_wait)."""
        await self._msg.in_progress()

    async def nak(self, *, delay: float | None = None) -> None:
        """Give it back for redelivery, after `delay` seconds if given."""
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        """Never redeliver (a poison message); the consumer's advisory records it."""
        await self._msg.term()

    def __repr__(self) -> str:
        return (
            f"Delivery(subject={self.subject!r}, stream_sequence={self.stream_sequence}, "
            f"num_delivered={self.num_delivered}, bytes={len(self.data)})"
        )


class PullConsumer:
    """A durable pull consumer; several instances bound to one durable share its messages."""

    def __init__(self, *, sub: JetStreamContext.PullSubscription, stream: str, name: str) -> None:
        self._sub = sub
        self.stream = stream
        self.name = name
        self._log = get_logger(__name__).bind(stream=stream, consumer=name)

    async def fetch(
        self,
        batch: int = 1,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - becomes the pull request's server-side expiry
    ) -> list[Delivery]:
        """Up to `batch` messages, waiting at most `timeout` seconds; [] if none arrived."""
        try:
            messages = await self._sub.fetch(batch, timeout=timeout)
        except TimeoutError:
            # nats-py raises its own TimeoutError or a bare asyncio one depending on the
            # phase of the fetch; both mean "nothing arrived in time".
            return []
        return [Delivery(msg) for msg in messages]

    async def iterate(
        self, *, batch: int = 10, poll: float = 5.0, retry_delay: float = 1.0
    ) -> AsyncIterator[Delivery]:
        """Yields messages for ever (until the caller stops iterating or is cancelled).

        Connection trouble is logged and retried after `retry_delay`, so a worker loop
        survives a NATS restart; handlers still ack each delivery themselves.
        """
        while True:
            try:
                deliveries = await self.fetch(batch, timeout=poll)
            except (nats.errors.Error, OSError) as exc:
                self._log.warning("jetstream fetch failed; retrying", error=repr(exc))
                await asyncio.sleep(retry_delay)
                continue
            for delivery in deliveries:
                yield delivery

    async def info(self) -> api.ConsumerInfo:
        """Server-side state: num_pending, num_ack_pending, num_redelivered, config."""
        return await self._sub.consumer_info()

    async def close(self) -> None:
        """Stops this subscriber; the durable consumer and its progress stay on the server."""
        with contextlib.suppress(
            nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError
        ):
            await self._sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class OrderedSubscription:
    """An ephemeral, ordered, ack-free view of a subject (e.g. one job's cancel signal)."""

    def __init__(self, sub: JetStreamContext.PushSubscription) -> None:
        self._sub = sub

    async def next(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - forwarded to nats-py's next_msg
    ) -> Delivery | None:
        """The next message, or None after `timeout` seconds (None: wait for ever)."""
        try:
            return Delivery(await self._sub.next_msg(timeout=timeout))
        except TimeoutError:
            return None

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = await self.next()
            if delivery is not None:
                yield delivery

    async def close(self) -> None:
        with contextlib.suppress(
            nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError
        ):
            await self._sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class EventBus:
    """A NATS connection that reconnects for ever, with JetStream helpers; use `async with`.

    `initial_connect_timeout=None` keeps retrying the first connection too, so services may
    start before NATS does; give a number to fail fast instead (tests, CLIs).
    """

    def __init__(
        self,
        *,
        servers: str | Sequence[str],
        name: str | None = None,
        initial_connect_timeout: float | None = None,
        reconnect_wait: float = 1.0,
        request_timeout: float = 5.0,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.name = name
        self.initial_connect_timeout = initial_connect_timeout
        self.reconnect_wait = reconnect_wait
        self.request_timeout = request_timeout
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._log = get_logger(__name__).bind(nats_client=name)

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("EventBus is not connected; call connect() or use `async with`")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("EventBus is not connected; call connect() or use `async with`")
        return self._js

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> None:
        """Connects (idempotent); `Unavailable` if `initial_connect_timeout` runs out."""
        if self._nc is not None:
            return
        nc = Client()
        connecting = nc.connect(
            servers=self.servers,
            name=self.name,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]  # float is fine
            connect_timeout=2,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
        )
        try:
            await asyncio.wait_for(connecting, self.initial_connect_timeout)
        except TimeoutError as exc:
            await nc.close()
            raise Unavailable(f"NATS at {', '.join(self.servers)} not reachable") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=self.request_timeout)
        self._log.info(
            "nats connected", url=str(nc.connected_url.geturl() if nc.connected_url else "")
        )

    async def close(self) -> None:
        """Flushes pending acks (the server has them once this returns), then closes."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is None or nc.is_closed:
            return
        # Not drain(): it waits for every subscription's queue to empty, and a pull
        # subscription can hold late deliveries nobody will fetch, stalling for drain_timeout.
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.flush(timeout=2)
        # Closing while the server is gone (shutdown during an outage) must still succeed.
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _on_error(self, exc: Exception) -> None:
        self._log.warning("nats error", error=repr(exc))

    async def _on_disconnected(self) -> None:
        self._log.warning("nats disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        self._log.info("nats reconnected", url=url.geturl() if url else "")

    async def _on_closed(self) -> None:
        self._log.info("nats connection closed")

    async def ensure_stream(
        self,
        name: str,
        subjects: Sequence[str],
        *,
        retention: Retention = "limits",
        max_age: float | None = None,
        duplicate_window: float = 120.0,
        max_msgs: int | None = None,
        max_bytes: int | None = None,
        storage: Literal["file", "memory"] = "file",
        replicas: int = 1,
    ) -> api.StreamInfo:
        """Creates the stream or updates it to this config (idempotent; safe to race).

        Durations are seconds; `max_age=None` keeps messages until limits or acks remove them.
        Retention cannot change once a stream exists (FailedPrecondition).
        """
        if max_age is not None and max_age > 0:
            # The server refuses a dedupe window longer than the messages live.
            duplicate_window = min(duplicate_window, max_age)
        config = api.StreamConfig(
            name=name,
            subjects=list(subjects),
            retention=_RETENTION[retention],
            max_age=max_age,
            duplicate_window=duplicate_window,
            max_msgs=max_msgs,
            max_bytes=max_bytes,
            storage=api.StorageType.MEMORY if storage == "memory" else api.StorageType.FILE,
            num_replicas=replicas,
        )
        try:
            try:
                # Creating with an identical config is a no-op on the server, so the common
                # restart path costs one request.
                return await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                    raise
            info = await self.js.update_stream(config)
            self._log.info("jetstream stream updated", stream=name, subjects=list(subjects))
            return info
        except (TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            raise Unavailable(f"JetStream unavailable: {exc}") from exc
        except nats.js.errors.APIError as exc:
            # The server rejects some changes (e.g. retention) with 400 and others with 500.
            raise FailedPrecondition(
                f"stream {name!r} cannot take this config: {exc.description}",
                reason="STREAM_CONFIG_REJECTED",
            ) from exc

    async def stream_info(self, name: str) -> api.StreamInfo:
        """Config and state (messages, bytes, first/last seq, consumers); `NotFound` if absent."""
        try:
            return await self.js.stream_info(name)
        except nats.js.errors.NotFoundError as exc:
            raise NotFound(resource_type="stream", resource_id=name) from exc

    async def delete_stream(self, name: str) -> None:
        """Deletes the stream and its consumers; a missing stream is fine."""
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_stream(name)

    async def publish(
        self,
        subject: str,
        message: Message,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - forwarded as the publish request timeout
    ) -> PublishAck:
        """Stores `message` in the stream bound to `subject`.

        `msg_id` (e.g. a job id) makes retries safe: within the stream's duplicate window the
        server keeps the first copy and answers later ones with `duplicate=True`.
        """
        all_headers = {
            **(headers or {}),
            CONTENT_TYPE_HEADER: PROTOBUF_CONTENT_TYPE,
            PROTO_TYPE_HEADER: message.DESCRIPTOR.full_name,
        }
        if msg_id is not None:
            all_headers[MSG_ID_HEADER] = msg_id
        try:
            ack = await self.js.publish(
                subject,
                message.SerializeToString(),
                timeout=timeout if timeout is not None else self.request_timeout,
                headers=all_headers,
            )
        except nats.js.errors.NoStreamResponseError as exc:
            raise FailedPrecondition(
                f"no JetStream stream stores subject {subject!r}", reason="NO_STREAM_FOR_SUBJECT"
            ) from exc
        except (TimeoutError, nats.errors.ConnectionClosedError) as exc:
            raise Unavailable(f"publish to {subject!r} not acknowledged: {exc!r}") from exc
        return PublishAck(stream=ack.stream, sequence=ack.seq, duplicate=bool(ack.duplicate))

    async def pull_consumer(
        self,
        stream: str,
        durable: str,
        *,
        filter_subject: str | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = -1,
        max_ack_pending: int = 1000,
        backoff: Sequence[float] | None = None,
        deliver_policy: DeliverPolicy = "all",
    ) -> PullConsumer:
        """Creates (or updates) the durable consumer and binds a subscriber to it.

        `ack_wait` seconds without ack or in_progress means redelivery; `max_deliver=-1`
        retries for ever; `backoff` (seconds per attempt) overrides ack_wait between retries.
        """
        config = api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=_DELIVER_POLICY[deliver_policy],
            filter_subject=filter_subject,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            backoff=list(backoff) if backoff else None,
        )
        try:
            # Without an explicit action the server creates or updates, so this is idempotent.
            await self.js.add_consumer(stream, config)
        except nats.js.errors.NotFoundError as exc:
            raise NotFound(resource_type="stream", resource_id=stream) from exc
        except (TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            raise Unavailable(f"JetStream unavailable: {exc}") from exc
        except nats.js.errors.APIError as exc:
            raise FailedPrecondition(
                f"consumer {durable!r} on {stream!r} cannot take this config: {exc.description}",
                reason="CONSUMER_CONFIG_REJECTED",
            ) from exc
        sub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        return PullConsumer(sub=sub, stream=stream, name=durable)

    async def subscribe_ordered(
        self,
        subject: str,
        *,
        deliver_policy: DeliverPolicy = "all",
        stream: str | None = None,
    ) -> OrderedSubscription:
        """An ephemeral ordered consumer (no acks; the server drops it once unsubscribed)."""
        try:
            sub = await self.js.subscribe(
                subject,
                stream=stream,
                ordered_consumer=True,
                deliver_policy=_DELIVER_POLICY[deliver_policy],
                # Heartbeats let the client notice a lost consumer and recreate it in order.
                idle_heartbeat=5.0,
            )
        except nats.js.errors.NotFoundError as exc:
            raise NotFound(resource_type="stream", resource_id=stream or subject) from exc
        return OrderedSubscription(sub)
