"""The README's "Try it" section, command by command, against a real stack.

Each `uv run visionmesh ...` line of the section's code block runs as a new user would run
it: the installed `visionmesh` entry point (what `uv run` starts) in a fresh directory, with
a fresh home, passwords typed on standard input. `make up` is the Stack this test starts
(the same one, on free ports: the CLI is pointed at it with VISIONMESH_GATEWAY). A `<...>`
placeholder takes the id an earlier command printed (see `fill_placeholders`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from visionmesh.cli.config import DEFAULT_GATEWAY
from visionmesh.stack import DEFAULT_PORTS, Ports, Stack

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "correct-horse-1"
COMMAND_TIMEOUT = 300.0
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PLACEHOLDER = re.compile(r"<[\w-]+>")


def try_it_commands(readme: str) -> list[str]:
    """The shell lines of the first code block under `## Try it`, continuations joined."""
    section = readme.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, flags=re.S)
    assert block, "no code block in the README's Try it section"
    return [
        line.strip()
        for line in block.group(1).replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def fill_placeholders(argv: list[str], outputs: list[str]) -> list[str]:
    """`<dataset-id>`, `<job-id>`, `<model-version-id>`, ... -> an id an earlier command printed.

    `outputs` are the earlier commands' outputs, oldest first. A `-o FILE` command takes the
    id on the line naming the file in the previous output (a listing). Otherwise the newest
    output naming the placeholder's noun right before an id ("model version: <id>",
    "recorded export <id>") gives it; failing that, the previous output's first id.
    """
    previous_output = outputs[-1] if outputs else ""
    output = argv[argv.index("-o") + 1] if "-o" in argv else None
    lines = previous_output.splitlines()
    listed = [line for line in lines if output is not None and Path(output).name in line]
    ids = [match for line in listed or lines for match in _UUID.findall(line)]
    filled = []
    for arg in argv:
        if _PLACEHOLDER.fullmatch(arg):
            named = None if listed else _named_id(arg, outputs)
            assert named or ids, f"no id for {arg} in the previous output:\n{previous_output}"
            arg = named or ids[0]
        filled.append(arg)
    return filled


def _named_id(placeholder: str, outputs: list[str]) -> str | None:
    noun = placeholder.strip("<>").removesuffix("-id").replace("-", " ")
    pattern = re.compile(rf"{re.escape(noun)}\W{{0,3}}({_UUID.pattern})", re.IGNORECASE)
    for text in reversed(outputs):
        found = pattern.findall(text)
        if found:
            return str(found[-1])
    return None


def test_placeholders_take_ids_from_the_previous_output() -> None:
    listing = (
        "ID                                    NAME      KIND\n"
        "11111111-1111-1111-1111-111111111111  last.pt   checkpoint\n"
        "22222222-2222-2222-2222-222222222222  best.pt   checkpoint\n"
    )
    assert fill_placeholders(["download", "<artifact-id>", "-o", "best.pt"], [listing])[1] == (
        "22222222-2222-2222-2222-222222222222"
    )
    created = "Created training job 33333333-3333-3333-3333-333333333333 (PENDING) ... snapshot 4"
    assert fill_placeholders(["list", "<job-id>"], [created]) == [
        "list",
        "33333333-3333-3333-3333-333333333333",
    ]
    trained = "Job 55555555-5555-5555-5555-555555555555 SUCCEEDED\nModel version: " + (
        "66666666-6666-6666-6666-666666666666"
    )
    # The noun before an id wins, however many commands ago it was printed.
    assert fill_placeholders(["export", "<model-version-id>"], [trained, listing])[1] == (
        "66666666-6666-6666-6666-666666666666"
    )


@dataclass
class Ran:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ visionmesh {shlex.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """`make up`: the same Stack, on free ports."""
    started = Stack(data_dir=tmp_path / "state", ports=Ports.free())
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def _visionmesh(argv: list[str], *, cwd: Path, env: dict[str, str], stdin: str) -> Ran:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "visionmesh"),
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # No controlling terminal: password prompts read standard input, as in a pipe.
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(
            process.communicate(stdin.encode()), timeout=COMMAND_TIMEOUT
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return Ran(argv, process.returncode or 0, out.decode(), err.decode())


def test_the_readme_commands_use_make_ups_gateway() -> None:
    assert f"http://127.0.0.1:{DEFAULT_PORTS.gateway_rest}" == DEFAULT_GATEWAY
    commands = try_it_commands(README.read_text())
    assert commands[0].split("#")[0].split() == ["make", "up"]
    assert all(line.startswith("uv run visionmesh ") for line in commands[1:]), commands
    for line in commands[1:]:
        # One shell word each: `<job id>` would be two words and a redirection in a shell.
        words = shlex.split(line, comments=True)
        assert all(_PLACEHOLDER.fullmatch(w) for w in words if "<" in w or ">" in w), line


@pytest.mark.timeout(600)
async def test_try_it_runs_as_written(stack: Stack, tmp_path: Path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("VISIONMESH_") and key != "XDG_CONFIG_HOME"
    }
    env |= {
        "HOME": str(home),
        "VISIONMESH_GATEWAY": f"http://127.0.0.1:{stack.ports.gateway_rest}",
        "COLUMNS": "200",
    }
    commands = try_it_commands(README.read_text())[1:]  # make up: the stack fixture
    assert len(commands) >= 7, commands
    outputs: list[str] = []
    runs: dict[str, Ran] = {}
    for line in commands:
        argv = shlex.split(line.removeprefix("uv run visionmesh "), comments=True)
        argv = fill_placeholders(argv, outputs)
        stdin = {"signup": f"{PASSWORD}\n{PASSWORD}\n", "login": f"{PASSWORD}\n"}.get(argv[0], "")
        ran = await _visionmesh(argv, cwd=work, env=env, stdin=stdin)
        assert ran.returncode == 0, str(ran)
        runs[" ".join(argv[:2])] = ran
        outputs.append(ran.stdout)

    signup = next(ran for key, ran in runs.items() if key.startswith("signup"))
    assert "(admin," in signup.stdout, signup
    # "the token is kept in ~/.config/visionmesh"
    assert (home / ".config" / "visionmesh" / "credentials.json").is_file()
    assert (work / "shapes.zip").is_file()
    assert "is ready" in runs["datasets upload"].stdout
    train = next(ran for key, ran in runs.items() if key.startswith("train"))
    assert "SUCCEEDED" in train.stdout and "Model version:" in train.stdout, train
    assert "best.pt" in runs["artifacts list"].stdout
    download = runs["artifacts download"]
    assert "sha256 verified" in download.stdout, download
    checkpoint = work / "best.pt"
    assert checkpoint.stat().st_size > 100_000
    export = next(ran for key, ran in runs.items() if key.startswith("export"))
    assert "SUCCEEDED" in export.stdout and "Export:" in export.stdout, export
    package = work / "shapes-triton.zip"
    with zipfile.ZipFile(package) as archive:
        assert any(name.endswith("/1/model.onnx") for name in archive.namelist())
