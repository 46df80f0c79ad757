"""Small helpers every command module shares."""

from __future__ import annotations

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
