"""A real Triton Inference Server for tests: CPU, Python backend, explicit model control.

The server and the Python models' environment come from tools/triton, a uv project of its
own (nvidia-pytriton's wheel ships tritonserver and the Python backend stub; it needs
numpy<2, which the workspace does not have). `uv sync --project tools/triton --frozen` installs
it on first use, so a clean clone needs no manual step; later runs find it up to date.

That tritonserver has no ONNX Runtime backend: tests serve ONNX models through
`visionmesh.export.core.triton.use_python_standin`.

Use the session fixture `triton_server` (register it in a conftest with
`from tests.export.triton_server import triton_server  # noqa: F401`). Without the Triton
environment (no network on a first run, not Linux x86-64) its tests are skipped with the
reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_PROJECT = REPO_ROOT / "tools" / "triton"
STARTUP_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


class TritonUnavailable(RuntimeError):
    """The Triton environment cannot be built or the server cannot start here."""


@dataclass(frozen=True)
class TritonEnvironment:
    """The synced tools/triton environment and what tritonserver needs from it."""

    venv: Path
    tritonserver: Path
    backends: Path
    stub: Path
    library_path: str


@dataclass
class TritonServer:
    """A running tritonserver; addresses are host:port, as tritonclient takes them."""

    http_url: str
    grpc_url: str
    metrics_url: str
    # A Python environment with numpy<2, onnxruntime, OpenCV and Pillow: the value for the
    # Python models' EXECUTION_ENV_PATH parameter.
    env_path: Path
    repository: Path
    log_path: Path

    def add_repository(self, source: Path) -> list[str]:
        """Copy the model directories of a repository in (replacing same-named ones)."""
        names = []
        for model in sorted(p for p in source.iterdir() if p.is_dir()):
            target = self.repository / model.name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(model, target)
            names.append(model.name)
        return names

    def client(self) -> Any:
        """A tritonclient gRPC client of this server."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(url=self.grpc_url)

    def load_model(self, name: str) -> None:
        """Load a model (an ensemble with its steps); on failure say why from the log."""
        from tritonclient.utils import InferenceServerException

        client = self.client()
        try:
            client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
        except InferenceServerException as exc:
            raise AssertionError(
                f"Triton could not load {name}: {exc}\n--- server log ---\n{self.log_tail()}"
            ) from exc
        finally:
            client.close()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@functools.cache
def triton_environment() -> TritonEnvironment:
    """Sync tools/triton (once per test session) and locate tritonserver inside it."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise TritonUnavailable(
            f"nvidia-pytriton ships tritonserver for Linux x86-64 only, not "
            f"{sys.platform} {platform.machine()}"
        )
    env = dict(os.environ)
    # The workspace's own environment (we run inside `uv run`) must not redirect the sync.
    for variable in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"):
        env.pop(variable, None)
    uv = os.environ.get("UV") or shutil.which("uv")
    command = [uv] if uv else [sys.executable, "-m", "uv"]
    try:
        synced = subprocess.run(
            [*command, "sync", "--project", str(TRITON_PROJECT), "--frozen", "--quiet"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TritonUnavailable(f"uv sync --project tools/triton did not run: {exc}") from exc
    if synced.returncode != 0:
        raise TritonUnavailable(
            f"uv sync --project tools/triton failed (exit {synced.returncode}):\n"
            f"{synced.stderr.strip()[-2000:]}"
        )
    venv = TRITON_PROJECT / ".venv"
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
            "print(sysconfig.get_config_var('LIBDIR') or '')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    version, libdir = probe.stdout.splitlines()[:2]
    site_packages = venv / "lib" / f"python{version}" / "site-packages"
    server_root = site_packages / "pytriton" / "tritonserver"
    stub = server_root / "python_backend_stubs" / version / "triton_python_backend_stub"
    tritonserver = server_root / "bin" / "tritonserver"
    for path in (tritonserver, stub, server_root / "backends" / "python"):
        if not path.exists():
            raise TritonUnavailable(f"{path} is missing from the tools/triton environment")
    # The backends run from a copy (the stub must sit beside libtriton_python.so), where their
    # RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) no longer reaches the wheel's bundled
    # libraries. The stub embeds libpython: take the one of the environment's interpreter, so
    # the stub's Python is the same build as the environment's packages.
    library_path = [str(site_packages / "nvidia_pytriton.libs")]
    if libdir and any(Path(libdir).glob(f"libpython{version}.so*")):
        library_path.append(libdir)
    return TritonEnvironment(
        venv=venv,
        tritonserver=tritonserver,
        backends=server_root / "backends",
        stub=stub,
        library_path=os.pathsep.join(library_path),
    )


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _ready(http_port: int) -> bool:
    url = f"http://127.0.0.1:{http_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Triton unloads models and ends their stubs), then SIGKILL the group."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
    # The server ran in its own process group: whatever it left (a stuck Python stub) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def run_triton_server(root: Path, environment: TritonEnvironment) -> Iterator[TritonServer]:
    """Start tritonserver on free ports with an empty repository under `root`; always stop it."""
    backends = root / "backends"
    shutil.copytree(environment.backends, backends)
    shutil.copy(environment.stub, backends / "python" / "triton_python_backend_stub")
    repository = root / "models"
    repository.mkdir()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (environment.library_path, env.get("LD_LIBRARY_PATH", "")) if p
    )
    failures = []
    # A port taken between choosing and binding makes the server exit: choose again.
    for attempt in range(3):
        http_port, grpc_port, metrics_port = _free_ports(3)
        log_path = root / f"tritonserver-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(environment.tritonserver),
                    f"--model-repository={repository}",
                    f"--backend-directory={backends}",
                    "--model-control-mode=explicit",
                    # Configs must be complete as written: nothing filled in by the server.
                    "--disable-auto-complete-config",
                    "--http-address=127.0.0.1",
                    f"--http-port={http_port}",
                    "--grpc-address=127.0.0.1",
                    f"--grpc-port={grpc_port}",
                    f"--metrics-port={metrics_port}",
                    "--allow-gpu-metrics=false",
                    "--exit-timeout-secs=5",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                # A killed pytest (kill -9, a timeout's os._exit) runs no teardown.
                preexec_fn=_die_with_parent,
            )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while process.poll() is None and not _ready(http_port):
                if time.monotonic() > deadline:
                    raise TritonUnavailable(
                        f"tritonserver not ready after {STARTUP_TIMEOUT_S:.0f} s:\n"
                        + log_path.read_text(errors="replace")[-3000:]
                    )
                time.sleep(0.1)
            if process.poll() is not None:
                failures.append(log_path.read_text(errors="replace")[-3000:])
                continue
            yield TritonServer(
                http_url=f"127.0.0.1:{http_port}",
                grpc_url=f"127.0.0.1:{grpc_port}",
                metrics_url=f"127.0.0.1:{metrics_port}",
                env_path=environment.venv,
                repository=repository,
                log_path=log_path,
            )
            return
        finally:
            _stop(process)
    raise TritonUnavailable("tritonserver exited on start three times:\n" + failures[-1])


def require_triton_environment() -> TritonEnvironment:
    """The environment, or skip with the reason (fail under CI, which must have it)."""
    try:
        return triton_environment()
    except TritonUnavailable as exc:
        reason = f"no Triton environment: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One tritonserver for the session; tests copy repositories in and load their models."""
    environment = require_triton_environment()
    with run_triton_server(tmp_path_factory.mktemp("triton"), environment) as server:
        yield server
