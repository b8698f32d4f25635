"""Where the CLI finds the gateway URL and the access token."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "CONFIG_DIR_ENV",
    "DEFAULT_GATEWAY",
    "GATEWAY_ENV",
    "TOKEN_ENV",
    "ConfigError",
    "Credentials",
    "CredentialsStore",
    "config_dir",
    "normalize_gateway",
    "resolve_gateway",
    "resolve_token",
]

DEFAULT_GATEWAY: Final = "http://127.0.0.1:8080"
GATEWAY_ENV: Final = "VISIONMESH_GATEWAY"
TOKEN_ENV: Final = "VISIONMESH_TOKEN"
CONFIG_DIR_ENV: Final = "VISIONMESH_CONFIG_DIR"
_CREDENTIALS_FILE: Final = "credentials.json"
_FORMAT_VERSION: Final = 1


class ConfigError(Exception):
    """The CLI's own configuration (the credentials file) is unreadable."""


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$VISIONMESH_CONFIG_DIR`, else `$XDG_CONFIG_HOME/visionmesh`, else `~/.config/visionmesh`."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "visionmesh"


def normalize_gateway(url: str) -> str:
    """`host:port` -> `http://host:port`, without a trailing slash (the credentials key)."""
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    return url.rstrip("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """An access token for one gateway, as saved by `visionmesh login`."""

    gateway: str
    token: str
    username: str = ""
    expires_at: float = 0.0
    """Unix time the token expires; 0 when unknown."""

    def expired(self, *, now: float | None = None) -> bool:
        if not self.expires_at:
            return False
        return (time.time() if now is None else now) >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "username": self.username, "expiresAt": self.expires_at}


class CredentialsStore:
    """`credentials.json` in the config dir: tokens keyed by gateway URL, mode 0600.

    Tokens are keyed by gateway so that pointing the CLI at another gateway never sends it
    a token minted elsewhere. The gateway of the last login becomes the default one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / _CREDENTIALS_FILE

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read {self.path} ({exc}); fix or delete it, then log in again"
            ) from exc
        return data if isinstance(data, dict) else {}

    def current_gateway(self) -> str | None:
        value = self._read().get("currentGateway")
        return value if isinstance(value, str) and value else None

    def get(self, gateway: str) -> Credentials | None:
        gateway = normalize_gateway(gateway)
        entry = self._read().get("gateways", {}).get(gateway)
        if not isinstance(entry, dict) or not entry.get("token"):
            return None
        return Credentials(
            gateway=gateway,
            token=str(entry["token"]),
            username=str(entry.get("username", "")),
            expires_at=float(entry.get("expiresAt", 0.0) or 0.0),
        )

    def save(self, credentials: Credentials) -> Path:
        data = self._read()
        gateways = data.get("gateways")
        gateways = gateways if isinstance(gateways, dict) else {}
        gateway = normalize_gateway(credentials.gateway)
        gateways[gateway] = credentials.to_json()
        self._write({"version": _FORMAT_VERSION, "currentGateway": gateway, "gateways": gateways})
        return self.path

    def remove(self, gateway: str) -> bool:
        """Forgets the token for `gateway`; returns whether there was one."""
        data = self._read()
        gateways = data.get("gateways")
        gateway = normalize_gateway(gateway)
        if not isinstance(gateways, dict) or gateway not in gateways:
            return False
        del gateways[gateway]
        current = data.get("currentGateway")
        self._write(
            {
                "version": _FORMAT_VERSION,
                "currentGateway": current if current in gateways else None,
                "gateways": gateways,
            }
        )
        return True

    def _write(self, data: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        # Write a private temp file and rename it over the old one: the token is never
        # readable by others, not even for a moment, and a crash leaves the old file intact.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                if hasattr(os, "fchmod"):  # O_CREAT's mode is filtered by the umask
                    os.fchmod(handle.fileno(), 0o600)
                handle.write(payload)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise


def resolve_gateway(
    option: str | None, *, store: CredentialsStore, environ: Mapping[str, str] | None = None
) -> str:
    """`--gateway`, else `$VISIONMESH_GATEWAY`, else the last login's gateway, else the default."""
    env = os.environ if environ is None else environ
    for candidate in (option, env.get(GATEWAY_ENV)):
        if candidate:
            return normalize_gateway(candidate)
    try:
        current = store.current_gateway()
    except ConfigError:
        current = None  # reported by the first command that needs a token
    return normalize_gateway(current or DEFAULT_GATEWAY)


def resolve_token(
    gateway: str, *, store: CredentialsStore, environ: Mapping[str, str] | None = None
) -> str | None:
    """`$VISIONMESH_TOKEN` (an access token or API key secret), else the saved login."""
    env = os.environ if environ is None else environ
    explicit = env.get(TOKEN_ENV)
    if explicit:
        return explicit.strip()
    credentials = store.get(gateway)
    return credentials.token if credentials is not None else None
