"""The `visionmesh` command line: a thin client of the gateway's REST API.

The root command and its options live here; each command group is a module of
`visionmesh.cli.commands` (auth, datasets, train, jobs, artifacts, models, exports,
inference, embedding).
"""

from __future__ import annotations

from typing import Annotated

import typer
from visionmesh.cli.commands import (
    artifacts,
    auth,
    datasets,
    embedding,
    exports,
    inference,
    jobs,
    models,
    train,
)
from visionmesh.cli.config import CredentialsStore, config_dir, resolve_gateway
from visionmesh.cli.runtime import CliGroup, Hooks, Runtime

__all__ = ["Hooks", "Runtime", "app", "main"]

app = typer.Typer(
    name="visionmesh",
    cls=CliGroup,
    help="visionmesh: datasets, training and export jobs, and models, from the command line.",
    no_args_is_help=True,
    add_completion=False,
)
for _group in (auth, datasets, train, jobs, artifacts, models, exports, inference, embedding):
    _group.register(app)


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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
