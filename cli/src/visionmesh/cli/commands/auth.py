"""signup, login, logout, whoami and `apikeys`: who the CLI talks to the gateway as."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from visionmesh.cli.config import TOKEN_ENV, Credentials
from visionmesh.cli.render import details, duration, short, to_int
from visionmesh.cli.runtime import JsonOption, Runtime, respond, runtime

__all__ = ["register"]

apikeys_app = typer.Typer(help="API keys for scripts and CI.", no_args_is_help=True)

UsernameOption = Annotated[str | None, typer.Option("--username", "-u", help="Login name.")]
PasswordOption = Annotated[
    str | None, typer.Option("--password", "-p", help="Password (prompted when omitted).")
]


def register(app: typer.Typer) -> None:
    app.command()(signup)
    app.command()(login)
    app.command()(logout)
    app.command()(whoami)
    app.add_typer(apikeys_app, name="apikeys")


def signup(
    ctx: typer.Context,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a user. The first user of a fresh install becomes its admin.

    When logged in as an admin, creates a user in your tenant.
    """
    rt = runtime(ctx)
    name = username or typer.prompt("Username")
    secret = password or typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    saved = rt.store.get(rt.gateway)
    # An expired saved login would make the gateway refuse the sign-up: send none.
    token = None if saved is not None and saved.expired() else rt.token()

    def show(rt: Runtime, response: dict[str, Any]) -> None:
        user = response.get("user") or {}
        role = short(user.get("role"), "ROLE_").lower()
        rt.out.print(
            f"Created user [bold]{escape(user.get('username', name))}[/] "
            f"({role}, tenant {user.get('tenantId', '-')}). Log in with `visionmesh login`."
        )

    respond(
        ctx,
        lambda client: client.signup(name, secret),
        json_out=json_out,
        show=show,
        token=token,
        anonymous=token is None,
    )


def login(
    ctx: typer.Context,
    username: UsernameOption = None,
    password: PasswordOption = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Log in and save the access token (in credentials.json, readable only by you)."""
    rt = runtime(ctx)
    username = username or typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    password = password or typer.prompt("Password", hide_input=True)
    with rt.client(anonymous=True) as client:
        response = client.login(username, password)
    expires_in = to_int(response.get("expiresIn"))
    path = rt.store.save(
        Credentials(
            gateway=rt.gateway,
            token=str(response["accessToken"]),
            username=username,
            expires_at=time.time() + expires_in if expires_in else 0.0,
        )
    )
    lifetime = f", expires in {duration(expires_in)}" if expires_in else ""
    rt.out.print(
        f"Logged in to {rt.gateway} as [bold]{escape(username)}[/]. "
        f"Token saved to {escape(str(path))}{lifetime}."
    )
    if os.environ.get(TOKEN_ENV):
        rt.err.print(f"[yellow]note[/]: ${TOKEN_ENV} is set and takes precedence over this login.")


def logout(ctx: typer.Context) -> None:
    """Forget the saved token for the gateway."""
    rt = runtime(ctx)
    if rt.store.remove(rt.gateway):
        rt.out.print(f"Logged out of {rt.gateway}.")
    else:
        rt.out.print(f"Not logged in to {rt.gateway}.")


def _show_me(rt: Runtime, response: dict[str, Any]) -> None:
    user = response.get("user") or {}
    tenant = response.get("tenant") or {}
    details(
        rt.out,
        [
            ("gateway", rt.gateway),
            ("user", f"{user.get('username') or '-'} ({user.get('id') or '-'})"),
            ("role", short(user.get("role"), "ROLE_").lower()),
            ("tenant", f"{tenant.get('name') or '-'} ({tenant.get('id') or '-'})"),
            ("credential", str(response.get("credentialKind") or "-")),
        ],
    )


def whoami(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show who the CLI is authenticated as."""
    respond(ctx, lambda client: client.me(), json_out=json_out, show=_show_me)


@apikeys_app.command("create")
def apikeys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A label for the key.")],
    ttl_days: Annotated[
        int, typer.Option("--ttl-days", min=0, help="Lifetime in days; 0 never expires.")
    ] = 0,
    json_out: JsonOption = False,
) -> None:
    """Create an API key; its secret is shown once (use it as VISIONMESH_TOKEN)."""

    def show(rt: Runtime, response: dict[str, Any]) -> None:
        key = response.get("apiKey") or {}
        rt.out.print(f"Created API key [bold]{escape(name)}[/] ({key.get('id', '-')}).")
        rt.out.print("Secret (shown once):")
        typer.echo(str(response.get("secret", "")))

    respond(
        ctx,
        lambda client: client.create_api_key(name, ttl_days=ttl_days),
        json_out=json_out,
        show=show,
    )
