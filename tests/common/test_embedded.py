"""Embedded servers: process lifecycle, readiness, shutdown, and the real nats/weed binaries."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from pathlib import Path

import nats
import pytest
from minio import Minio
from minio.error import S3Error
from visionmesh.common.embedded import (
    ManagedProcess,
    NatsServer,
    ProcessError,
    SeaweedPorts,
    SeaweedS3,
    find_binary,
    free_port,
    free_ports,
    http_probe,
    postgres_url_if_reachable,
    tcp_probe,
)

PY = sys.executable


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 < port <= 65535 for port in ports)
    assert 1024 < free_port() <= 65535


def test_find_binary_prefers_the_wheel_next_to_python() -> None:
    assert find_binary("nats-server") == Path(sys.executable).parent / "nats-server"
    assert find_binary("weed").name == "weed"
    with pytest.raises(FileNotFoundError, match="embedded"):
        find_binary("definitely-not-a-visionmesh-binary")


async def test_process_ready_when_http_probe_passes_then_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process = ManagedProcess(
        name="http",
        argv=[PY, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        log_dir=tmp_path,
        ready_check=http_probe("127.0.0.1", port, "/"),
        ready_timeout=15,
    )
    async with process:
        assert process.running
        assert await tcp_probe("127.0.0.1", port)()
    assert not process.running
    assert process.returncode == -signal.SIGTERM
    assert process.log_path == tmp_path / "http.log"


async def test_early_exit_fails_fast_with_the_log_tail(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="crasher",
        argv=[
            PY,
            "-c",
            "import sys; print('config is broken: port taken', flush=True); sys.exit(3)",
        ],
        log_dir=tmp_path,
        ready_check=tcp_probe("127.0.0.1", free_port()),
        ready_timeout=30,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ProcessError, match="exited with code 3") as raised:
        async with process:
            pass
    assert loop.time() - started < 10
    assert "config is broken: port taken" in raised.value.log_tail


async def test_never_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    process = ManagedProcess(
        name="sleeper",
        argv=[PY, "-c", "import time; time.sleep(60)"],
        log_dir=tmp_path,
        ready_check=tcp_probe("127.0.0.1", free_port()),
        ready_timeout=0.5,
    )
    with pytest.raises(ProcessError, match=r"not ready after 0\.5s"):
        async with process:
            pass
    assert not process.running


async def test_stop_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = ManagedProcess(name="stubborn", argv=[PY, "-c", script], log_dir=tmp_path)
    await process.start()
    await process.wait_ready(lambda: _log_contains(process, "ignoring SIGTERM"), timeout=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await process.stop(grace=0.3) == -signal.SIGKILL
    assert loop.time() - started < 5


async def _log_contains(process: ManagedProcess, text: str) -> bool:
    return text in process.log_tail()


async def test_nats_server_has_jetstream(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(nats_server.url)
    try:
        account = await nc.jetstream().account_info()
        assert account.limits is not None
    finally:
        await nc.close()
    assert (nats_server.store_dir / "jetstream").is_dir()


async def test_seaweed_serves_s3_with_the_configured_credentials(s3_server: SeaweedS3) -> None:
    ports = s3_server.ports.all()
    assert len(set(ports)) == len(ports)
    assert max(ports) <= 65535
    assert s3_server.endpoint == f"127.0.0.1:{s3_server.port}"

    good = Minio(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
    )
    await asyncio.to_thread(good.list_buckets)
    bad = Minio(s3_server.endpoint, access_key=s3_server.access_key, secret_key="no", secure=False)
    with pytest.raises(S3Error):
        await asyncio.to_thread(bad.list_buckets)


def test_seaweed_command_line_sets_every_port(tmp_path: Path) -> None:
    ports = SeaweedPorts.fixed()
    server = SeaweedS3(data_dir=tmp_path / "d", access_key="a", secret_key="b", ports=ports)
    argv = " ".join(server.argv)
    for flag, port in [
        ("-s3.port", ports.s3),
        ("-s3.port.grpc", ports.s3_grpc),
        ("-master.port", ports.master),
        ("-master.port.grpc", ports.master_grpc),
        ("-volume.port", ports.volume),
        ("-volume.port.grpc", ports.volume_grpc),
        ("-filer.port", ports.filer),
        ("-filer.port.grpc", ports.filer_grpc),
        ("-admin.port", ports.admin),
        ("-admin.port.grpc", ports.admin_grpc),
    ]:
        assert f" {flag}={port} " in f"{argv} "
    assert len(set(ports.all())) == len(ports.all())
    assert "-s3.autoCreateBucket=false" in server.argv
    with pytest.raises(ValueError, match="distinct"):
        SeaweedS3(
            data_dir=tmp_path / "e",
            access_key="a",
            secret_key="b",
            ports=SeaweedPorts.fixed(s3=18331, base=18330),
        )


async def test_seaweed_restarts_on_its_data_dir(tmp_path: Path) -> None:
    def make() -> SeaweedS3:
        return SeaweedS3(
            data_dir=tmp_path / "data",
            log_dir=tmp_path,
            access_key="restart-key",
            secret_key="restart-secret",
            ports=ports,
        )

    ports = SeaweedPorts.pick()
    async with make() as first:
        client = Minio(
            first.endpoint, access_key="restart-key", secret_key="restart-secret", secure=False
        )
        await asyncio.to_thread(client.make_bucket, "persisted")
    async with make():
        names = [b.name for b in await asyncio.to_thread(client.list_buckets)]
    assert "persisted" in names
    # weed's per-port unix sockets are cleaned up, or random ports would litter the temp dir.
    assert _weed_sockets(ports.s3) == []


def _weed_sockets(port: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"))


async def test_postgres_url_if_reachable() -> None:
    assert (
        await postgres_url_if_reachable(f"postgresql://postgres@127.0.0.1:{free_port()}/x") is None
    )
    url = "postgresql://postgres@127.0.0.1:5432/test"
    if await postgres_url_if_reachable(url) is None:
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    assert await postgres_url_if_reachable(url) == url
