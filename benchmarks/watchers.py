"""Job watchers benchmark: worker -> watcher event latency with many watchers on one job.

Runs NATS and SeaweedFS (embedded binaries) and the gateway as a separate process on
SQLite (or PostgreSQL with --postgres), opens `--watchers` concurrent streams on one job
(half gRPC WatchJob, half REST SSE), then publishes job events on the job's events subject
as a training worker does (JobEvent over JetStream) and measures, per event and watcher,
the time from the publish to its arrival at the watcher. In the same run it measures the
previous implementation as a baseline: every watcher polls the database each second and
reads it again on every wake-up (`--variants new,baseline`).

    uv run --frozen python benchmarks/watchers.py [--watchers 200] [--events 60] \\
        [--interval 0.1] [--postgres]

Prints p50/p90/p99/max latency (ms), how many deliveries arrived, and the gateway's CPU
seconds while the events flowed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from _mesh import percentiles, postgres_database
from google.protobuf.timestamp_pb2 import Timestamp
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.cli.synth import make_detect_dataset, zip_dataset
from visionmesh.common.embedded import NatsServer, SeaweedS3
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import job_events_subject

S3_ACCESS_KEY = "bench"
S3_SECRET_KEY = "bench-secret-key"
SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 1,
    "imgsz": 64,
}


# -- the gateway process --------------------------------------------------------------------


def _install_baseline() -> None:
    """Puts back the poll-based watching this change replaced (commit 9f209f7's code)."""
    from collections import defaultdict

    from sqlalchemy import select
    from visionmesh.gateway.core import jobs, states
    from visionmesh.gateway.db import models as db

    class PollingWatchers(jobs.JobWatchers):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._events: dict[str, set[asyncio.Event]] = defaultdict(set)

        def notify(self, job_id: str) -> None:
            for event in self._events.get(job_id, ()):
                event.set()

        async def start(self, bus: Any) -> None:
            return None

        def register(self, job_id: str) -> asyncio.Event:
            event = asyncio.Event()
            self._events[job_id].add(event)
            return event

        def unregister(self, job_id: str, event: asyncio.Event) -> None:
            waiting = self._events.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._events[job_id]

    async def watch(self: Any, job_id: str, after_sequence: int) -> Any:
        async with self._db.session() as session:
            await self._job_row(session, job_id)
        wakeup = self._watchers.register(job_id)
        last = after_sequence
        try:
            while True:
                wakeup.clear()
                async with self._db.session() as session:
                    rows = (
                        await session.scalars(
                            select(db.JobEvent)
                            .where(db.JobEvent.job_id == job_id, db.JobEvent.sequence > last)
                            .order_by(db.JobEvent.sequence)
                            .limit(500)
                        )
                    ).all()
                    job = await session.get(db.Job, job_id)
                    newest = job.last_event_sequence if job else last
                    terminal = job is not None and job.state in states.TERMINAL
                for row in rows:
                    event = jobs_pb2.WatchJobResponse.FromString(row.payload)
                    last = event.sequence
                    yield event
                if terminal and last >= newest:
                    return
                if rows and last < newest:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), 1.0)
        finally:
            self._watchers.unregister(job_id, wakeup)

    jobs.JobWatchers = PollingWatchers  # type: ignore[misc]
    jobs.JobsCore.watch = watch  # type: ignore[method-assign]


def serve_gateway(variant: str) -> None:
    if variant == "baseline":
        _install_baseline()
    from visionmesh.common.logging import configure_logging
    from visionmesh.common.settings import load_settings
    from visionmesh.gateway.app import serve
    from visionmesh.gateway.config import GatewaySettings

    settings = load_settings(GatewaySettings)
    configure_logging(service="gateway", level=settings.log_level, json=settings.log_json)
    asyncio.run(serve(settings))


# -- the benchmark ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    def __init__(self, variant: str, env: dict[str, str]) -> None:
        self.grpc_port = _free_port()
        self.rest_port = _free_port()
        self.env = {
            **os.environ,
            **env,
            "VISIONMESH_GRPC_PORT": str(self.grpc_port),
            "VISIONMESH_REST_PORT": str(self.rest_port),
        }
        self.variant = variant
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def __aenter__(self) -> GatewayProcess:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - starts at once, never waited on here
            [sys.executable, __file__, "--serve-gateway", self.variant], env=self.env
        )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.rest}/readyz")).status_code == 200:
                        return self
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway ({self.variant}) did not start")
                await asyncio.sleep(0.2)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, 20)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _login(rest: str) -> str:
    async with httpx.AsyncClient(base_url=rest, timeout=60) as client:
        credentials = {"username": "bench", "password": "bench-pass-1"}
        await client.post("/v1/auth/signup", json=credentials)
        login = await client.post("/v1/auth/login", json=credentials)
        login.raise_for_status()
        return str(login.json()["accessToken"])


async def _queued_jobs(rest: str, token: str, tmp: Path, count: int) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=rest, timeout=60, headers=headers) as client:
        make_detect_dataset(tmp / "ds", n_train=4, n_val=2, imgsz=64, seed=0)
        archive = zip_dataset(tmp / "ds", tmp / "ds.zip")
        created = (await client.post("/v1/datasets", json={"name": "bench"})).json()
        async with httpx.AsyncClient(timeout=60) as s3:
            (await s3.put(created["uploadUrl"], content=archive.read_bytes())).raise_for_status()
        dataset_id = created["dataset"]["id"]
        (await client.post(f"/v1/datasets/{dataset_id}:finalize", json={})).raise_for_status()
        jobs = []
        for _ in range(count):
            response = await client.post(
                "/v1/training/jobs", json={"datasetId": dataset_id, "spec": SPEC}
            )
            response.raise_for_status()
            jobs.append(response.json()["job"])
        for job in jobs:
            for _ in range(200):
                state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
                if state == "JOB_STATE_QUEUED":
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("job not queued")
        return jobs


class Arrivals:
    """transport -> epoch -> arrival times, one per watcher that got it."""

    def __init__(self) -> None:
        self.at: dict[str, dict[int, list[float]]] = {"grpc": {}, "sse": {}}
        self.connected = 0
        self.ended = 0

    def record(self, transport: str, epoch: int) -> None:
        self.at[transport].setdefault(epoch, []).append(time.monotonic())


async def _grpc_watcher(stub: Any, token: str, job_id: str, arrivals: Arrivals) -> None:
    first = True
    async for response in stub.WatchJob(
        jobs_pb2.WatchJobRequest(id=job_id), metadata=(("authorization", f"Bearer {token}"),)
    ):
        if first:
            arrivals.connected += 1
            first = False
        if response.HasField("progress"):
            arrivals.record("grpc", response.progress.epoch)
    arrivals.ended += 1


async def _sse_watcher(client: httpx.AsyncClient, job_id: str, arrivals: Arrivals) -> None:
    first = True
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if not line.startswith("data:"):
                continue
            if first:
                arrivals.connected += 1
                first = False
            progress = json.loads(line[5:]).get("progress")
            if progress is not None:
                arrivals.record("sse", int(progress.get("epoch", 0)))
    arrivals.ended += 1


async def watch_client(config: dict[str, Any]) -> None:
    """One watcher process: opens its streams, says so, records arrivals until they end.

    Several of these share the watchers so that the client side (protobuf, JSON, asyncio
    per delivery) is not what is measured; CLOCK_MONOTONIC is the same in all processes.
    """
    arrivals = Arrivals()
    n_grpc, n_sse, token, job_id = (
        config["grpc"],
        config["sse"],
        config["token"],
        config["job_id"],
    )
    channels = [grpc.aio.insecure_channel(config["grpc_target"]) for _ in range(2)]
    stubs = [jobs_pb2_grpc.JobServiceStub(channel) for channel in channels]
    limits = httpx.Limits(max_connections=n_sse + 10, max_keepalive_connections=n_sse + 10)
    http = httpx.AsyncClient(
        base_url=config["rest"],
        headers={"authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(120, read=None),
        limits=limits,
    )
    tasks = [
        asyncio.create_task(_grpc_watcher(stubs[i % len(stubs)], token, job_id, arrivals))
        for i in range(n_grpc)
    ] + [asyncio.create_task(_sse_watcher(http, job_id, arrivals)) for _ in range(n_sse)]
    while arrivals.connected < n_grpc + n_sse:  # noqa: ASYNC110 - a few ms of polling
        await asyncio.sleep(0.02)
    print("connected", flush=True)
    cpu_before = time.process_time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), config["timeout"])
    cpu = time.process_time() - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await http.aclose()
    for channel in channels:
        await channel.close()
    print(json.dumps({"at": arrivals.at, "ended": arrivals.ended, "cpu": cpu}), flush=True)


async def _run_variant(
    gateway: GatewayProcess, token: str, job: dict[str, Any], nats_url: str, args: Any
) -> dict[str, Any]:
    n_grpc = {"mixed": args.watchers // 2, "grpc": args.watchers, "sse": 0}[args.mode]
    n_sse = args.watchers - n_grpc
    procs = []
    for k in range(args.clients):
        config = {
            "grpc_target": gateway.grpc_target,
            "rest": gateway.rest,
            "token": token,
            "job_id": job["id"],
            "grpc": n_grpc // args.clients + (k < n_grpc % args.clients),
            "sse": n_sse // args.clients + (k < n_sse % args.clients),
            "timeout": 60 + args.events * args.interval,
        }
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--watch-client",
                json.dumps(config),
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"connected":
            raise RuntimeError(f"watch client failed: {line!r}")
    await asyncio.sleep(1.0)

    sent: dict[int, float] = {}
    cpu_before = gateway.cpu_seconds()
    async with EventBus(servers=nats_url, name="bench-worker") as bus:

        async def emit(sequence: int, **payload: Any) -> None:
            now = Timestamp()
            now.GetCurrentTime()
            event = events_pb2.JobEvent(
                job_id=job["id"],
                tenant_id=job["tenantId"],
                attempt=1,
                worker_sequence=sequence,
                worker_id="bench",
                time=now,
                **payload,
            )
            await bus.publish(
                job_events_subject(job["id"]), event, msg_id=f"{job['id']}/1/{sequence}"
            )

        await emit(1, state_changed=events_pb2.JobStateChanged(state=job_pb2.JOB_STATE_RUNNING))
        started = time.monotonic()
        for epoch in range(1, args.events + 1):
            await asyncio.sleep(max(0.0, started + epoch * args.interval - time.monotonic()))
            sent[epoch] = time.monotonic()
            await emit(
                1 + epoch,
                progress=job_pb2.JobProgress(
                    epoch=epoch, total_epochs=args.events, fraction=epoch / args.events
                ),
            )
        # Give the slowest a moment before the terminal event ends every stream.
        await asyncio.sleep(args.drain)
        cpu = gateway.cpu_seconds() - cpu_before
        await emit(
            2 + args.events,
            state_changed=events_pb2.JobStateChanged(state=job_pb2.JOB_STATE_SUCCEEDED),
        )
    latencies: dict[str, list[float]] = {"grpc": [], "sse": []}
    ended = 0
    client_cpu = 0.0
    for proc in procs:
        assert proc.stdout is not None
        report = json.loads(await proc.stdout.readline())
        await proc.wait()
        ended += report["ended"]
        client_cpu += report["cpu"]
        for transport, by_epoch in report["at"].items():
            for epoch, times in by_epoch.items():
                latencies[transport] += [(t - sent[int(epoch)]) * 1000 for t in times]
    every = latencies["grpc"] + latencies["sse"]

    def summary(samples: list[float]) -> dict[str, float]:
        if len(samples) < 2:
            return {}
        return {k: round(v, 1) for k, v in percentiles(samples).items()} | {
            "max": round(max(samples), 1)
        }

    return {
        "variant": gateway.variant,
        "watchers": args.watchers,
        "grpc": n_grpc,
        "sse": n_sse,
        "events": args.events,
        "deliveries": f"{len(every)}/{len(sent) * args.watchers}",
        "latency_ms": summary(every),
        "grpc_latency_ms": summary(latencies["grpc"]),
        "sse_latency_ms": summary(latencies["sse"]),
        "gateway_cpu_s": round(cpu, 2),
        "client_cpu_s": round(client_cpu, 2),
        "streams_ended": ended,
    }


async def main(args: argparse.Namespace) -> None:
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="vm-bench-watchers-") as tmp_name:
        tmp = Path(tmp_name)
        async with contextlib.AsyncExitStack() as stack:
            nats = await stack.enter_async_context(NatsServer(store_dir=tmp / "nats", log_dir=tmp))
            s3 = await stack.enter_async_context(
                SeaweedS3(
                    data_dir=tmp / "s3",
                    log_dir=tmp,
                    access_key=S3_ACCESS_KEY,
                    secret_key=S3_SECRET_KEY,
                    region="us-east-1",
                )
            )
            if args.postgres:
                database_url = await stack.enter_async_context(postgres_database())
                database_url = database_url.replace("postgresql://", "postgresql+asyncpg://")
            else:
                database_url = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
            env = {
                "VISIONMESH_DATA_DIR": str(tmp / "gateway"),
                "VISIONMESH_DATABASE_URL": database_url,
                "VISIONMESH_NATS_URL": nats.url,
                "VISIONMESH_S3_ENDPOINT": s3.endpoint,
                "VISIONMESH_S3_ACCESS_KEY": S3_ACCESS_KEY,
                "VISIONMESH_S3_SECRET_KEY": S3_SECRET_KEY,
                "VISIONMESH_S3_BUCKET": "bench",
                "VISIONMESH_TRAINING_ADDR": f"127.0.0.1:{_free_port()}",  # no training service
                "VISIONMESH_LOG_LEVEL": "WARNING",
            }
            async with GatewayProcess("new", env) as gateway:
                token = await _login(gateway.rest)
                jobs = await _queued_jobs(gateway.rest, token, tmp, len(variants))
            results = []
            for variant, job in zip(variants, jobs, strict=True):
                async with GatewayProcess(variant, env) as gateway:
                    results.append(await _run_variant(gateway, token, job, nats.url, args))
                print(json.dumps(results[-1]), flush=True)
    print()
    print(
        f"{'variant':<10} {'watchers':>8} {'deliveries':>12} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8} {'gateway CPU s':>14} {'client CPU s':>13}"
    )
    for r in results:
        lat = r["latency_ms"]
        print(
            f"{r['variant']:<10} {r['watchers']:>8} {r['deliveries']:>12} {lat['p50']:>8} "
            f"{lat['p90']:>8} {lat['p99']:>8} {lat['max']:>8} {r['gateway_cpu_s']:>14} "
            f"{r['client_cpu_s']:>13}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve-gateway", choices=["new", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--watch-client", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=4, help="watcher processes")
    parser.add_argument(
        "--drain", type=float, default=5.0, help="seconds after the last event before the end"
    )
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between events")
    parser.add_argument("--mode", choices=["mixed", "grpc", "sse"], default="mixed")
    parser.add_argument("--variants", default="new,baseline")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL at 127.0.0.1:5432")
    arguments = parser.parse_args()
    if arguments.serve_gateway:
        serve_gateway(arguments.serve_gateway)
    elif arguments.watch_client:
        asyncio.run(watch_client(json.loads(arguments.watch_client)))
    else:
        asyncio.run(main(arguments))
