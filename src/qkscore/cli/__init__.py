"""The ``qkscore`` command: a thin typer shell over the Python API.

Each command group lives in its own module and only parses arguments, calls the API and renders
the result; no logic lives here.
"""

from __future__ import annotations

import typer

from qkscore.cli import data as _data

app = typer.Typer(
    name="qkscore",
    help="Read a model's own attention heads to judge whether its inferences are valid.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(_data.app, name="data")


@app.callback()
def _main() -> None:
    """qkscore: query-key alignment scores for logical consistency."""


def main() -> None:  # pragma: no cover - console entry point
    app()
