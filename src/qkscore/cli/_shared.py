"""Small helpers every command module shares."""

from __future__ import annotations

import typer
from rich.console import Console


def console() -> Console:
    """Created per call so it writes to the stdout in effect now (CliRunner swaps it)."""
    return Console(highlight=False, soft_wrap=False)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` to stderr; the caller raises the returned exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=2)
