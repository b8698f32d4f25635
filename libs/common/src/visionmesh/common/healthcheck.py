"""`python -m visionmesh.common.healthcheck --port N`: exit 0 only while the server is SERVING.

The container health probe of every service (Dockerfile HEALTHCHECK and compose.yaml). It
asks the standard `grpc.health.v1.Health/Check` that `GrpcServer` registers, so a service that
is draining after SIGTERM (NOT_SERVING) reads as unhealthy before its port closes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TIMEOUT_SECONDS = 3.0


def check(
    *,
    port: int,
    host: str = DEFAULT_HOST,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> str:
    """The health status name of `service` ("" = the whole server) at host:port.

    Raises grpc.RpcError when the server cannot be reached or does not know the service.
    """
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # A proxy configured in the container's environment must never sit between a probe and
    # the process it probes.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visionmesh.common.healthcheck",
        description="Exit 0 when a gRPC server reports SERVING on grpc.health.v1, else 1.",
    )
    parser.add_argument("--port", type=int, required=True, help="the server's gRPC port")
    parser.add_argument("--host", default=DEFAULT_HOST, help="default %(default)s")
    parser.add_argument(
        "--service", default="", help="a fully qualified service name; default: the server"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds; %(default)s"
    )
    args = parser.parse_args(argv)
    try:
        status = check(port=args.port, host=args.host, service=args.service, timeout=args.timeout)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        name = code.name if code is not None else "ERROR"
        print(f"{args.host}:{args.port}: {name}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"{args.host}:{args.port}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
