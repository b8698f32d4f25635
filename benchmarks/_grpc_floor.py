"""The floor of a gRPC call here: a bare grpc.aio echo server in its own process.

No interceptors, auth, validation or database: what grpcio itself costs per unary call on
this machine, so a gateway figure can be read against it from the same run.

    python benchmarks/_grpc_floor.py serve      # prints its port, serves until killed
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import grpc

_METHOD = "/bench.Echo/Echo"


async def _serve() -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    """The echo server's target, in a child process for as long as the block runs."""
    # A plain Popen: the child must outlive nothing but this block, and fork+exec is quick.
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        port = int(await asyncio.to_thread(process.stdout.readline))
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


async def echo_latency_ms(target: str, n: int, payload: int = 256) -> dict[str, list[float]]:
    """Sequential unary calls through the grpc.aio and the synchronous client."""
    body = b"x" * payload
    times: dict[str, list[float]] = {"aio": [], "sync": []}
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(_METHOD)
        for _ in range(200):
            await call(body)
        for _ in range(n):
            start = time.perf_counter()
            await call(body)
            times["aio"].append((time.perf_counter() - start) * 1000)
    with grpc.insecure_channel(target) as sync_channel:
        sync_call = sync_channel.unary_unary(_METHOD)
        for _ in range(200):
            sync_call(body)
        for _ in range(n):
            start = time.perf_counter()
            sync_call(body)
            times["sync"].append((time.perf_counter() - start) * 1000)
    return times


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    asyncio.run(_serve())
