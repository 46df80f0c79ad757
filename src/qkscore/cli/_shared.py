"""Small helpers every command module shares."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from qkscore.cli._errors import CommandError


def console(stderr: bool = False) -> Console:
    """Created per call so it writes to the stdout in effect now (CliRunner swaps it);
    ``stderr=True`` when stdout carries JSON (``--json``)."""
    return Console(highlight=False, soft_wrap=False, stderr=stderr)


def fail(message: str) -> CommandError:
    """A mistake the command found itself: ``raise fail(...)`` prints ``error: message`` on
    stderr and exits with status 2, through the one error path (:mod:`qkscore.cli._errors`)."""
    return CommandError(message)


def deprecated_alias(app: typer.Typer, old: str, new: str, command: Callable[..., Any]) -> None:
    """Keep ``command`` under its old name for one release: ``old`` and ``new`` are whole
    command lines (``"qkscore probe"``, ``"qkscore heads"``). The old name takes the same
    options, is hidden from ``--help`` and prints one deprecation line on stderr first."""

    @functools.wraps(command)
    def alias(*args: Any, **kwargs: Any) -> Any:
        typer.echo(
            f"`{old}` is deprecated: use `{new}` (same options); the old name goes in the "
            "next release",
            err=True,
        )
        return command(*args, **kwargs)

    app.command(old.split()[-1], hidden=True)(alias)


def reflow_help(app: typer.Typer) -> None:
    """Join the lines of each paragraph of every command's help, in ``app`` and its groups.

    In rich markup mode Typer keeps a docstring's single line breaks, so a paragraph wrapped
    at 100 columns in the source broke mid-sentence on an 80-column terminal; joined, rich
    wraps it to the terminal. A paragraph starting with click's ``\\b`` is kept as written."""
    for info in app.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if text:
            info.help = "\n\n".join(
                p if p.startswith("\b") else " ".join(line.strip() for line in p.splitlines())
                for p in inspect.cleandoc(text).split("\n\n")
            )
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
