"""Gateway benchmark: REST-to-core overhead vs direct gRPC, and job creations/s on PostgreSQL.

Runs the real platform (NATS, S3, gateway and training as processes, PostgreSQL on
127.0.0.1:5432) and prints, from one run:
  1. p50/p90/p99 latency of GetJob over gRPC (grpc.aio client, and grpc's synchronous
     client) and over REST, against the same call on the core object in-process (goal:
     gRPC at most 0.5 ms over the core at p50; REST < 1 ms over gRPC);
  2. sustained CreateTrainingJob throughput with the outbox relay running, and how long
     the relay took to publish everything (goal >= 500 jobs/s).

    uv run python benchmarks/gateway.py [--requests 2000] [--jobs 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from _grpc_floor import echo_latency_ms, echo_server
from _mesh import percentiles, postgres_database, raw_http, raw_http_get, running_stack
from google.protobuf import json_format
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.cli.synth import make_detect_dataset, zip_dataset

SPEC = {
    "framework": "ultralytics",
    "task": "detect",
    "model": "yolo11n.yaml",
    "epochs": 3,
    "imgsz": 64,
    "batch": 4,
    "seed": 0,
}


async def _prepare(rest: str, tmp: Path) -> tuple[str, str]:
    """Signs up, uploads a small dataset; returns (token, dataset id)."""
    async with httpx.AsyncClient(base_url=rest, timeout=60) as client:
        credentials = {"username": "bench", "password": "bench-pass-1"}
        await client.post("/v1/auth/signup", json=credentials)
        token = (await client.post("/v1/auth/login", json=credentials)).json()["accessToken"]
        client.headers["authorization"] = f"Bearer {token}"
        make_detect_dataset(tmp / "ds", n_train=4, n_val=2, imgsz=64, seed=0)
        archive = zip_dataset(tmp / "ds", tmp / "ds.zip")
        created = (await client.post("/v1/datasets", json={"name": "bench"})).json()
        async with httpx.AsyncClient(timeout=60) as s3:
            (await s3.put(created["uploadUrl"], content=archive.read_bytes())).raise_for_status()
        dataset_id = created["dataset"]["id"]
        (await client.post(f"/v1/datasets/{dataset_id}:finalize", json={})).raise_for_status()
        return token, dataset_id


async def _latency(grpc_target: str, rest_port: int, token: str, job_id: str, n: int) -> dict:
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.GetJobRequest(id=job_id)
        for _ in range(200):  # warm-up
            await stub.GetJob(request, metadata=metadata)
        grpc_times = []
        for _ in range(n):
            start = time.perf_counter()
            await stub.GetJob(request, metadata=metadata)
            grpc_times.append((time.perf_counter() - start) * 1000)
    # The same calls through grpc's synchronous stub: a leaner client (no asyncio call
    # objects, no poller-thread hop per event), closer to the raw-socket HTTP client the
    # REST row uses. It blocks this loop, which has nothing else to do meanwhile. The
    # difference between the two gRPC rows is client cost, not the server's.
    with grpc.insecure_channel(grpc_target) as sync_channel:
        sync_stub = jobs_pb2_grpc.JobServiceStub(sync_channel)
        for _ in range(200):
            sync_stub.GetJob(request, metadata=metadata)
        sync_times = []
        for _ in range(n):
            start = time.perf_counter()
            sync_stub.GetJob(request, metadata=metadata)
            sync_times.append((time.perf_counter() - start) * 1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", rest_port)
    headers = f"authorization: Bearer {token}\r\n"
    path = f"/v1/jobs/{job_id}"
    for _ in range(200):
        await raw_http_get(reader, writer, path, headers)
    rest_times = []
    for _ in range(n):
        start = time.perf_counter()
        await raw_http_get(reader, writer, path, headers)
        rest_times.append((time.perf_counter() - start) * 1000)
    writer.close()
    return {
        "grpc": percentiles(grpc_times),
        "grpc_sync": percentiles(sync_times),
        "rest": percentiles(rest_times),
    }


async def _core_latency(database_url: str, token: str, job_id: str, n: int) -> dict:
    """The baseline: the same GetJob through the core object in-process (no transport)."""
    import jwt
    from visionmesh.common.auth import Principal, bind_principal
    from visionmesh.common.db import Database
    from visionmesh.gateway.core.jobs import JobsCore, JobWatchers

    claims = jwt.decode(token, options={"verify_signature": False})
    principal = Principal(
        subject=claims["sub"], tenant_id=claims["tid"], role=claims["role"], kind="user"
    )
    database = Database(database_url)
    core = JobsCore(
        db=database,
        store=None,  # type: ignore[arg-type]  # GetJob touches neither
        datasets=None,  # type: ignore[arg-type]
        validate_training_spec=None,  # type: ignore[arg-type]
        watchers=JobWatchers(),
    )
    times = []
    with bind_principal(principal):
        for _ in range(200):
            await core.get_job(job_id)
        for _ in range(n):
            start = time.perf_counter()
            await core.get_job(job_id)
            times.append((time.perf_counter() - start) * 1000)
    await database.dispose()
    return percentiles(times)


async def _throughput(
    grpc_target: str, rest: str, token: str, dataset_id: str, jobs: int, concurrency: int
) -> dict:
    metadata = (("authorization", f"Bearer {token}"),)
    request = jobs_pb2.CreateTrainingJobRequest(dataset_id=dataset_id)
    json_format.ParseDict(SPEC, request.spec)
    created: list[str] = []
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        for _ in range(20):  # warm-up (also makes the dataset's snapshot)
            created.append((await stub.CreateTrainingJob(request, metadata=metadata)).job.id)
        remaining = jobs

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                response = await stub.CreateTrainingJob(request, metadata=metadata)
                created.append(response.job.id)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        accepted = time.perf_counter() - start
    # Every job must reach QUEUED: the relay published it to JetStream.
    await _until_all_queued(rest, token)
    published = time.perf_counter() - start
    rest_rate = await _rest_throughput(rest, token, dataset_id, jobs, concurrency)
    return {
        "rest": rest_rate,
        "jobs": jobs,
        "concurrency": concurrency,
        "accepted_per_s": jobs / accepted,
        "published_per_s": jobs / published,
        "accept_seconds": accepted,
        "publish_seconds": published,
    }


async def _rest_throughput(
    rest: str, token: str, dataset_id: str, jobs: int, concurrency: int
) -> dict[str, float]:
    """The same creations over REST (keep-alive connections, a minimal HTTP client)."""
    port = int(rest.rsplit(":", 1)[1])
    body = json.dumps({"datasetId": dataset_id, "spec": SPEC}).encode()
    headers = f"authorization: Bearer {token}\r\n"
    remaining = jobs

    async def client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                await raw_http(reader, writer, "POST", "/v1/training/jobs", headers, body)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    accepted = time.perf_counter() - start
    await _until_all_queued(rest, token)
    return {
        "accepted_per_s": jobs / accepted,
        "published_per_s": jobs / (time.perf_counter() - start),
    }


async def _until_all_queued(rest: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=rest, timeout=60) as http:
        http.headers["authorization"] = f"Bearer {token}"
        while True:
            page = (
                await http.get("/v1/jobs", params={"state": "JOB_STATE_PENDING", "pageSize": 1})
            ).json()
            if not page["jobs"]:
                return
            await asyncio.sleep(0.05)


async def main(requests: int, jobs: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            postgres_database() as database_url,
            running_stack(
                Path(tmp) / "stack",
                # No training workers: this measures accepting and publishing jobs, and a
                # worker training them on the same two cores would measure something else.
                extra_env={"VISIONMESH_DATABASE_URL": database_url, "VISIONMESH_WORKERS": "0"},
            ) as stack,
        ):
            ports = stack.ports
            rest = f"http://127.0.0.1:{ports.gateway_rest}"
            grpc_target = f"127.0.0.1:{ports.gateway_grpc}"
            token, dataset_id = await _prepare(rest, Path(tmp))
            async with httpx.AsyncClient(base_url=rest, timeout=60) as http:
                http.headers["authorization"] = f"Bearer {token}"
                job_id = (
                    await http.post(
                        "/v1/training/jobs", json={"datasetId": dataset_id, "spec": SPEC}
                    )
                ).json()["job"]["id"]
            latency = await _latency(grpc_target, ports.gateway_rest, token, job_id, requests)
            latency["core"] = await _core_latency(database_url, token, job_id, requests)
            async with echo_server() as echo_target:
                floor = await echo_latency_ms(echo_target, requests)
            latency["grpc_floor"] = percentiles(floor["aio"])
            latency["grpc_sync_floor"] = percentiles(floor["sync"])
            throughput = await _throughput(grpc_target, rest, token, dataset_id, jobs, concurrency)
    print("GetJob latency, ms (same job, sequential, keep-alive):")
    for transport in ("core", "grpc", "grpc_sync", "rest", "grpc_floor", "grpc_sync_floor"):
        row = latency[transport]
        print(f"  {transport:15} p50 {row['p50']:.3f}  p90 {row['p90']:.3f}  p99 {row['p99']:.3f}")
    grpc_p50, rest_p50 = latency["grpc"]["p50"], latency["rest"]["p50"]
    print(
        f"  REST-to-core overhead at p50 vs a direct gRPC call: {rest_p50 - grpc_p50:+.3f} ms "
        f"(goal < 1 ms); REST/gRPC p50 ratio {rest_p50 / grpc_p50:.2f}"
    )
    core_p50 = latency["core"]["p50"]
    print(
        f"  transport cost over the in-process core call at p50: "
        f"REST {rest_p50 - core_p50:+.3f} ms, gRPC {grpc_p50 - core_p50:+.3f} ms "
        f"(goal <= 0.5 ms; with the sync gRPC client "
        f"{latency['grpc_sync']['p50'] - core_p50:+.3f} ms)"
    )
    floor_p50 = latency["grpc_floor"]["p50"]
    print(
        f"  grpc_floor is a bare grpc.aio echo server (no interceptors, no database) in its own "
        f"process: grpcio alone costs {floor_p50:.3f} ms per call here; the gateway's gRPC "
        f"cost above that floor is {grpc_p50 - core_p50 - floor_p50:+.3f} ms"
    )
    print(
        f"CreateTrainingJob on PostgreSQL, {throughput['jobs']} jobs, "
        f"{throughput['concurrency']} concurrent gRPC clients:"
    )
    print(f"  accepted  {throughput['accepted_per_s']:.0f} jobs/s over gRPC (goal >= 500)")
    print(
        f"  published {throughput['published_per_s']:.0f} jobs/s "
        f"(every job QUEUED by the outbox relay after {throughput['publish_seconds']:.1f} s)"
    )
    rest_rate = throughput["rest"]
    print(
        f"  over REST, same load: accepted {rest_rate['accepted_per_s']:.0f} jobs/s, "
        f"published {rest_rate['published_per_s']:.0f} jobs/s (goal >= 500)"
    )
    print(json.dumps({"latency_ms": latency, "throughput": throughput}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.jobs, args.concurrency))
