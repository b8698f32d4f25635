"""EventBus against a real nats-server: dedupe, redelivery, in-progress, nak/term, work queues."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from visionmesh.common.embedded import NatsServer, free_port
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from visionmesh.common.events import Delivery, EventBus, PullConsumer


@pytest_asyncio.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[EventBus]:
    async with EventBus(servers=nats_server.url, name="test", initial_connect_timeout=5) as bus:
        yield bus


@pytest.fixture
def names() -> tuple[str, str]:
    """A stream name and subject prefix no other test uses."""
    suffix = uuid.uuid4().hex[:10]
    return f"TEST_{suffix}", f"test.{suffix}"


async def _stream(bus: EventBus, names: tuple[str, str], **options: object) -> tuple[str, str]:
    stream, prefix = names
    await bus.ensure_stream(stream, [f"{prefix}.>"], **options)  # type: ignore[arg-type]
    return stream, prefix


async def _one(consumer: PullConsumer, *, within: float = 3.0) -> Delivery:
    deliveries = await consumer.fetch(1, timeout=within)
    assert len(deliveries) == 1, "expected a delivery"
    return deliveries[0]


async def test_publish_sets_protobuf_headers_and_decodes(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = await _stream(bus, names)
    ack = await bus.publish(
        f"{prefix}.jobs", StringValue(value="hi"), msg_id="job-1", headers={"Trace": "t1"}
    )
    assert (ack.stream, ack.sequence, ack.duplicate) == (stream, 1, False)

    consumer = await bus.pull_consumer(stream, "reader")
    delivery = await _one(consumer)
    assert delivery.subject == f"{prefix}.jobs"
    assert delivery.headers["Content-Type"] == "application/x-protobuf"
    assert delivery.headers["Proto-Type"] == "google.protobuf.StringValue"
    assert delivery.headers["Trace"] == "t1"
    assert delivery.msg_id == "job-1"
    assert (delivery.stream_sequence, delivery.num_delivered) == (1, 1)
    assert delivery.decode(StringValue).value == "hi"
    with pytest.raises(InvalidArgument):
        delivery.decode(Int64Value)
    await delivery.ack(confirm=True)
    assert await consumer.fetch(1, timeout=0.3) == []
    await consumer.close()


async def test_same_msg_id_is_stored_once(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    first = await bus.publish(f"{prefix}.jobs", StringValue(value="a"), msg_id="job-42")
    second = await bus.publish(f"{prefix}.jobs", StringValue(value="b"), msg_id="job-42")
    other = await bus.publish(f"{prefix}.jobs", StringValue(value="c"), msg_id="job-43")
    assert not first.duplicate
    assert second.duplicate
    assert second.sequence == first.sequence
    assert not other.duplicate
    info = await bus.stream_info(stream)
    assert info.state.messages == 2


async def test_unacked_message_is_redelivered_after_ack_wait(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.jobs", StringValue(value="work"))
    consumer = await bus.pull_consumer(stream, "workers", ack_wait=1.0)
    first = await _one(consumer)
    assert first.num_delivered == 1
    started = time.monotonic()
    second = await _one(consumer, within=5.0)
    assert time.monotonic() - started >= 0.5
    assert second.stream_sequence == first.stream_sequence
    assert second.num_delivered == 2
    await second.ack(confirm=True)
    assert await consumer.fetch(1, timeout=1.2) == []


async def test_in_progress_holds_off_redelivery(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.jobs", StringValue(value="long job"))
    worker = await bus.pull_consumer(stream, "workers", ack_wait=1.0)
    rival = await bus.pull_consumer(stream, "workers", ack_wait=1.0)
    delivery = await _one(worker)

    # 2.2 ack_waits pass; without the progress pings the rival would get the message.
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        await delivery.in_progress()
        assert await rival.fetch(1, timeout=0.3) == []
    await delivery.ack(confirm=True)
    assert await rival.fetch(1, timeout=1.2) == []


async def test_nak_redelivers_and_nak_delay_waits(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.jobs", StringValue(value="retry me"))
    consumer = await bus.pull_consumer(stream, "workers", ack_wait=30.0)
    first = await _one(consumer)
    await first.nak()
    second = await _one(consumer, within=2.0)  # far sooner than ack_wait
    assert (second.stream_sequence, second.num_delivered) == (first.stream_sequence, 2)

    await second.nak(delay=1.0)
    assert await consumer.fetch(1, timeout=0.5) == []
    third = await _one(consumer, within=3.0)
    assert third.num_delivered == 3
    await third.ack()


async def test_term_is_never_redelivered(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.jobs", StringValue(value="poison"))
    await bus.publish(f"{prefix}.jobs", StringValue(value="fine"))
    consumer = await bus.pull_consumer(stream, "workers", ack_wait=1.0)
    poison = await _one(consumer)
    assert poison.decode(StringValue).value == "poison"
    await poison.term()
    fine = await _one(consumer)
    assert fine.decode(StringValue).value == "fine"
    await fine.ack()
    assert await consumer.fetch(1, timeout=2.5) == []  # > 2 ack_waits


async def test_max_deliver_stops_redelivery(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.jobs", StringValue(value="flaky"))
    consumer = await bus.pull_consumer(stream, "workers", max_deliver=2)
    await (await _one(consumer)).nak()
    await (await _one(consumer)).nak()
    assert await consumer.fetch(1, timeout=1.0) == []


async def test_workqueue_durable_shared_by_two_subscribers_delivers_each_once(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = await _stream(bus, names, retention="workqueue")
    for i in range(20):
        await bus.publish(f"{prefix}.jobs", Int64Value(value=i), msg_id=f"job-{i}")
    first = await bus.pull_consumer(stream, "trainers", ack_wait=30.0)
    second = await bus.pull_consumer(stream, "trainers", ack_wait=30.0)

    seen: dict[str, list[int]] = {"first": [], "second": []}

    async def work(name: str, consumer: PullConsumer) -> None:
        while True:
            deliveries = await consumer.fetch(3, timeout=1.0)
            if not deliveries:
                return
            for delivery in deliveries:
                seen[name].append(delivery.decode(Int64Value).value)
                await delivery.ack(confirm=True)
            await asyncio.sleep(0.01)  # let the other subscriber take a turn

    await asyncio.gather(work("first", first), work("second", second))
    assert sorted(seen["first"] + seen["second"]) == list(range(20))
    assert seen["first"] and seen["second"], seen
    # Work-queue retention: acked messages are gone from the stream.
    assert (await bus.stream_info(stream)).state.messages == 0


async def test_iterate_yields_until_the_caller_stops(bus: EventBus, names: tuple[str, str]) -> None:
    stream, prefix = await _stream(bus, names)
    consumer = await bus.pull_consumer(stream, "loop")
    for i in range(5):
        await bus.publish(f"{prefix}.events", Int64Value(value=i))
    received = []
    async for delivery in consumer.iterate(batch=2, poll=1.0):
        received.append(delivery.decode(Int64Value).value)
        await delivery.ack()
        if len(received) == 5:
            break
    assert received == [0, 1, 2, 3, 4]


async def test_filter_subject_limits_what_a_consumer_sees(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = await _stream(bus, names)
    await bus.publish(f"{prefix}.train", StringValue(value="t"))
    await bus.publish(f"{prefix}.export", StringValue(value="e"))
    consumer = await bus.pull_consumer(stream, "exporters", filter_subject=f"{prefix}.export")
    only = await _one(consumer)
    assert only.decode(StringValue).value == "e"
    assert await consumer.fetch(1, timeout=0.3) == []


async def test_ensure_stream_and_pull_consumer_are_idempotent_and_update(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = names
    await bus.ensure_stream(stream, [f"{prefix}.a"], max_age=3600)
    await bus.ensure_stream(stream, [f"{prefix}.a"], max_age=3600)
    info = await bus.ensure_stream(stream, [f"{prefix}.a", f"{prefix}.b"], max_age=3600)
    assert info.config.subjects == [f"{prefix}.a", f"{prefix}.b"]
    ack = await bus.publish(f"{prefix}.b", StringValue(value="b"))
    assert ack.stream == stream

    await bus.pull_consumer(stream, "c1", ack_wait=10.0)
    consumer = await bus.pull_consumer(stream, "c1", ack_wait=20.0)
    assert (await consumer.info()).config.ack_wait == 20.0

    with pytest.raises(FailedPrecondition):
        await bus.ensure_stream(stream, [f"{prefix}.a"], retention="workqueue")
    await bus.delete_stream(stream)
    with pytest.raises(NotFound):
        await bus.stream_info(stream)


async def test_publish_without_a_stream_fails_clearly(bus: EventBus) -> None:
    with pytest.raises(FailedPrecondition):
        await bus.publish(f"nostream.{uuid.uuid4().hex}", StringValue(value="lost"))


async def test_pull_consumer_on_missing_stream_is_not_found(bus: EventBus) -> None:
    with pytest.raises(NotFound):
        await bus.pull_consumer(f"MISSING_{uuid.uuid4().hex[:8]}", "c")


async def test_subscribe_ordered_replays_then_follows(
    bus: EventBus, names: tuple[str, str]
) -> None:
    _, prefix = await _stream(bus, names)
    subject = f"{prefix}.job-7.cancel"
    await bus.publish(f"{prefix}.job-8.cancel", StringValue(value="someone else"))
    await bus.publish(subject, StringValue(value="first"))
    async with await bus.subscribe_ordered(subject) as watcher:
        replayed = await watcher.next(timeout=3.0)
        assert replayed is not None
        assert replayed.decode(StringValue).value == "first"
        assert await watcher.next(timeout=0.3) is None
        await bus.publish(subject, StringValue(value="second"))
        live = await watcher.next(timeout=3.0)
        assert live is not None
        assert live.decode(StringValue).value == "second"

    async with await bus.subscribe_ordered(subject, deliver_policy="new") as fresh:
        assert await fresh.next(timeout=0.3) is None
        await bus.publish(subject, StringValue(value="third"))
        delivery = await fresh.next(timeout=3.0)
        assert delivery is not None
        assert delivery.decode(StringValue).value == "third"


async def test_connect_gives_up_after_initial_timeout() -> None:
    bus = EventBus(servers=f"nats://127.0.0.1:{free_port()}", initial_connect_timeout=0.5)
    with pytest.raises(Unavailable):
        await bus.connect()


async def test_bus_reconnects_after_server_restart(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "js", log_dir=tmp_path)
    async with (
        server,
        EventBus(servers=server.url, reconnect_wait=0.1, initial_connect_timeout=5) as bus,
    ):
        await bus.ensure_stream("RESTART", ["restart.>"])
        await bus.publish("restart.a", StringValue(value="before"), msg_id="m1")
        await server.stop()
        await server.start()
        await server.wait_ready()
        # The client reconnects by itself; the publish waits for that within its timeout.
        ack = await bus.publish("restart.a", StringValue(value="after"), msg_id="m2", timeout=10)
        assert bus.is_connected
        # The file store survived the restart: both messages are there.
        assert ack.sequence == 2
        assert (await bus.stream_info("RESTART")).state.messages == 2


async def test_short_max_age_narrows_the_dedupe_window(
    bus: EventBus, names: tuple[str, str]
) -> None:
    stream, prefix = names
    info = await bus.ensure_stream(stream, [f"{prefix}.>"], max_age=30)
    assert info.config.max_age == 30
    assert info.config.duplicate_window == 30
