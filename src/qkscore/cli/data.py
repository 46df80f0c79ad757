"""``qkscore data ...``: inspect and audit data specs."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and audit reasoning data specs.", no_args_is_help=True)
