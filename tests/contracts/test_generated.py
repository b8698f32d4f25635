"""The generated Python under visionmesh.api is fresh, complete and importable."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check(gen_protos: ModuleType, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["gen_protos.py", "--check"])
    return gen_protos.main()


@pytest.fixture(scope="module")
def fresh(gen_protos: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Code generated once from the unchanged protos/."""
    out = tmp_path_factory.mktemp("fresh")
    gen_protos.generate(out)
    return out


@pytest.fixture
def out_copy(
    tmp_path: Path, fresh: Path, gen_protos: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A scratch copy of the generated trees that `--check` compares against.

    The check regenerates from the unchanged protos/ into its own temp dir; a copy of
    `fresh` stands in for that (test_check_passes runs the real generator).
    """
    out = tmp_path / "src"
    for rel in gen_protos.GENERATED:
        shutil.copytree(
            gen_protos.OUT / rel, out / rel, ignore=shutil.ignore_patterns("__pycache__")
        )
    monkeypatch.setattr(gen_protos, "OUT", out)
    monkeypatch.setattr(
        gen_protos, "generate", lambda dest: shutil.copytree(fresh, dest, dirs_exist_ok=True)
    )
    return out


def test_check_passes(gen_protos: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _check(gen_protos, monkeypatch) == 0


def test_check_passes_on_an_untouched_copy(
    out_copy: Path, gen_protos: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Guards the negative tests below: they fail because of their edit, not the copy.
    assert _check(gen_protos, monkeypatch) == 0


def test_check_fails_on_edited_file(
    out_copy: Path,
    gen_protos: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    edited = out_copy / "visionmesh/api/export/v1/export_pb2.py"
    edited.write_text(edited.read_text() + "\n# hand edit\n")
    assert _check(gen_protos, monkeypatch) == 1
    assert "stale: export_pb2.py" in capsys.readouterr().out


def test_check_fails_on_missing_file(
    out_copy: Path,
    gen_protos: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (out_copy / "visionmesh/api/embedding/v1/embedding_pb2_grpc.py").unlink()
    assert _check(gen_protos, monkeypatch) == 1
    assert "missing: embedding_pb2_grpc.py" in capsys.readouterr().out


def test_check_fails_on_leftover_file(
    out_copy: Path,
    gen_protos: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (out_copy / "visionmesh/api/inference/v1/removed_pb2.py").write_text("")
    assert _check(gen_protos, monkeypatch) == 1
    assert "only in committed: removed_pb2.py" in capsys.readouterr().out


def test_check_fails_when_a_proto_changes(
    protos_copy: Path,
    gen_protos: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proto = protos_copy / "visionmesh/inference/v1/inference.proto"
    text = proto.read_text()
    proto.write_text(text.replace("  bool replace = 7;\n", "  bool replace = 7;\n  bool x = 99;\n"))
    assert _check(gen_protos, monkeypatch) == 1
    assert "stale: inference_pb2.py" in capsys.readouterr().out


def test_every_proto_has_an_importable_module(gen_protos: ModuleType) -> None:
    files = [f for f in gen_protos.proto_files() if not f.startswith(gen_protos.SKIP_PYTHON)]
    assert "visionmesh/inference/v1/inference.proto" in files
    for rel in files:
        # visionmesh/<domain>/v1/<name>.proto -> visionmesh.api.<domain>.v1.<name>_pb2
        name = "visionmesh.api." + rel.removeprefix("visionmesh/").removesuffix(".proto")
        module = importlib.import_module(name.replace("/", ".") + "_pb2")
        assert module.DESCRIPTOR.name == rel
        if module.DESCRIPTOR.services_by_name:
            importlib.import_module(module.__name__ + "_grpc")


def test_kserve_proto_is_not_generated(gen_protos: ModuleType) -> None:
    # Its package `inference` would clash with tritonclient's copy in the default pool.
    assert not (gen_protos.OUT / "inference").exists()
    assert not any((gen_protos.OUT / "visionmesh/api").rglob("grpc_service_pb2*"))


class _RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths a stub binds."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _record(self, path: str, *args: object, **kwargs: object) -> None:
        self.paths.append(path)

    unary_unary = unary_stream = stream_unary = stream_stream = _record


def test_stubs_call_the_wire_method_paths(gen_protos: ModuleType) -> None:
    # The import rewrite must never touch strings: a stub calling
    # /visionmesh.api.gateway.v1.AuthService/SignUp reaches no server.
    checked = 0
    for rel in gen_protos.proto_files():
        if rel.startswith(gen_protos.SKIP_PYTHON):
            continue
        name = "visionmesh.api." + rel.removeprefix("visionmesh/").removesuffix(".proto")
        module = importlib.import_module(name.replace("/", ".") + "_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            grpc_module = importlib.import_module(module.__name__ + "_grpc")
            channel = _RecordingChannel()
            getattr(grpc_module, f"{service.name}Stub")(channel)
            expected = [f"/{service.full_name}/{m.name}" for m in service.methods]
            assert sorted(channel.paths) == sorted(expected), service.full_name
            checked += 1
    assert checked >= 8
