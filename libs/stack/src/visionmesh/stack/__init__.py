"""The one-machine platform: infrastructure and every service as local processes."""

from __future__ import annotations

from visionmesh.stack._stack import DEFAULT_PORTS, Ports, Stack

__all__ = ["DEFAULT_PORTS", "Ports", "Stack"]
