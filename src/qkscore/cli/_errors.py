"""The one error path of the ``qkscore`` command.

Every command runs inside :class:`ErrorHandlingGroup.invoke`, which turns what went wrong into
one line on stderr and an exit status:

* an ordinary mistake (bad data, a missing file, an unknown model, a run or profile made for
  something else, an option out of range) prints ``error: <message>`` and exits with 2; the
  data layer's :class:`~qkscore.data.items.DataError` already names file, line and field;
* anything else is a bug: ``error: unexpected <Type>: <message> (...rerun with --debug...)``
  and exit status 1;
* with the global ``--debug`` flag (or ``QKSCORE_DEBUG=1``) the traceback is printed first.

Python warnings are shown as one ``warning: <message>`` line each, without the source line,
unless ``--debug`` is given. Commands signal mistakes they detect themselves with
:func:`qkscore.cli._shared.fail`, which ends up here too.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from typing import Any

import typer
from typer.core import TyperGroup

DEBUG_ENV = "QKSCORE_DEBUG"
DEBUG_HINT = f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback"

USAGE = 2  # exit status of an ordinary mistake (also click's status for usage errors)
BUG = 1


def _click_base(name: str) -> type[BaseException]:
    """A base class of typer's exceptions by name: typer >= 0.2x vendors click as
    ``typer._click``, older typers use click itself, and only ``BadParameter`` is public."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_USAGE_ERROR = _click_base("UsageError")
# Exceptions typer/click use to end a command themselves: never intercepted.
_CONTROL = (_click_base("ClickException"), typer.Exit, typer.Abort)


class CommandError(Exception):
    """A mistake a command detected itself; printed as ``error: <message>``, exit status 2."""


# The project's own error types that are not ValueErrors, by module: looked up only in modules
# already imported (an error of a module never imported cannot have been raised).
_NAMED_ERRORS = {
    "qkscore.io": ("FolderMismatchError", "FolderError"),
    "qkscore.profile": ("ProfileMismatchError",),
    "qkscore.models.aliases": ("ModelNotAvailableError",),
    "sqlite3": ("Error",),
}


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean an ordinary mistake rather than a bug.

    ``ValueError`` covers DataError, UnsupportedModelError, json.JSONDecodeError and
    UnicodeDecodeError; ``OSError`` covers missing, unreadable and misplaced files;
    ``ImportError`` a missing optional package. A plain ``RuntimeError`` is not among them:
    torch raises those for real failures.
    """
    found: list[type[BaseException]] = [CommandError, ValueError, OSError, ImportError]
    for module_name, names in _NAMED_ERRORS.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(found)


def one_line(text: str) -> str:
    """A multi-line message (a list of differences, a hint) joined into one line."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    out = ""
    for part in parts:
        if not out:
            out = part
        elif out.endswith((":", ".", ";", ",", "?", "!")):
            out = f"{out} {part}"
        elif part[0].isupper():
            out = f"{out}. {part}"
        else:
            out = f"{out}; {part}"
    return out


def describe(err: BaseException) -> str:
    """The message of an expected error, naming the file where the exception knows it."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        return f"{where}: {err.strerror}"
    return one_line(str(err)) or type(err).__name__


def _usage_line(err: Any) -> str:
    """A click usage error as one line, with the help command of the command it concerns."""
    message = one_line(err.format_message()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def report(err: BaseException, debug: bool) -> int:
    """Print ``err`` (traceback first when ``debug``) and return the exit status it means."""
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    if isinstance(err, _USAGE_ERROR):
        line, code = _usage_line(err), USAGE
    elif isinstance(err, expected_errors()):
        line, code = describe(err), USAGE
    else:
        detail = one_line(str(err))
        kind = type(err).__name__
        what = f"{kind}: {detail}" if detail else kind
        line, code = f"unexpected {what} (a bug in qkscore? {DEBUG_HINT})", BUG
    typer.echo(f"error: {line}", err=True)
    return code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {one_line(str(message))}", err=True)


def _is_debug(ctx: Any) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug"))


class ErrorHandlingGroup(TyperGroup):
    """The root command group: runs every (sub)command through :func:`report`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _USAGE_ERROR as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # prints the help, not an error
                raise
            raise typer.Exit(report(err, debug=False)) from None

    def invoke(self, ctx: Any) -> Any:
        debug = _is_debug(ctx)
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except _USAGE_ERROR as err:
            if type(err).__name__ == "NoArgsIsHelpError":
                raise
            raise typer.Exit(report(err, debug)) from None
        except _CONTROL:
            raise
        except Exception as err:
            raise typer.Exit(report(err, debug)) from None
