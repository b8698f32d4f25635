"""What every command shares: the Runtime (gateway, credentials, consoles), the test seams,
exit statuses, error reporting, and `respond`, the one call-then-print-or-JSON helper."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from visionmesh.cli.client import ApiError, ClientError, GatewayClient, TransportError
from visionmesh.cli.config import (
    TOKEN_ENV,
    ConfigError,
    CredentialsStore,
    resolve_token,
)

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CliGroup",
    "Hooks",
    "JsonOption",
    "LimitOption",
    "Runtime",
    "fail",
    "headline",
    "print_json",
    "print_violations",
    "respond",
    "runtime",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CANCELLED: Final = 2
EXIT_INTERRUPTED: Final = 130

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the server's JSON response instead of a table.")
]
LimitOption = Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many.")]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Hooks:
    """Test seams, passed as the click context object: `runner.invoke(app, args, obj=Hooks())`."""

    transport: httpx.BaseTransport | None = None
    backoff_seconds: float = 0.5


def _stdout_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # Piped or in CI: rich would assume 80 columns and squeeze the ids people copy.
        console.width = 200
    return console


@dataclass(kw_only=True)
class Runtime:
    """What every command needs: where the gateway is, the credentials, and the consoles."""

    gateway: str
    store: CredentialsStore
    hooks: Hooks = field(default_factory=Hooks)
    out: Console = field(default_factory=_stdout_console)
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    def token(self) -> str | None:
        return resolve_token(self.gateway, store=self.store)

    def client(self, *, token: str | None = None, anonymous: bool = False) -> GatewayClient:
        return GatewayClient(
            self.gateway,
            token=None if anonymous else (token or self.token()),
            transport=self.hooks.transport,
            backoff_seconds=self.hooks.backoff_seconds,
        )


def runtime(ctx: typer.Context) -> Runtime:
    """The Runtime the root callback put in the click context."""
    found = ctx.find_object(Runtime)
    if found is None:  # pragma: no cover - the root callback always sets it
        raise RuntimeError("no Runtime in the click context")
    return found


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def respond(
    ctx: typer.Context,
    call: Callable[[GatewayClient], _T],
    *,
    json_out: bool,
    show: Callable[[Runtime, _T], None],
    as_json: Callable[[_T], Any] | None = None,
    token: str | None = None,
    anonymous: bool = False,
) -> None:
    """One gateway call, then its result: as JSON with `--json` (`as_json` shapes it; the
    response itself by default), otherwise rendered by `show`."""
    rt = runtime(ctx)
    with rt.client(token=token, anonymous=anonymous) as client:
        result = call(client)
    if json_out:
        print_json(as_json(result) if as_json is not None else result)
    else:
        show(rt, result)


def fail(rt: Runtime, message: str, code: int = EXIT_FAILED) -> NoReturn:
    rt.err.print(f"[bold red]error[/]: {message}")
    raise typer.Exit(code)


# --- errors -------------------------------------------------------------------------------------


def headline(exc: ApiError) -> str:
    """The message without the field violations it spells out (they get a line each)."""
    rest = exc.message
    for violation in exc.field_violations:
        rest = rest.replace(f"{violation.field}: {violation.description}", "")
    rest = rest.strip(" ;:,")
    return rest or ("invalid request" if exc.field_violations else exc.status)


def print_violations(console: Console, exc: ApiError) -> None:
    for violation in exc.field_violations:
        console.print(f"  [bold]{escape(violation.field)}[/]: {escape(violation.description)}")


def _login_hint(rt: Runtime) -> str:
    if os.environ.get(TOKEN_ENV):
        return f"the token in ${TOKEN_ENV} was rejected by {rt.gateway}"
    saved = rt.store.get(rt.gateway)
    if saved is None:
        return f"not logged in to {rt.gateway}: run `visionmesh login`"
    if saved.expired():
        return f"the saved login for {rt.gateway} has expired: run `visionmesh login`"
    return f"run `visionmesh login` to log in to {rt.gateway} again"


def _report(exc: ClientError, rt: Runtime | None) -> None:
    console = rt.err if rt is not None else Console(stderr=True, highlight=False)
    if isinstance(exc, ApiError):
        console.print(f"[bold red]error[/]: {escape(headline(exc))} [dim]({exc.status})[/]")
        print_violations(console, exc)
        if exc.http_status == 401 and rt is not None:
            console.print(f"[dim]hint: {_login_hint(rt)}[/]")
        if exc.request_id and exc.http_status >= 500:
            console.print(f"[dim]request id: {exc.request_id}[/]")
    elif isinstance(exc, TransportError):
        console.print(f"[bold red]error[/]: {escape(exc.message)}")
        console.print(
            "[dim]hint: point the CLI at the gateway with --gateway or VISIONMESH_GATEWAY[/]"
        )
    else:
        console.print(f"[bold red]error[/]: {escape(exc.message)}")


class CliGroup(TyperGroup):
    """Turns the client's errors into a readable message and exit status 1, for every command."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            _report(exc, ctx.obj if isinstance(ctx.obj, Runtime) else None)
            raise typer.Exit(EXIT_FAILED) from None
        except ConfigError as exc:
            Console(stderr=True, highlight=False).print(f"[bold red]error[/]: {escape(str(exc))}")
            raise typer.Exit(EXIT_FAILED) from None
