"""The `visionmesh` command line: a thin client of the gateway's REST API."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import httpx
import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperGroup
from visionmesh.cli import synth
from visionmesh.cli.client import (
    ApiError,
    ClientError,
    GatewayClient,
    IntegrityError,
    TransportError,
)
from visionmesh.cli.config import (
    TOKEN_ENV,
    ConfigError,
    Credentials,
    CredentialsStore,
    config_dir,
    resolve_gateway,
    resolve_token,
)

__all__ = ["Hooks", "Runtime", "app", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_CANCELLED: Final = 2
EXIT_INTERRUPTED: Final = 130

_TERMINAL_EXIT: Final = {
    "JOB_STATE_SUCCEEDED": EXIT_OK,
    "JOB_STATE_FAILED": EXIT_FAILED,
    "JOB_STATE_CANCELLED": EXIT_CANCELLED,
}
_STATE_STYLE: Final = {
    "PENDING": "dim",
    "QUEUED": "blue",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
    "UPLOADING": "blue",
    "READY": "green",
}

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the server's JSON response instead of a table.")
]
LimitOption = Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many.")]


@dataclass(frozen=True, slots=True, kw_only=True)
class Hooks:
    """Test seams, passed as the click context object: `runner.invoke(app, args, obj=Hooks())`."""

    transport: httpx.BaseTransport | None = None
    backoff_seconds: float = 0.5


@dataclass(kw_only=True)
class Runtime:
    """What every command needs: where the gateway is, the credentials, and the consoles."""

    gateway: str
    store: CredentialsStore
    hooks: Hooks = field(default_factory=Hooks)
    out: Console = field(default_factory=lambda: _stdout_console())
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


def _stdout_console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        # Piped or in CI: rich would assume 80 columns and squeeze the ids people copy.
        console.width = 200
    return console


class _Group(TyperGroup):
    """Turns the client's errors into a readable message and exit status 1, for every command."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click Context
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            runtime = ctx.obj if isinstance(ctx.obj, Runtime) else None
            _report(exc, runtime)
            raise typer.Exit(EXIT_FAILED) from None
        except ConfigError as exc:
            Console(stderr=True, highlight=False).print(f"[bold red]error[/]: {escape(str(exc))}")
            raise typer.Exit(EXIT_FAILED) from None


app = typer.Typer(
    name="visionmesh",
    cls=_Group,
    help="visionmesh: datasets, training jobs and models, from the command line.",
    no_args_is_help=True,
    add_completion=False,
)
datasets_app = typer.Typer(help="Upload, inspect and generate datasets.", no_args_is_help=True)
jobs_app = typer.Typer(help="List, inspect, watch and cancel jobs.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Files produced by jobs.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
apikeys_app = typer.Typer(help="API keys for scripts and CI.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(models_app, name="models")
app.add_typer(apikeys_app, name="apikeys")


@app.callback()
def _root(
    ctx: typer.Context,
    gateway: Annotated[
        str | None,
        typer.Option(
            "--gateway",
            "-g",
            envvar="VISIONMESH_GATEWAY",
            help="Gateway REST URL (default: the last login's gateway, else http://127.0.0.1:8080).",
            show_default=False,
        ),
    ] = None,
) -> None:
    hooks = ctx.obj if isinstance(ctx.obj, Hooks) else Hooks()
    store = CredentialsStore(config_dir())
    ctx.obj = Runtime(gateway=resolve_gateway(gateway, store=store), store=store, hooks=hooks)


def _rt(ctx: typer.Context) -> Runtime:
    runtime = ctx.find_object(Runtime)
    if runtime is None:  # pragma: no cover - the root callback always sets it
        raise RuntimeError("no Runtime in the click context")
    return runtime


# --- output helpers ----------------------------------------------------------------------------


def _report(exc: ClientError, runtime: Runtime | None) -> None:
    console = runtime.err if runtime is not None else Console(stderr=True, highlight=False)
    if isinstance(exc, ApiError):
        console.print(f"[bold red]error[/]: {escape(_headline(exc))} [dim]({exc.status})[/]")
        _print_violations(console, exc)
        if exc.http_status == 401 and runtime is not None:
            console.print(f"[dim]hint: {_login_hint(runtime)}[/]")
        if exc.request_id and exc.http_status >= 500:
            console.print(f"[dim]request id: {exc.request_id}[/]")
    elif isinstance(exc, TransportError):
        console.print(f"[bold red]error[/]: {escape(exc.message)}")
        console.print(
            "[dim]hint: point the CLI at the gateway with --gateway or VISIONMESH_GATEWAY[/]"
        )
    else:
        console.print(f"[bold red]error[/]: {escape(exc.message)}")


def _headline(exc: ApiError) -> str:
    """The message without the field violations it spells out (they get a line each)."""
    rest = exc.message
    for violation in exc.field_violations:
        rest = rest.replace(f"{violation.field}: {violation.description}", "")
    rest = rest.strip(" ;:,")
    return rest or ("invalid request" if exc.field_violations else exc.status)


def _print_violations(console: Console, exc: ApiError) -> None:
    for violation in exc.field_violations:
        console.print(f"  [bold]{escape(violation.field)}[/]: {escape(violation.description)}")


def _login_hint(runtime: Runtime) -> str:
    if os.environ.get(TOKEN_ENV):
        return f"the token in ${TOKEN_ENV} was rejected by {runtime.gateway}"
    saved = runtime.store.get(runtime.gateway)
    if saved is None:
        return f"not logged in to {runtime.gateway}: run `visionmesh login`"
    if saved.expired():
        return f"the saved login for {runtime.gateway} has expired: run `visionmesh login`"
    return f"run `visionmesh login` to log in to {runtime.gateway} again"


def _fail(runtime: Runtime, message: str, code: int = EXIT_FAILED) -> NoReturn:
    runtime.err.print(f"[bold red]error[/]: {message}")
    raise typer.Exit(code)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _short(enum_value: Any, prefix: str) -> str:
    """`JOB_STATE_RUNNING` -> `RUNNING`; unset and UNSPECIFIED -> `-`."""
    text = str(enum_value or "").removeprefix(prefix)
    return "-" if text in ("", "UNSPECIFIED") else text


def _styled_state(enum_value: Any, prefix: str) -> str:
    name = _short(enum_value, prefix)
    style = _STATE_STYLE.get(name)
    return f"[{style}]{name}[/]" if style else name


def _int(value: Any) -> int:
    # proto3 JSON writes 64-bit integers as strings.
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _time(value: Any) -> str:
    if not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _bytes(value: Any) -> str:
    size = float(_int(value))
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _number(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return str(value)


def _error_text(error: Mapping[str, Any] | None) -> str:
    """A JobError as escaped markup, `REASON: message`; empty when there is none."""
    if not error or not (error.get("reason") or error.get("message")):
        return ""
    reason, message = str(error.get("reason") or "UNKNOWN"), str(error.get("message") or "")
    return escape(f"{reason}: {message}" if message else reason)


def _metrics_text(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{name} {_number(value)}" for name, value in metrics.items())


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for column in columns:
        if column == "ID":
            # Ids are what people copy into the next command: never cut them.
            table.add_column(column, no_wrap=True, min_width=36)
        else:
            table.add_column(column)
    return table


def _details(runtime: Runtime, rows: list[tuple[str, str]]) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    runtime.out.print(grid)


# --- auth --------------------------------------------------------------------------------------


@app.command()
def signup(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Login name.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", "-p", help="Password (prompted when omitted).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a user. The first user of a fresh install becomes its admin.

    When logged in as an admin, creates a user in your tenant.
    """
    rt = _rt(ctx)
    username = username or typer.prompt("Username")
    password = password or typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    saved = rt.store.get(rt.gateway)
    # An expired saved login would make the gateway refuse the sign-up: send none.
    token = None if saved is not None and saved.expired() else rt.token()
    with rt.client(token=token, anonymous=token is None) as client:
        response = client.signup(username, password)
    if json_out:
        _print_json(response)
        return
    user = response.get("user") or {}
    role = _short(user.get("role"), "ROLE_").lower()
    rt.out.print(
        f"Created user [bold]{escape(user.get('username', username))}[/] "
        f"({role}, tenant {user.get('tenantId', '-')}). Log in with `visionmesh login`."
    )


@app.command()
def login(
    ctx: typer.Context,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Login name.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", "-p", help="Password (prompted when omitted).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Log in and save the access token (in credentials.json, readable only by you)."""
    rt = _rt(ctx)
    username = username or typer.prompt("Username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    password = password or typer.prompt("Password", hide_input=True)
    with rt.client(anonymous=True) as client:
        response = client.login(username, password)
    expires_in = _int(response.get("expiresIn"))
    path = rt.store.save(
        Credentials(
            gateway=rt.gateway,
            token=str(response["accessToken"]),
            username=username,
            expires_at=time.time() + expires_in if expires_in else 0.0,
        )
    )
    lifetime = f", expires in {_duration(expires_in)}" if expires_in else ""
    rt.out.print(
        f"Logged in to {rt.gateway} as [bold]{escape(username)}[/]. "
        f"Token saved to {escape(str(path))}{lifetime}."
    )
    if os.environ.get(TOKEN_ENV):
        rt.err.print(f"[yellow]note[/]: ${TOKEN_ENV} is set and takes precedence over this login.")


@app.command()
def logout(ctx: typer.Context) -> None:
    """Forget the saved token for the gateway."""
    rt = _rt(ctx)
    if rt.store.remove(rt.gateway):
        rt.out.print(f"Logged out of {rt.gateway}.")
    else:
        rt.out.print(f"Not logged in to {rt.gateway}.")


@app.command()
def whoami(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show who the CLI is authenticated as."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.me()
    if json_out:
        _print_json(response)
        return
    user = response.get("user") or {}
    tenant = response.get("tenant") or {}
    _details(
        rt,
        [
            ("gateway", rt.gateway),
            ("user", f"{user.get('username') or '-'} ({user.get('id') or '-'})"),
            ("role", _short(user.get("role"), "ROLE_").lower()),
            ("tenant", f"{tenant.get('name') or '-'} ({tenant.get('id') or '-'})"),
            ("credential", str(response.get("credentialKind") or "-")),
        ],
    )


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
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.create_api_key(name, ttl_days=ttl_days)
    if json_out:
        _print_json(response)
        return
    key = response.get("apiKey") or {}
    rt.out.print(f"Created API key [bold]{escape(name)}[/] ({key.get('id', '-')}).")
    rt.out.print("Secret (shown once):")
    typer.echo(str(response.get("secret", "")))


# --- datasets ----------------------------------------------------------------------------------


def _transfer_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@contextmanager
def _archive_for(path: Path, runtime: Runtime) -> Iterator[Path]:
    """`path` itself for a file; for a folder, a zip of it in a temp dir (removed after)."""
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="visionmesh-") as tmp:
        with runtime.err.status(f"Zipping {escape(str(path))} ..."):
            archive = synth.zip_dataset(path, Path(tmp) / f"{path.name or 'dataset'}.zip")
        yield archive


def _split_table(dataset: Mapping[str, Any]) -> Table | None:
    splits = dataset.get("splits") or []
    if not splits:
        return None
    names = [str(s.get("name", "?")) for s in splits]
    table = _table("class", *names)
    classes: list[str] = list(dataset.get("classNames") or [])
    for split in splits:
        for name in split.get("instancesPerClass") or {}:
            if name not in classes:
                classes.append(name)
    for name in classes:
        table.add_row(
            escape(name),
            *(str(_int((s.get("instancesPerClass") or {}).get(name))) for s in splits),
        )
    table.add_section()
    table.add_row("[bold]images[/]", *(f"[bold]{_int(s.get('imageCount'))}[/]" for s in splits))
    for column in table.columns[1:]:
        column.justify = "right"
    return table


def _show_dataset(runtime: Runtime, dataset: Mapping[str, Any]) -> None:
    rows = [
        ("id", str(dataset.get("id", "-"))),
        ("name", escape(str(dataset.get("name", "-")))),
        ("state", _styled_state(dataset.get("state"), "DATASET_STATE_")),
        ("format", _short(dataset.get("format"), "DATASET_FORMAT_").lower()),
        ("classes", escape(", ".join(dataset.get("classNames") or []) or "-")),
        ("images", str(_int(dataset.get("imageCount")))),
        ("size", _bytes(dataset.get("sizeBytes"))),
        ("created", _time(dataset.get("createTime"))),
    ]
    if dataset.get("description"):
        rows.insert(2, ("description", escape(str(dataset["description"]))))
    if dataset.get("manifestSha256"):
        rows.append(("manifest", str(dataset["manifestSha256"])))
    if dataset.get("failureReason"):
        rows.append(("failure", f"[red]{escape(str(dataset['failureReason']))}[/]"))
    _details(runtime, rows)
    table = _split_table(dataset)
    if table is not None:
        runtime.out.print(table)


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            exists=True, readable=True, metavar="PATH", help="A dataset zip, or a folder to zip."
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Display name of the dataset.")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Upload a dataset (YOLO detect layout or classification folders) and validate it.

    Exits 1 and lists the offending files when the server rejects the archive.
    """
    rt = _rt(ctx)
    with rt.client() as client, _archive_for(path, rt) as archive:
        created = client.create_dataset(name, description)
        dataset_id = str(created["dataset"]["id"])
        size = archive.stat().st_size
        with _transfer_progress(rt.err) as progress:
            task = progress.add_task(f"Uploading {escape(archive.name)}", total=size)
            client.upload(
                str(created["uploadUrl"]),
                archive,
                on_progress=lambda n: progress.advance(task, n),
            )
        try:
            with rt.err.status("Validating on the server ..."):
                finalized = client.finalize_dataset(dataset_id)
        except ApiError as exc:
            if exc.status != "INVALID_ARGUMENT":
                raise
            rt.err.print(
                f"[bold red]error[/]: dataset {dataset_id} was rejected: {escape(_headline(exc))}"
            )
            _print_violations(rt.err, exc)
            raise typer.Exit(EXIT_FAILED) from None
    if json_out:
        _print_json(finalized)
        return
    dataset = finalized.get("dataset") or {}
    rt.out.print(f"[green]Dataset {dataset.get('id', dataset_id)} is ready.[/]")
    _show_dataset(rt, dataset)


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context, limit: LimitOption = 50, json_out: JsonOption = False
) -> None:
    """List your datasets, newest first."""
    rt = _rt(ctx)
    with rt.client() as client:
        datasets = list(client.list_datasets(limit=limit))
    if json_out:
        _print_json({"datasets": datasets})
        return
    table = _table("ID", "NAME", "STATE", "FORMAT", "IMAGES", "CLASSES", "SIZE", "CREATED")
    for d in datasets:
        table.add_row(
            str(d.get("id", "")),
            escape(str(d.get("name", ""))),
            _styled_state(d.get("state"), "DATASET_STATE_"),
            _short(d.get("format"), "DATASET_FORMAT_").lower(),
            str(_int(d.get("imageCount"))),
            str(len(d.get("classNames") or [])),
            _bytes(d.get("sizeBytes")),
            _time(d.get("createTime")),
        )
    rt.out.print(table if datasets else "No datasets.")


@datasets_app.command("show")
def datasets_show(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
) -> None:
    """Show a dataset with its per-split, per-class counts."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.get_dataset(dataset_id)
    if json_out:
        _print_json(response)
        return
    _show_dataset(rt, response.get("dataset") or {})


@datasets_app.command("snapshot")
def datasets_snapshot(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Pin the dataset's current content as an immutable snapshot (for reproducible training)."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.create_snapshot(dataset_id, description)
    if json_out:
        _print_json(response)
        return
    snapshot = response.get("snapshot") or {}
    rt.out.print(
        f"Snapshot [bold]{snapshot.get('id', '-')}[/] of dataset {dataset_id} "
        f"({_int(snapshot.get('imageCount'))} images, "
        f"manifest {snapshot.get('manifestSha256', '-')})."
    )


class SynthTask(StrEnum):
    """Layouts `datasets synth` can generate."""

    DETECT = "detect"
    CLASSIFY = "classify"


@datasets_app.command("synth")
def datasets_synth(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Argument(
            metavar="OUT",
            help="Output folder; with --zip, a path ending in .zip writes only the archive.",
        ),
    ],
    task: Annotated[SynthTask, typer.Option("--task", help="Dataset layout.")] = SynthTask.DETECT,
    n_train: Annotated[
        int,
        typer.Option("--n-train", min=1, help="Training images (classify: per class)."),
    ] = 64,
    n_val: Annotated[
        int, typer.Option("--n-val", min=1, help="Validation images (classify: per class).")
    ] = 16,
    imgsz: Annotated[int, typer.Option("--imgsz", min=16, help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same files.")] = 0,
    classes: Annotated[
        str | None,
        typer.Option(
            "--classes", help="Comma-separated class names (default: circle,square,triangle)."
        ),
    ] = None,
    zip_out: Annotated[
        bool, typer.Option("--zip", help="Also pack it as a zip, ready to upload.")
    ] = False,
) -> None:
    """Generate a small synthetic shapes dataset that models learn in a few epochs."""
    kind = task.value
    rt = _rt(ctx)
    names = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else None
    class_names = names or synth.DEFAULT_CLASSES
    archive_only = zip_out and out.suffix.lower() == ".zip"
    with tempfile.TemporaryDirectory(prefix="visionmesh-synth-") as tmp:
        root = Path(tmp) / "dataset" if archive_only else out
        try:
            with rt.err.status(f"Generating a {kind} dataset ..."):
                if task is SynthTask.DETECT:
                    synth.make_detect_dataset(
                        root,
                        n_train=n_train,
                        n_val=n_val,
                        imgsz=imgsz,
                        seed=seed,
                        classes=class_names,
                    )
                else:
                    synth.make_classify_dataset(
                        root,
                        n_per_class_train=n_train,
                        n_per_class_val=n_val,
                        imgsz=imgsz,
                        seed=seed,
                        classes=class_names,
                    )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        archive = None
        if zip_out:
            target = out if archive_only else out.with_name(f"{out.name}.zip")
            archive = synth.zip_dataset(root, target)
    per = " per class" if task is SynthTask.CLASSIFY else ""
    summary = (
        f"{n_train} train + {n_val} val images{per}, {imgsz}px, classes {', '.join(class_names)}"
    )
    if not archive_only:
        rt.out.print(f"Wrote a {kind} dataset to {escape(str(out))} ({escape(summary)}).")
    if archive is not None:
        what = f"a {kind} dataset ({summary})" if archive_only else "it"
        rt.out.print(f"Packed {escape(what)} into {escape(str(archive))}.")
        rt.out.print(
            f"Upload it with: visionmesh datasets upload {escape(str(archive))} --name NAME"
        )


# --- training ----------------------------------------------------------------------------------


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _set_spec(spec: dict[str, Any], key: str, value: Any) -> None:
    """Sets a field by its JSON name, dropping the same field spelled in snake_case."""
    for existing in [k for k in spec if k != key and _camel(k) == key]:
        del spec[existing]
    spec[key] = value


def _load_spec(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--spec") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f"{path} must hold a mapping of TrainingSpec fields", param_hint="--spec"
        )
    return data


def _augment_overrides(items: list[str] | None) -> dict[str, float]:
    result: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            result[key.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"expected NAME=NUMBER, got {item!r}", param_hint="--augment"
            ) from None
    return result


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id (a snapshot is pinned for the job).")
    ] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="Snapshot id.")] = None,
    spec_file: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            exists=True,
            dir_okay=False,
            help="YAML TrainingSpec; flags override its fields, unknown keys go to the server.",
        ),
    ] = None,
    framework: Annotated[
        str | None, typer.Option(help="ultralytics or torchvision.", rich_help_panel="Spec")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="detect, classify or segment.", rich_help_panel="Spec")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Architecture, e.g. yolo11n.yaml or resnet18.", rich_help_panel="Spec"),
    ] = None,
    epochs: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size, a multiple of 32.", rich_help_panel="Spec")
    ] = None,
    batch: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    optimizer: Annotated[
        str | None, typer.Option(help="auto, SGD, Adam or AdamW.", rich_help_panel="Spec")
    ] = None,
    lr0: Annotated[
        float | None, typer.Option(help="Initial learning rate.", rich_help_panel="Spec")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early-stopping patience.", rich_help_panel="Spec")
    ] = None,
    seed: Annotated[int | None, typer.Option(rich_help_panel="Spec")] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N.", rich_help_panel="Spec")
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option("--amp/--no-amp", help="Mixed precision (GPU).", rich_help_panel="Spec"),
    ] = None,
    init_model_version: Annotated[
        str | None,
        typer.Option(help="Fine-tune from this model version id.", rich_help_panel="Spec"),
    ] = None,
    augment: Annotated[
        list[str] | None,
        typer.Option(help="Augmentation override NAME=VALUE (repeatable).", rich_help_panel="Spec"),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Registry name (default: <dataset>-<task>).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Follow the job until it ends.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Start a training job on a dataset or snapshot."""
    rt = _rt(ctx)
    if (dataset is None) == (snapshot is None):
        raise typer.BadParameter("give exactly one of --dataset or --snapshot")
    spec = _load_spec(spec_file)
    flags: dict[str, Any] = {
        "framework": framework,
        "task": task,
        "model": model,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "optimizer": optimizer,
        "lr0": lr0,
        "patience": patience,
        "seed": seed,
        "device": device,
        "amp": amp,
        "initModelVersionId": init_model_version,
    }
    for key, value in flags.items():
        if value is not None:
            _set_spec(spec, key, value)
    overrides = _augment_overrides(augment)
    if overrides:
        current = spec.get("augment")
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update(overrides)
        _set_spec(spec, "augment", merged)
    body: dict[str, Any] = {"spec": spec}
    if dataset is not None:
        body["datasetId"] = dataset
    if snapshot is not None:
        body["snapshotId"] = snapshot
    if model_name:
        body["modelName"] = model_name
    with rt.client() as client:
        response = client.create_training_job(body)
        job = response.get("job") or {}
        if json_out and not watch:
            _print_json(response)
            return
        if not json_out:
            effective = job.get("spec") or {}
            rt.out.print(
                f"Created training job [bold]{job.get('id', '-')}[/] "
                f"({_styled_state(job.get('state'), 'JOB_STATE_')}): "
                f"{escape(str(effective.get('framework', '')))} "
                f"{escape(str(effective.get('model', '')))}, {effective.get('epochs', '?')} epochs "
                f"at {effective.get('imgsz', '?')}px on snapshot {job.get('snapshotId', '-')}"
            )
        if not watch:
            rt.out.print(f"Follow it with: visionmesh jobs watch {job.get('id', '')}")
            return
        code = _watch(rt, client, str(job["id"]), json_out=json_out)
    raise typer.Exit(code)


# --- jobs --------------------------------------------------------------------------------------


def _enum_filter(value: str | None, prefix: str) -> str:
    if not value:
        return ""
    upper = value.strip().upper().replace("-", "_")
    return upper if upper.startswith(prefix) else prefix + upper


def _progress_text(job: Mapping[str, Any]) -> str:
    progress = job.get("progress") or {}
    epoch, total = _int(progress.get("epoch")), _int(progress.get("totalEpochs"))
    fraction = float(progress.get("fraction") or 0.0)
    if total:
        return f"{epoch}/{total}"
    return f"{fraction:.0%}" if fraction else "-"


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only this state, e.g. running, succeeded, failed.")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. training, export.")] = None,
    limit: LimitOption = 50,
    json_out: JsonOption = False,
) -> None:
    """List your jobs, newest first."""
    rt = _rt(ctx)
    with rt.client() as client:
        jobs = list(
            client.list_jobs(
                kind=_enum_filter(kind, "JOB_KIND_"),
                state=_enum_filter(state, "JOB_STATE_"),
                limit=limit,
            )
        )
    if json_out:
        _print_json({"jobs": jobs})
        return
    table = _table("ID", "KIND", "STATE", "PROGRESS", "METRICS", "CREATED")
    for job in jobs:
        table.add_row(
            str(job.get("id", "")),
            _short(job.get("kind"), "JOB_KIND_").lower(),
            _styled_state(job.get("state"), "JOB_STATE_"),
            _progress_text(job),
            _metrics_text(job.get("metrics")),
            _time(job.get("createTime")),
        )
    rt.out.print(table if jobs else "No jobs.")


def _show_job(runtime: Runtime, job: Mapping[str, Any]) -> None:
    spec = job.get("spec") or {}
    spec_text = ", ".join(
        f"{key}={spec[key]}"
        for key in ("framework", "task", "model", "epochs", "imgsz", "batch", "device")
        if spec.get(key) not in (None, "")
    )
    rows = [
        ("id", str(job.get("id", "-"))),
        ("kind", _short(job.get("kind"), "JOB_KIND_").lower()),
        ("state", _styled_state(job.get("state"), "JOB_STATE_")),
        ("progress", _progress_text(job)),
    ]
    if spec_text:
        rows.append(("spec", escape(spec_text)))
    if job.get("datasetId"):
        rows.append(("dataset", str(job["datasetId"])))
    if job.get("snapshotId"):
        rows.append(("snapshot", str(job["snapshotId"])))
    rows.append(("metrics", _metrics_text(job.get("metrics"))))
    error = _error_text(job.get("error"))
    if error:
        rows.append(("error", f"[red]{error}[/]"))
    if job.get("modelVersionId"):
        rows.append(("model version", str(job["modelVersionId"])))
    rows += [
        ("attempts", str(_int(job.get("attempts")))),
        ("created", _time(job.get("createTime"))),
        ("started", _time(job.get("startTime"))),
        ("ended", _time(job.get("endTime"))),
    ]
    _details(runtime, rows)


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
) -> None:
    """Show a job: state, progress, final metrics, error, registered model version."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.get_job(job_id)
    if json_out:
        _print_json(response)
        return
    _show_job(rt, response.get("job") or {})


@jobs_app.command("cancel")
def jobs_cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
) -> None:
    """Cancel a job (a running one stops at its next batch boundary)."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.cancel_job(job_id)
    if json_out:
        _print_json(response)
        return
    job = response.get("job") or {}
    rt.out.print(f"Job {job.get('id', job_id)}: {_styled_state(job.get('state'), 'JOB_STATE_')}")


@jobs_app.command("metrics")
def jobs_metrics(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str, typer.Option(help="Only this metric.")] = "",
    json_out: JsonOption = False,
) -> None:
    """Show the metric history of a job, one row per epoch."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.job_metrics(job_id, name=name)
    if json_out:
        _print_json(response)
        return
    points = response.get("points") or []
    names: list[str] = []
    rows: dict[int, dict[str, Any]] = {}
    for point in points:
        metric = str(point.get("name", ""))
        if metric not in names:
            names.append(metric)
        key = _int(point.get("epoch")) or _int(point.get("step"))
        rows.setdefault(key, {})[metric] = point.get("value")
    if not points:
        rt.out.print("No metrics reported yet.")
        return
    table = _table("EPOCH", *names)
    for key in sorted(rows):
        table.add_row(str(key), *(_number(rows[key][n]) if n in rows[key] else "" for n in names))
    rt.out.print(table)


class _WatchView:
    """Renders WatchJob events: a live bar for progress, a printed line per epoch and state."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("[dim]ETA[/] {task.fields[eta]}"),
            console=console,
        )
        self.task: TaskID = self.progress.add_task("waiting", total=1.0, detail="", eta="-")
        self.total_epochs = 0

    def __enter__(self) -> _WatchView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _line(self, event: Mapping[str, Any], text: str) -> None:
        stamp = "--:--:--"
        if event.get("time"):
            with_tz = _time(event["time"])
            stamp = with_tz[-8:]
        self.progress.console.print(f"[dim]{stamp}[/]  {text}")

    def handle(self, event: Mapping[str, Any]) -> None:
        job = event.get("job") or {}
        if "stateChange" in event:
            change = event["stateChange"] or {}
            state = _short(change.get("state"), "JOB_STATE_")
            text = f"state {_styled_state(change.get('state'), 'JOB_STATE_')}"
            error = _error_text(change.get("error"))
            if error:
                text += f"  [red]{error}[/]"
            self._line(event, text)
            if not self.total_epochs:
                self.progress.update(self.task, description=state.lower())
        elif "progress" in event:
            self._progress(event["progress"] or {})
        elif "metrics" in event:
            self._metrics(event, (event["metrics"] or {}).get("points") or [])
        elif "artifact" in event:
            artifact = event["artifact"] or {}
            self._line(
                event,
                f"artifact [bold]{escape(str(artifact.get('name', '?')))}[/] "
                f"({escape(str(artifact.get('kind', '')))}, {_bytes(artifact.get('sizeBytes'))}) "
                f"id {artifact.get('id', '-')}",
            )
        elif "modelVersionId" in event:
            self._line(event, f"registered model version [bold]{event['modelVersionId']}[/]")
        elif job.get("progress"):
            self._progress(job["progress"])

    def _progress(self, progress: Mapping[str, Any]) -> None:
        epoch, total = _int(progress.get("epoch")), _int(progress.get("totalEpochs"))
        step, steps = _int(progress.get("step")), _int(progress.get("totalSteps"))
        self.total_epochs = total or self.total_epochs
        description = f"epoch {epoch}/{total}" if total else str(progress.get("phase") or "running")
        if steps:
            description += f" step {step}/{steps}"
        phase = str(progress.get("phase") or "")
        if total and phase:
            description += f" [dim]{escape(phase)}[/]"
        parts = [
            f"{name} {_number(value)}" for name, value in (progress.get("losses") or {}).items()
        ]
        lr = float(progress.get("learningRate") or 0.0)
        if lr:
            parts.append(f"lr {lr:.3g}")
        eta = float(progress.get("etaSeconds") or 0.0)
        self.progress.update(
            self.task,
            description=description,
            completed=min(max(float(progress.get("fraction") or 0.0), 0.0), 1.0),
            detail="  ".join(parts),
            eta=_duration(eta) if eta > 0 else "-",
        )

    def _metrics(self, event: Mapping[str, Any], points: list[Mapping[str, Any]]) -> None:
        by_epoch: dict[int, list[str]] = {}
        for point in points:
            by_epoch.setdefault(_int(point.get("epoch")), []).append(
                f"{escape(str(point.get('name', '?')))} {_number(point.get('value'))}"
            )
        for epoch, values in by_epoch.items():
            label = f"epoch {epoch}/{self.total_epochs}" if self.total_epochs else f"epoch {epoch}"
            label = label if epoch else "metrics"
            self._line(event, f"[bold]{label}[/]  " + "  ".join(values))

    def finish(self, state: str) -> None:
        if state == "JOB_STATE_SUCCEEDED":
            self.progress.update(self.task, completed=1.0, eta="-")


def _watch(runtime: Runtime, client: GatewayClient, job_id: str, *, json_out: bool) -> int:
    """Follows the job's event stream; returns the exit status for its final state."""

    def reconnecting(attempt: int, why: str) -> None:
        runtime.err.print(
            f"[yellow]stream interrupted ({escape(why)}); reconnecting (attempt {attempt})[/]"
        )

    last_job: Mapping[str, Any] = {}
    try:
        if json_out:
            for event in client.watch_job(job_id, on_reconnect=reconnecting):
                typer.echo(json.dumps(event, separators=(",", ":")))
                last_job = event.get("job") or last_job
        else:
            runtime.out.print(
                f"Watching job [bold]{job_id}[/] (Ctrl-C stops watching, not the job)"
            )
            with _WatchView(runtime.out) as view:
                for event in client.watch_job(job_id, on_reconnect=reconnecting):
                    view.handle(event)
                    last_job = event.get("job") or last_job
                final = client.get_job(job_id).get("job") or last_job
                view.finish(str(final.get("state", "")))
            last_job = final
    except KeyboardInterrupt:
        runtime.err.print(
            f"Stopped watching; job {job_id} continues "
            f"(cancel it with `visionmesh jobs cancel {job_id}`)."
        )
        return EXIT_INTERRUPTED
    if json_out:
        last_job = client.get_job(job_id).get("job") or last_job
    state = str(last_job.get("state", ""))
    code = _TERMINAL_EXIT.get(state)
    if code is None:
        if json_out:
            return EXIT_FAILED
        _fail(runtime, f"the event stream ended but job {job_id} is {_short(state, 'JOB_STATE_')}")
    if not json_out:
        _summary(runtime, last_job)
    return code


def _summary(runtime: Runtime, job: Mapping[str, Any]) -> None:
    state = str(job.get("state", ""))
    elapsed = ""
    try:
        start = datetime.fromisoformat(str(job["startTime"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(job["endTime"]).replace("Z", "+00:00"))
        elapsed = f" in {_duration((end - start).total_seconds())}"
    except (KeyError, ValueError):
        pass
    line = f"Job {job.get('id', '')} {_styled_state(state, 'JOB_STATE_')}{elapsed}"
    if state == "JOB_STATE_SUCCEEDED":
        if job.get("metrics"):
            line += f"  {_metrics_text(job.get('metrics'))}"
        if job.get("modelVersionId"):
            line += f"\nModel version: {job['modelVersionId']}"
        runtime.out.print(line)
    elif state == "JOB_STATE_FAILED":
        runtime.out.print(line)
        reason = _error_text(job.get("error")) or "no reason given"
        runtime.err.print(f"[bold red]failed[/]: {reason}")
    else:
        runtime.out.print(line)


@jobs_app.command("watch")
def jobs_watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: Annotated[
        bool, typer.Option("--json", help="Print each event as a line of JSON.")
    ] = False,
) -> None:
    """Follow a job live until it ends.

    Exits 0 when it SUCCEEDED, 1 when it FAILED, 2 when it was CANCELLED.
    """
    rt = _rt(ctx)
    with rt.client() as client:
        code = _watch(rt, client, job_id, json_out=json_out)
    raise typer.Exit(code)


# --- artifacts ---------------------------------------------------------------------------------


@artifacts_app.command("list")
def artifacts_list(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    json_out: JsonOption = False,
) -> None:
    """List the files a job uploaded."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.job_artifacts(job_id)
    if json_out:
        _print_json(response)
        return
    artifacts = response.get("artifacts") or []
    table = _table("ID", "NAME", "KIND", "SIZE", "SHA256", "CREATED")
    for a in artifacts:
        table.add_row(
            str(a.get("id", "")),
            escape(str(a.get("name", ""))),
            escape(str(a.get("kind", ""))),
            _bytes(a.get("sizeBytes")),
            str(a.get("sha256") or "-")[:12],
            _time(a.get("createTime")),
        )
    rt.out.print(table if artifacts else f"Job {job_id} has no artifacts.")


def _destination(output: str | None, name: str) -> Path:
    """`-o` as given: a folder (existing, or ending in a separator) gets the artifact's name."""
    # The server's name is only a default file name: never let it choose a directory.
    safe = Path(name).name or "artifact"
    if not output:
        return Path.cwd() / safe
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        return path / safe
    return path


@artifacts_app.command("download")
def artifacts_download(
    ctx: typer.Context,
    artifact_id: Annotated[str, typer.Argument(metavar="ARTIFACT_ID")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="File, or folder ending in / (default: the artifact's name, here).",
        ),
    ] = None,
) -> None:
    """Download an artifact, verifying its SHA-256 when the server recorded one."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.artifact_download_url(artifact_id)
        artifact = response.get("artifact") or {}
        dest = _destination(output, str(artifact.get("name") or artifact_id))
        dest.parent.mkdir(parents=True, exist_ok=True)
        expected = str(artifact.get("sha256") or "")
        size = _int(artifact.get("sizeBytes")) or None
        with _transfer_progress(rt.err) as progress:
            task = progress.add_task(f"Downloading {escape(dest.name)}", total=size)

            def started(length: int | None) -> None:
                if length is not None:
                    progress.update(task, total=length)

            try:
                digest = client.download(
                    str(response["url"]),
                    dest,
                    expected_sha256=expected,
                    on_start=started,
                    on_progress=lambda n: progress.advance(task, n),
                )
            except IntegrityError as exc:
                progress.stop()
                _fail(rt, escape(exc.message))
    check = "verified" if expected else "not recorded by the server; computed"
    rt.out.print(
        f"Saved {escape(str(dest))} ({_bytes(dest.stat().st_size)}); sha256 {check}: {digest}"
    )


# --- models ------------------------------------------------------------------------------------


@models_app.command("list")
def models_list(ctx: typer.Context, limit: LimitOption = 50, json_out: JsonOption = False) -> None:
    """List your registered models, newest first."""
    rt = _rt(ctx)
    with rt.client() as client:
        models = list(client.list_models(limit=limit))
    if json_out:
        _print_json({"models": models})
        return
    table = _table("ID", "NAME", "TASK", "LATEST", "CREATED")
    for m in models:
        table.add_row(
            str(m.get("id", "")),
            escape(str(m.get("name", ""))),
            escape(str(m.get("task", ""))),
            f"v{_int(m.get('latestVersion'))}",
            _time(m.get("createTime")),
        )
    rt.out.print(table if models else "No models.")


@models_app.command("show")
def models_show(
    ctx: typer.Context,
    model_id: Annotated[str, typer.Argument(metavar="ID")],
    json_out: JsonOption = False,
) -> None:
    """Show a model and its versions with their metrics."""
    rt = _rt(ctx)
    with rt.client() as client:
        response = client.get_model(model_id)
    if json_out:
        _print_json(response)
        return
    model = response.get("model") or {}
    _details(
        rt,
        [
            ("id", str(model.get("id", "-"))),
            ("name", escape(str(model.get("name", "-")))),
            ("task", escape(str(model.get("task", "-")))),
            ("latest", f"v{_int(model.get('latestVersion'))}"),
            ("created", _time(model.get("createTime"))),
        ],
    )
    versions = model.get("versions") or []
    table = _table("VERSION", "ID", "ARCHITECTURE", "IMGSZ", "METRICS", "JOB", "CREATED")
    for v in versions:
        table.add_row(
            f"v{_int(v.get('version'))}",
            str(v.get("id", "")),
            escape(f"{v.get('framework', '')} {v.get('architecture', '')}".strip()) or "-",
            str(_int(v.get("imgsz")) or "-"),
            _metrics_text(v.get("metrics")),
            str(v.get("jobId") or "-"),
            _time(v.get("createTime")),
        )
    if versions:
        rt.out.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
