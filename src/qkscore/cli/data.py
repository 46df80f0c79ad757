"""``qkscore data ...``: inspect data specs and check them for shortcuts.

Only argument parsing and rendering live here; counting is
:func:`qkscore.data.overview.summarize` and the shortcut check is
:func:`qkscore.data.shortcuts.find_shortcuts`. Bad data exits with status 2 and the located
:class:`DataError` message (file:line field) on stderr, never a traceback: the one error path of
every command (:mod:`qkscore.cli._errors`) prints it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from qkscore.cli._shared import console as _console
from qkscore.cli._shared import deprecated_alias
from qkscore.cli._shared import fail as _fail
from qkscore.data.items import Item

app = typer.Typer(
    help="Inspect reasoning data specs and check them for shortcuts.", no_args_is_help=True
)

SPEC_HELP = "Data spec FORMAT:PATH?key=value&... (see `qkscore data formats`)."
JSON_HELP = "Print JSON instead of tables."


def _load(spec: str) -> tuple[list[Item], Any | None]:
    """Items of ``spec`` and the loader's report when this call produced it."""
    from qkscore.data import formats
    from qkscore.data.spec import load_items, parse_spec

    parsed = parse_spec(spec)
    items = load_items(parsed)
    report = formats.get_last_load_report()
    if report is None or report.spec != str(parsed):
        report = None
    return items, report


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


# ------------------------------------------------------------------------------------- inspect


def _label_cell(balance: Mapping[str, Any]) -> str:
    count = balance["count"] or 1
    return "  ".join(f"{label} {n} ({n / count:.0%})" for label, n in balance["labels"].items())


def _render_summary(spec: str, summary: Mapping[str, Any]) -> None:
    console = _console()
    console.print(f"[bold]{escape(spec)}[/bold]", soft_wrap=True)
    head = Table(show_header=False)
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("items", str(summary["count"]))
    head.add_row("labels", escape(_label_cell(summary)))
    if summary["majority_share"] is not None:
        head.add_row("majority share", f"{summary['majority_share']:.1%}")
    head.add_row("options", ", ".join(f"{k}: {v}" for k, v in summary["options"].items()))
    load = summary.get("load")
    if load:
        head.add_row("files", str(len(load["files"])))
        skipped = str(load["skipped"])
        head.add_row("skipped", f"[red]{skipped}[/red]" if load["skipped"] else skipped)
        for note in load["notes"]:
            head.add_row("note", escape(note))
    console.print(head)
    for key, groups in summary["breakdowns"].items():
        table = Table(title=f"by {key}", title_justify="left")
        table.add_column(key)
        table.add_column("items", justify="right")
        table.add_column("labels")
        table.add_column("majority", justify="right")
        for value, balance in groups.items():
            table.add_row(
                escape(value),
                str(balance["count"]),
                escape(_label_cell(balance)),
                f"{balance['majority_share']:.0%}",
            )
        console.print(table)
    if load and load["errors"]:
        console.print("[red]skipped records:[/red]")
        for error in load["errors"][:20]:
            console.print(f"  {error}", markup=False, soft_wrap=True)  # keep paths whole
        if len(load["errors"]) > 20:
            console.print(f"  ... and {len(load['errors']) - 20} more (see --json)")


@app.command("inspect")
def inspect_command(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Count items and show label balance overall and per depth/rule/logic/... ."""
    from qkscore.data.overview import summarize

    items, report = _load(spec)
    summary = summarize(items, report=report)
    if as_json:
        _print_json({"spec": spec, **summary})
    else:
        _render_summary(spec, summary)


# ------------------------------------------------------------------------------------- formats


@app.command("formats")
def formats_command(as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """List the registered data formats (the FORMAT part of a spec)."""
    from qkscore.data.spec import available_formats

    formats = available_formats()
    rows = [
        {"name": info.name, "takes_path": info.takes_path, "description": info.description}
        for info in sorted(formats.values(), key=lambda info: info.name)
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="data formats", title_justify="left")
    table.add_column("format", style="bold", no_wrap=True)
    table.add_column("spec", no_wrap=True)
    table.add_column("description")
    for row in rows:
        usage = f"{row['name']}:PATH?..." if row["takes_path"] else f"{row['name']}:key=value&..."
        table.add_row(row["name"], escape(usage), escape(row["description"]))
    _console().print(table)


# ----------------------------------------------------------------------------------- shortcuts


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _scalar(value: Any) -> str:
    """Display text of a JSON scalar, escaped so "[x]" in data is not read as rich markup."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _add_node(tree: Tree, key: str, value: Any) -> None:
    """Render any JSON-like value: scalars inline, uniform row lists as a table, else nested."""
    if _is_scalar(value):
        tree.add(f"[bold]{key}[/bold]: {_scalar(value)}")
    elif isinstance(value, Mapping):
        branch = tree.add(f"[bold]{key}[/bold]")
        for k, v in value.items():
            _add_node(branch, escape(str(k)), v)
    elif isinstance(value, Sequence) and all(_is_scalar(v) for v in value):
        if sum(len(_scalar(v)) for v in value) <= 60:
            tree.add(f"[bold]{key}[/bold]: {', '.join(_scalar(v) for v in value) or '(none)'}")
        else:
            branch = tree.add(f"[bold]{key}[/bold]")
            for v in value:
                branch.add(_scalar(v))
    elif isinstance(value, Sequence) and all(
        isinstance(v, Sequence) and not isinstance(v, str) and all(_is_scalar(x) for x in v)
        for v in value
    ):
        table = Table(show_edge=False, show_header=False)
        for row in value:
            table.add_row(*(_scalar(x) for x in row))
        tree.add(f"[bold]{key}[/bold]").add(table)
    elif isinstance(value, Sequence) and all(
        isinstance(v, Mapping) and all(_is_scalar(x) for x in v.values()) for v in value
    ):
        columns = list(dict.fromkeys(k for row in value for k in row))
        table = Table(show_edge=False)
        for column in columns:
            table.add_column(str(column))
        for row in value:
            table.add_row(*(_scalar(row.get(c, "")) for c in columns))
        tree.add(f"[bold]{key}[/bold]").add(table)
    else:
        branch = tree.add(f"[bold]{key}[/bold]")
        for i, v in enumerate(value):
            _add_node(branch, str(i), v)


def _render_shortcuts(spec: str, data: Mapping[str, Any], flagged: bool) -> None:
    verdict = "[red]FLAGGED[/red]" if flagged else "[green]no shortcut found[/green]"
    tree = Tree(f"[bold]shortcuts[/bold] {escape(spec)}: {verdict}")
    for key, value in data.items():
        _add_node(tree, escape(str(key)), value)
    _console().print(tree)


@app.command("shortcuts")
def shortcuts_command(
    spec: str = typer.Argument(..., help=SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when flagged."),
) -> None:
    """Look for shortcuts (surface cues that predict the label) before trusting a score."""
    try:
        from qkscore.data.shortcuts import find_shortcuts
    except ImportError as err:
        raise _fail(f"the shortcut check is not available: {err}") from None

    items, _ = _load(spec)
    report = find_shortcuts(items)
    data = report.to_dict()
    flagged = bool(report.flagged)
    if as_json:
        _print_json(data)
    else:
        _render_shortcuts(spec, data, flagged)
    if strict and flagged:
        raise typer.Exit(code=1)


deprecated_alias(app, "qkscore data audit", "qkscore data shortcuts", shortcuts_command)
