"""Fixtures for the contract tests: the proto tooling in scripts/ and images of protos/."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    # scripts/ is not a package; buf_check imports gen_protos by plain name, so both must
    # come from sys.path for monkeypatching one module object to affect both.
    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def gen_protos() -> ModuleType:
    """scripts/gen_protos.py as a module."""
    return _script("gen_protos")


@pytest.fixture(scope="session")
def buf_check() -> ModuleType:
    """scripts/buf_check.py as a module."""
    return _script("buf_check")


@pytest.fixture(scope="session")
def image_path(gen_protos: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A buf image (FileDescriptorSet with imports and source info) of the current protos/."""
    return gen_protos.build_image(tmp_path_factory.mktemp("image") / "current.binpb")


@pytest.fixture(scope="session")
def image(image_path: Path) -> descriptor_pb2.FileDescriptorSet:
    """The current image, parsed."""
    return descriptor_pb2.FileDescriptorSet.FromString(image_path.read_bytes())


@pytest.fixture
def protos_copy(tmp_path: Path, gen_protos: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch copy of protos/ that gen_protos (and so buf_check) builds from."""
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy)
    monkeypatch.setattr(gen_protos, "PROTOS", copy)
    return copy
