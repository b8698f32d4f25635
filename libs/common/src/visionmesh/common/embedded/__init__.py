"""Real servers as child processes for the one-machine platform (`make up`) and the tests."""

from __future__ import annotations

from visionmesh.common.embedded._nats import NatsServer
from visionmesh.common.embedded._postgres import DEFAULT_POSTGRES_URL, postgres_url_if_reachable
from visionmesh.common.embedded._process import (
    ManagedProcess,
    ProcessError,
    ReadyCheck,
    find_binary,
    free_port,
    free_ports,
    http_probe,
    nats_info_probe,
    tcp_probe,
)
from visionmesh.common.embedded._seaweed import SeaweedPorts, SeaweedS3

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "ManagedProcess",
    "NatsServer",
    "ProcessError",
    "ReadyCheck",
    "SeaweedPorts",
    "SeaweedS3",
    "find_binary",
    "free_port",
    "free_ports",
    "http_probe",
    "nats_info_probe",
    "postgres_url_if_reachable",
    "tcp_probe",
]
