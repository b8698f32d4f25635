"""A gateway whose background loop ends stops looking healthy and exits for a restart."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionmesh.common.supervision import mark_not_serving, until_signal_or_loop_exit

from tests.gateway.conftest import GatewayHarness


async def test_a_dead_background_loop_turns_the_gateway_not_serving(
    harness: GatewayHarness,
) -> None:
    gateway = harness.gateway
    names = {task.get_name() for task in gateway.background_tasks}
    assert {"outbox-relay", "job-event-consumer"} <= names
    relay = next(t for t in gateway.background_tasks if t.get_name() == "outbox-relay")

    watching = asyncio.create_task(until_signal_or_loop_exit(gateway.background_tasks))
    await asyncio.sleep(0.2)
    assert not watching.done()  # healthy loops: nothing to report
    relay.cancel()  # the relay is gone, as after an uncaught error
    dead = await asyncio.wait_for(watching, 5)
    assert dead == [relay]

    await mark_not_serving(gateway.grpc)  # what `serve` does next, before exiting 1
    async with harness.channel() as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
