"""What this machine can train: frameworks, tasks, architectures and devices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from visionmesh.training.core._architectures import (
    torchvision_architectures,
    ultralytics_architectures,
)
from visionmesh.training.core.spec import FRAMEWORK_TASKS

__all__ = ["Capabilities", "DeviceInfo", "capabilities", "list_devices", "resolve_device"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """One device a job can ask for by `name` (`cpu`, `cuda:0`, ...)."""

    name: str
    kind: str
    """`cpu` or `cuda`."""
    description: str
    """The GPU's model name, or the CPU count."""
    total_memory_bytes: int
    """GPU memory; 0 for the CPU."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    frameworks: Sequence[str]
    tasks: Mapping[str, Sequence[str]]
    """framework -> tasks it trains."""
    architectures: Mapping[str, Mapping[str, Sequence[str]]]
    """framework -> task -> architecture names (what `TrainSpec.model` accepts)."""
    devices: Sequence[DeviceInfo]


def list_devices() -> list[DeviceInfo]:
    """The CPU and every CUDA device torch can see."""
    import os

    import torch

    devices = [
        DeviceInfo(
            name="cpu", kind="cpu", description=f"{os.cpu_count() or 1} CPUs", total_memory_bytes=0
        )
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                DeviceInfo(
                    name=f"cuda:{index}",
                    kind="cuda",
                    description=props.name,
                    total_memory_bytes=int(props.total_memory),
                )
            )
    return devices


def resolve_device(device: str) -> str:
    """A spec's device as a concrete torch device string: 'auto' picks cuda:0 when there is one."""
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return "cuda:0"
    return device


def capabilities() -> Capabilities:
    """Everything a client needs to build a valid `TrainSpec` for this machine."""
    ultralytics = ultralytics_architectures()
    architectures: dict[str, dict[str, list[str]]] = {
        "ultralytics": {
            task: [name for name, t in ultralytics.items() if t == task]
            for task in FRAMEWORK_TASKS["ultralytics"]
        },
        "torchvision": {"classify": list(torchvision_architectures())},
    }
    return Capabilities(
        frameworks=list(FRAMEWORK_TASKS),
        tasks={fw: list(tasks) for fw, tasks in FRAMEWORK_TASKS.items()},
        architectures=architectures,
        devices=list_devices(),
    )
